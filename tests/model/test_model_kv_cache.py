"""The KV cache and the model's cached/padded forward: same logits as the plain full forward."""

import pytest
import torch

from lmforge.model.attention import attention_mask
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from tests.model.families import tiny_families
from lmforge.model.kv_cache import KVCache, make_caches

FAMILIES = tiny_families(tie_embeddings=False)


@pytest.fixture(params=sorted(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return GPT(ModelConfig(**FAMILIES[request.param])).eval()


@torch.no_grad()
def test_cached_steps_give_the_full_forward_logits(model):
    idx = torch.randint(0, 50, (2, 16))
    caches = make_caches(model.config, batch=2)
    prefill = model(idx[:, :10], cache=caches)
    torch.testing.assert_close(prefill, model(idx[:, :10]), atol=1e-5, rtol=1e-5)
    for t in range(10, 16):  # then one token per step, reading the cache
        step = model(idx[:, t:t + 1], cache=caches)[:, -1]
        torch.testing.assert_close(step, model(idx[:, :t + 1])[:, -1], atol=1e-5, rtol=1e-5)
    assert caches[0].length == 16


@torch.no_grad()
def test_a_chunk_of_several_tokens_can_follow_the_cache(model):
    idx = torch.randint(0, 50, (1, 12))
    caches = make_caches(model.config, batch=1)
    model(idx[:, :5], cache=caches)
    torch.testing.assert_close(model(idx[:, 5:], cache=caches), model(idx)[:, 5:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padding_with_positions_and_mask_matches_each_row_alone(model):
    rows = [torch.randint(0, 50, (n,)) for n in (9, 4, 1)]
    idx = torch.zeros(3, 9, dtype=torch.long)
    is_real = torch.zeros(3, 9, dtype=torch.bool)
    for r, ids in enumerate(rows):
        idx[r, 9 - len(ids):], is_real[r, 9 - len(ids):] = ids, True
    positions = (is_real.cumsum(-1) - 1).clamp(min=0)
    logits = model(idx, positions, make_caches(model.config, batch=3), attn_mask=is_real)
    assert not logits.isnan().any()  # padding rows attend to themselves, so softmax never sees an empty row
    for r, ids in enumerate(rows):
        torch.testing.assert_close(logits[r, 9 - len(ids):], model(ids[None])[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_explicit_mask_and_positions_reproduce_the_training_forward(model):
    idx = torch.randint(0, 50, (2, 16))
    positions = torch.arange(16).expand(2, 16)
    explicit = model(idx, positions, attn_mask=torch.ones(2, 16, dtype=torch.bool))
    torch.testing.assert_close(explicit, model(idx), atol=1e-5, rtol=1e-5)


def test_cache_stores_key_value_heads_not_query_heads():
    cfg = ModelConfig(**FAMILIES["llama"])
    caches = make_caches(cfg, batch=3, max_len=10)
    assert len(caches) == cfg.n_layer
    assert caches[0].k.shape == (3, 2, 10, 8)  # (B, n_kv_head=2, max_len, head_dim) while n_head is 4


def test_append_returns_everything_so_far_and_refuses_overflow():
    cache = KVCache(batch=1, n_kv_head=2, max_len=5, head_dim=4)
    first, second = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 2, 4)
    cache.append(first, -first)
    k, v = cache.append(second, -second)
    torch.testing.assert_close(k, torch.cat([first, second], dim=2))
    torch.testing.assert_close(v, -k)
    assert cache.is_full
    with pytest.raises(ValueError, match="overflow"):
        cache.append(second, second)
    cache.clear()
    assert cache.length == 0 and not cache.is_full


def test_attention_mask_is_causal_for_new_queries_and_hides_padding():
    causal = attention_mask(n_new=2, n_keys=4)  # the 2 new queries are positions 2 and 3
    assert causal.tolist() == [[True, True, True, False], [True, True, True, True]]
    padded = attention_mask(n_new=3, n_keys=3, key_is_real=torch.tensor([[False, True, True]]))
    assert padded[0, 0].tolist() == [[True, False, False],  # a padding query sees only itself
                                     [False, True, False],
                                     [False, True, True]]


def test_cached_forward_past_block_size_is_rejected(model):
    caches = make_caches(model.config, batch=1)
    model(torch.zeros(1, 16, dtype=torch.long), cache=caches)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=caches)
