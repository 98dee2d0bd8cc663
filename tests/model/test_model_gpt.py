"""The Transformer: shapes, parameter counts, causality, init, and that it can learn."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig, preset_config
from lmforge.model.gpt import GPT
from tests.model.families import TINY, tiny_families
from lmforge.model.layers import apply_rope, rope_tables

FAMILIES = tiny_families()


@pytest.fixture(params=sorted(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return GPT(ModelConfig(**FAMILIES[request.param]))


def test_logits_shape(model):
    idx = torch.randint(0, 50, (3, 16))
    assert model(idx).shape == (3, 16, 50)


def test_gpt2_124m_has_the_published_parameter_count():
    # GPT-2 small: 124,439,808 parameters with the output head tied to the token embedding.
    model = GPT(preset_config("gpt2-124m", vocab_size=50257))
    assert model.num_params() == 124_439_808


def test_llama_style_uses_gqa_rmsnorm_swiglu_and_no_biases():
    model = GPT(ModelConfig(**FAMILIES["llama"]))
    attn = model.blocks[0].attn
    assert attn.k.weight.shape == (2 * 8, 32)  # 2 kv heads of size 8
    assert attn.q.weight.shape == (32, 32)
    assert model.pos_emb is None
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    assert hasattr(model.blocks[0].mlp, "gate")


def test_future_tokens_do_not_change_past_logits(model):
    model.eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50
    torch.testing.assert_close(model(idx)[:, :10], model(changed)[:, :10])
    assert not torch.allclose(model(idx)[:, 10:], model(changed)[:, 10:])


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**dict(TINY, n_layer=8, n_embd=256, n_head=4)))
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.o.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].attn.q.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_tied_embeddings_share_one_tensor():
    model = GPT(ModelConfig(**TINY))
    assert model.lm_head.weight is model.tok_emb.weight
    untied = GPT(ModelConfig(**dict(TINY, tie_embeddings=False)))
    assert untied.num_params() == model.num_params() + 50 * 32


def test_rope_rotation_preserves_norm_and_depends_on_relative_position():
    cos, sin = rope_tables(8, 32, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rotated = apply_rope(q.expand(1, 1, 32, 8), cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 32))
    # <R(m) q, R(n) k> depends only on m - n.
    rk = apply_rope(k.expand(1, 1, 32, 8), cos, sin)
    dots = (rotated[0, 0, 5] @ rk[0, 0, 3], rotated[0, 0, 12] @ rk[0, 0, 10])
    assert dots[0].item() == pytest.approx(dots[1].item(), abs=1e-5)


def test_model_memorises_a_small_batch(model):
    torch.manual_seed(0)
    data = torch.randint(0, 50, (4, 17))
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(50), rel=0.1)  # starts near uniform guessing
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "divisible by n_kv_head"),
    (dict(dropout=1.0), "dropout"),
    (dict(preset="gpt5"), "unknown preset"),
])
def test_bad_shapes_are_rejected_with_a_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**dict(TINY, **bad)).validate()


def test_too_long_input_is_rejected(model):
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
