"""LoRA adapters: identity at start, what trains, merge/unmerge, adapter-only state dicts, configs."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.adapt.lora import (LoRAConfig, LoRALinear, adapters_disabled, apply_lora, load_lora_state_dict,
                                lora_state_dict, merge_lora, unmerge_lora)
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from tests.model.families import tiny_families

FAMILIES = tiny_families()
ALL_TARGETS = {"gpt2": ("q", "k", "v", "o", "up", "down"), "llama": ("q", "k", "v", "o", "gate", "up", "down")}


def make_model(family: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**FAMILIES[family]))


def train_a_little(model: GPT, idx: torch.Tensor, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_model_starts_identical_to_the_base(family):
    model = make_model(family)
    idx = torch.randint(0, 50, (2, 16))
    before = model(idx)
    apply_lora(model, ALL_TARGETS[family] + ("lm_head",), r=4, alpha=8, dropout=0.0)
    assert torch.equal(model(idx), before)


def test_lora_linear_computes_base_plus_scaled_low_rank_update():
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, r=2, alpha=6.0)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 6)
    expected = base(x) + x @ layer.lora_A.t() @ layer.lora_B.t() * (6.0 / 2)
    torch.testing.assert_close(layer(x), expected)


def test_lora_init_is_kaiming_uniform_for_a_and_zero_for_b():
    layer = LoRALinear(nn.Linear(100, 7), r=8)
    assert torch.count_nonzero(layer.lora_B) == 0
    # kaiming_uniform with a = sqrt(5) draws from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), like nn.Linear.
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(100)
    assert layer.lora_A.std() > 0.5 / math.sqrt(3 * 100)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_only_adapters_train_and_the_share_is_counted_right(family):
    model = make_model(family)
    base_params = model.num_params()
    report = apply_lora(model, ("q", "v", "down"), r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    cfg = model.config
    q_v = (cfg.n_embd + cfg.n_embd) + (cfg.n_embd + cfg.kv_heads * cfg.head_dim)
    down = cfg.hidden_dim + cfg.n_embd
    expected = cfg.n_layer * 4 * (q_v + down)  # r (in + out) per layer
    assert report.params.trainable == expected
    assert report.params.total == base_params + expected
    total = base_params + expected
    assert str(report.params) == f"trainable {expected:,} of {total:,} ({expected / total:.2%})"
    assert len(report.wrapped) == 3 * cfg.n_layer


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid targets: q, k, v, o, gate, up, down, lm_head"):
        apply_lora(make_model("gpt2"), ("q", "query"))


def test_target_absent_from_the_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="'gate'.*does not exist.*SwiGLU"):
        apply_lora(make_model("gpt2"), ("q", "gate"))


def test_applying_lora_twice_is_refused():
    model = make_model("llama")
    apply_lora(model, ("q",))
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(model, ("q", "v"))


def test_tied_lm_head_is_untied_and_merges_into_a_rebuildable_model():
    model = make_model("gpt2")
    assert model.config.tie_embeddings
    embedding = model.tok_emb.weight.detach().clone()
    report = apply_lora(model, ("lm_head",), r=2, dropout=0.0)
    assert "untied" in report.notes[0] and not model.config.tie_embeddings
    assert model.lm_head.base.weight is not model.tok_emb.weight
    idx = torch.randint(0, 50, (2, 16))
    train_a_little(model, idx)
    assert torch.equal(model.tok_emb.weight, embedding)  # the input embedding never moved
    expected = model(idx)
    merge_lora(model)
    rebuilt = GPT(model.config)  # untied config: lm_head gets its own weight
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(idx), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merge_matches_the_adapted_forward_and_unmerge_restores_the_base(family):
    model = make_model(family)
    base_weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    apply_lora(model, ALL_TARGETS[family], r=4, dropout=0.1)
    idx = torch.randint(0, 50, (2, 16))
    train_a_little(model, idx)
    model.eval()  # dropout off: the unmerged forward is deterministic
    adapted = model(idx)
    merge_lora(model, unload=False)
    assert all(layer.merged for layer in model.modules() if isinstance(layer, LoRALinear))
    torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=0)
    restored = {n.replace(".base.", "."): t for n, t in model.state_dict().items() if "lora_" not in n}
    assert restored.keys() == base_weights.keys()
    for name, tensor in restored.items():
        torch.testing.assert_close(tensor, base_weights[name], atol=1e-6, rtol=0)


def test_merge_with_unload_gives_back_plain_linear_layers_and_the_original_names():
    model = make_model("llama")
    names = set(model.state_dict())
    apply_lora(model, ALL_TARGETS["llama"], r=4, dropout=0.0)
    idx = torch.randint(0, 50, (2, 16))
    train_a_little(model, idx)
    adapted = model(idx)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert isinstance(model.blocks[0].attn.q, nn.Linear)
    assert set(model.state_dict()) == names
    torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=0)


def test_lora_state_dict_round_trip_and_strictness():
    model = make_model("llama")
    apply_lora(model, ("q", "v"), r=4, dropout=0.0)
    idx = torch.randint(0, 50, (2, 16))
    train_a_little(model, idx)
    state = lora_state_dict(model)
    assert set(state) == {f"blocks.{i}.attn.{t}.lora_{m}" for i in range(2) for t in "qv" for m in "AB"}

    fresh = make_model("llama")
    apply_lora(fresh, ("q", "v"), r=4, dropout=0.0)
    load_lora_state_dict(fresh, state)
    torch.testing.assert_close(fresh(idx), model(idx))

    with pytest.raises(KeyError, match="missing.*blocks.1.attn.v.lora_B"):
        load_lora_state_dict(fresh, {k: v for k, v in state.items() if k != "blocks.1.attn.v.lora_B"})
    with pytest.raises(KeyError, match="unexpected.*blocks.0.attn.k.lora_A"):
        load_lora_state_dict(fresh, {**state, "blocks.0.attn.k.lora_A": state["blocks.0.attn.q.lora_A"]})
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(fresh, {**state, "blocks.0.attn.q.lora_A": torch.zeros(3, 32)})


def test_lora_config_json_round_trip_and_validation():
    config = LoRAConfig(r=16, alpha=32, dropout=0.1, targets=("q", "k", "v", "o"))
    restored = LoRAConfig.from_dict(json.loads(json.dumps({**config.to_dict(), "peft_type": "LORA"})))
    assert restored == config and restored.scale == 2.0
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)


def test_targets_may_be_a_comma_separated_string():
    report = apply_lora(make_model("gpt2"), "q, v", r=2)
    assert report.config.targets == ("q", "v")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapters_disabled_gives_back_the_base_model_after_training(family):
    """The reference model of RL and preference tuning: the policy with its adapters off is the model as it
    was before the adapters were added, however far the adapters have trained."""
    model = make_model(family)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        base_logits = model(idx)
    apply_lora(model, ALL_TARGETS[family] + ("lm_head",), r=4, alpha=8, dropout=0.0)
    train_a_little(model, idx)
    with torch.no_grad():
        adapted = model(idx)
        with adapters_disabled(model):
            switched_off = model(idx)
        after = model(idx)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)  # the adapters did change the model
    assert torch.allclose(switched_off, base_logits, atol=1e-6)
    assert torch.equal(after, adapted)  # switched back on when the block ends
    merge_lora(model, unload=False)
    with pytest.raises(ValueError, match="merged"):
        with adapters_disabled(model):
            pass
