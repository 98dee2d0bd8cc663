"""QLoRA: quantizing a model's linear layers (both backends), LoRA over them, merging, 8-bit optimizers."""

import importlib.util
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.adapt.lora import LoRALinear, apply_lora, count_params, merge_lora
from lmforge.adapt.nf4 import NF4Linear, is_4bit_linear
from lmforge.adapt.qlora import build_8bit_optimizer, merge_drift, quantize_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from tests.model.families import tiny_families

# n_embd 64: bitsandbytes' CPU kernel needs every layer's in_features to be a multiple of 64.
FAMILIES = tiny_families(n_embd=64)
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
BACKENDS = ["torch", pytest.param("bnb", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed"))]
LINEARS_PER_BLOCK = {"gpt2": 6, "llama": 7}


def make_model(family: str, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**FAMILIES[family], **overrides}))


def lm_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_quantize_model_replaces_the_block_linears_and_saves_memory(family, backend):
    model = make_model(family)
    idx = torch.randint(0, 50, (2, 16))
    logits = model(idx)
    params = model.num_params()
    report = quantize_model(model, backend=backend)
    assert report.backend == backend
    assert len(report.layers) == LINEARS_PER_BLOCK[family] * model.config.n_layer
    assert all(name.startswith("blocks.") for name in report.layers)
    assert all(is_4bit_linear(model.get_submodule(name)) for name in report.layers)
    assert isinstance(model.lm_head, nn.Linear)
    # The block weights shrink ~7.8x (fp32 -> 4.127 bits); embeddings and norms stay fp32.
    layers = [model.get_submodule(name) for name in report.layers]
    block_bytes = 4 * sum(layer.in_features * layer.out_features for layer in layers)
    assert report.bytes_before - report.bytes_after > 0.85 * block_bytes
    assert count_params(model).total == params  # a 4-bit weight still counts as its logical size
    assert (model(idx) - logits).abs().max() < 0.2  # close to, not equal to, the full-precision model


def test_torch_and_bnb_backends_compute_nearly_the_same_model():
    pytest.importorskip("bitsandbytes")
    idx = torch.randint(0, 50, (2, 16))
    ours, theirs = make_model("llama"), make_model("llama")
    quantize_model(ours, backend="torch")
    quantize_model(theirs, backend="bnb")
    assert (ours(idx) - theirs(idx)).abs().max() < 0.01


def test_auto_backend_avoids_layers_bitsandbytes_gets_wrong_on_cpu():
    model = make_model("gpt2", n_embd=32)
    assert quantize_model(model, backend="auto").backend == "torch"
    assert isinstance(model.blocks[0].attn.q, NF4Linear)
    if HAS_BNB:
        with pytest.raises(ValueError, match="divisible by 64.*backend='torch'"):
            quantize_model(make_model("gpt2", n_embd=32), backend="bnb")


def test_quantize_model_checks_backend_and_tied_heads():
    with pytest.raises(ValueError, match="unknown quantization backend 'int4'"):
        quantize_model(make_model("gpt2"), backend="int4")
    with pytest.raises(ValueError, match="lm_head shares its weight with an embedding"):
        quantize_model(make_model("gpt2"), backend="torch", skip=())


def test_skip_keeps_named_layers_in_full_precision():
    model = make_model("llama")
    report = quantize_model(model, backend="torch", skip=("lm_head", "attn"))
    assert len(report.layers) == 3 * model.config.n_layer
    assert isinstance(model.blocks[0].attn.q, nn.Linear) and isinstance(model.blocks[0].mlp.up, NF4Linear)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_qlora_training_lowers_the_loss(family, backend):
    model = make_model(family)
    quantize_model(model, backend=backend)
    logits = model(torch.zeros(1, 4, dtype=torch.long))
    report = apply_lora(model, ("q", "k", "v", "o", "up", "down"), r=4, alpha=8, dropout=0.0)
    assert isinstance(model.blocks[0].attn.q, LoRALinear) and model.blocks[0].attn.q.quantized_base
    assert torch.equal(model(torch.zeros(1, 4, dtype=torch.long)), logits)  # B = 0: still the quantized model
    assert 0 < report.params.share < 0.1
    idx = torch.randint(0, 50, (4, 16))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    first = lm_loss(model, idx).item()
    for _ in range(6):
        loss = lm_loss(model, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert lm_loss(model, idx).item() < first - 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_merging_into_a_4bit_base_warns_and_reports_the_drift(backend):
    model = make_model("llama")
    quantize_model(model, backend=backend)
    apply_lora(model, ("q", "v", "down"), r=4, dropout=0.0)
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.05)  # a trained-looking, non-zero update
    idx = torch.randint(0, 50, (2, 16))
    # Full-precision merge: dequantized base + update is what the adapted model computed.
    assert merge_drift(model, idx) < 1e-4
    # Re-quantizing the merged weights rounds the update onto the NF4 grid: a real change.
    assert merge_drift(model, idx, requantize="torch") > 1e-3
    assert isinstance(model.blocks[0].attn.q, LoRALinear)  # merge_drift measured on a copy

    with pytest.raises(ValueError, match="4-bit base cannot be merged in place"):
        merge_lora(model, unload=False)
    adapted = model(idx)
    with pytest.warns(UserWarning, match="4-bit base layers.*precision"):
        merge_lora(model)
    assert isinstance(model.blocks[0].attn.q, nn.Linear) and model.blocks[0].attn.q.weight.dtype == torch.float32
    assert is_4bit_linear(model.blocks[0].attn.k)  # layers without adapters stay 4-bit
    torch.testing.assert_close(model(idx), adapted, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_optimizer_steps_on_cpu(name):
    pytest.importorskip("bitsandbytes")
    param = nn.Parameter(torch.randn(64, 128))  # >= 4096 elements, so its state really is 8-bit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # paged on CPU: bitsandbytes warns that it falls back to unpaged
        opt = build_8bit_optimizer([param], name=name, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
        before = param.detach().clone()
        param.grad = torch.randn_like(param)
        opt.step()
    assert 0 < (param - before).abs().max() < 0.05
    assert opt.state[param]["state1"].dtype == torch.uint8


def test_8bit_optimizer_errors(monkeypatch):
    with pytest.raises(ValueError, match="adamw8bit, paged_adamw8bit"):
        build_8bit_optimizer([nn.Parameter(torch.zeros(2))], name="sgd8bit")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ImportError, match=r"pip install 'lmforge\[quant\]'"):
        build_8bit_optimizer([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ImportError, match=r"lmforge\[quant\]"):
        quantize_model(make_model("gpt2"), backend="bnb")
