"""The decode-time paths of lmforge's Linear change speed, never results."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lmforge.generate.engine import generate_text, generate_tokens
from lmforge.generate.params import SamplingParams
from lmforge.model import linear as linear_module
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.linear import (ONEDNN, ONEDNN_PACKED, PACK_AFTER_CALLS, PACKED, PLAIN, PREPARED, WEIGHT_MAJOR,
                                 Linear, can_pack, can_use_onednn)
from lmforge.tokenizer import CharTokenizer


def fake_meminfo(monkeypatch, tmp_path, available_kib):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {available_kib * 2} kB\nMemFree:        1024 kB\n"
                       f"MemAvailable:   {available_kib} kB\n")
    monkeypatch.setattr(linear_module, "_MEMINFO", meminfo)


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    monkeypatch.setattr(linear_module, "_layout_choice", {})
    fake_meminfo(monkeypatch, tmp_path, 64 << 20)  # 64 GiB available; the real guard still runs on it


def force_layout(monkeypatch, layout, unpacked=PLAIN):
    monkeypatch.setattr(linear_module, "_probe", lambda *args: (layout, unpacked))


def decode_step(layer, rows=3):
    """One new token for each of `rows` sequences: (rows, 1, in)."""
    with torch.no_grad():
        x = torch.randn(rows, 1, layer.in_features)
        return layer(x), F.linear(x, layer.weight, layer.bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", [PLAIN, WEIGHT_MAJOR, ONEDNN, PACKED, ONEDNN_PACKED])
def test_every_layout_gives_the_linear_result(bias, layout, monkeypatch):
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    force_layout(monkeypatch, layout)
    for _ in range(PACK_AFTER_CALLS + 1):  # the packed layout starts packing after a few calls
        y, expected = decode_step(layer)
        assert y.shape == (3, 1, 80) and y.is_contiguous()
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert (layer._packed is not None and layer._packed.tensor is not None) == (layout in PREPARED)


def test_mkl_packing_and_onednn_are_available_on_this_build():
    # The x86 CPU builds of torch that CI installs ship MKL and oneDNN; without them these paths would never run.
    assert can_pack(torch.empty(2, 2)) and can_use_onednn(torch.empty(2, 2))
    assert not can_pack(torch.empty(2, 2, dtype=torch.bfloat16))
    assert not can_use_onednn(torch.empty(2, 2, dtype=torch.bfloat16))


def test_a_layer_switching_prepared_layouts_drops_the_other_copy(monkeypatch):
    torch.manual_seed(0)
    layer = Linear(32, 24)
    force_layout(monkeypatch, PACKED)
    for _ in range(PACK_AFTER_CALLS):
        decode_step(layer, rows=1)
    assert layer._packed.layout == PACKED and layer._packed.tensor is not None
    monkeypatch.setattr(linear_module, "_layout_choice", {})
    force_layout(monkeypatch, ONEDNN_PACKED)
    for _ in range(PACK_AFTER_CALLS):
        y, expected = decode_step(layer, rows=1)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert layer._packed.layout == ONEDNN_PACKED and layer._packed.tensor is not None


def test_the_probe_reads_copies_larger_than_the_caches(monkeypatch):
    monkeypatch.setattr(linear_module, "_PROBE_BYTES", 64 * 32 * 4 * 5)
    weight = torch.randn(64, 32)
    copies = linear_module._streamed_copies(weight)
    assert len(copies) == 5 and copies[0] is weight
    assert all(torch.equal(c, weight) and c.data_ptr() != weight.data_ptr() for c in copies[1:])
    big = torch.randn(64, 32 * 8)
    assert len(linear_module._streamed_copies(big)) == 1  # one is already more than _PROBE_BYTES


def test_the_probe_makes_no_copies_when_memory_is_short(monkeypatch, tmp_path):
    fake_meminfo(monkeypatch, tmp_path, 1 << 20)  # 1 GiB available: all of it the reserve
    assert len(linear_module._streamed_copies(torch.randn(64, 32))) == 1


def test_a_weight_is_packed_only_after_a_run_of_calls_and_serves_smaller_batches(monkeypatch):
    layer = Linear(32, 40)
    force_layout(monkeypatch, PACKED, WEIGHT_MAJOR)
    for _ in range(PACK_AFTER_CALLS - 1):
        decode_step(layer, rows=4)
    assert layer._packed.tensor is None  # a short generation does not pay for packing
    decode_step(layer, rows=4)
    first_copy = layer._packed.tensor
    assert first_copy is not None
    decode_step(layer, rows=4)
    assert layer._packed.tensor is first_copy  # reused, not packed again
    y, expected = decode_step(layer, rows=3)  # fewer rows in the same power-of-two bucket: padded, same copy
    assert layer._packed.tensor is first_copy
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    decode_step(layer, rows=5)  # more rows (another bucket): a new copy, after its own run of calls
    assert layer._packed.tensor is None and layer._packed.rows == 5
    for _ in range(PACK_AFTER_CALLS):
        decode_step(layer, rows=7)  # more than 5: packed anew, for 7
    assert layer._packed.rows == 7 and layer._packed.tensor is not None
    torch.testing.assert_close(*decode_step(layer, rows=6), rtol=1e-5, atol=1e-5)
    assert layer._packed.rows == 7  # 6 rows are served by the copy for 7


def test_a_changed_weight_is_never_served_from_a_stale_copy(monkeypatch):
    torch.manual_seed(0)
    layer = Linear(32, 40)
    force_layout(monkeypatch, PACKED)
    for _ in range(PACK_AFTER_CALLS):
        decode_step(layer)
    assert layer._packed.tensor is not None
    # An optimizer step changes the weight in place (as between sample generations during training).
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(torch.randn(2, 32)).square().sum().backward()
    optimizer.step()
    y, expected = decode_step(layer)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # so does load_state_dict; and .to() gives the weight new storage
        layer.load_state_dict({"weight": torch.randn(40, 32), "bias": torch.randn(40)})
    torch.testing.assert_close(*decode_step(layer), rtol=1e-5, atol=1e-5)
    layer.weight.data = torch.randn(40, 32)
    torch.testing.assert_close(*decode_step(layer), rtol=1e-5, atol=1e-5)


def test_the_memory_guard_reads_what_is_available(monkeypatch, tmp_path):
    weight = torch.empty(1024, 1024)  # 4 MiB: a packed copy needs ~6.4 MiB on top of the 1 GiB reserve
    fake_meminfo(monkeypatch, tmp_path, (1 << 20) + 7 * 1024)
    assert linear_module._memory_allows(weight)
    fake_meminfo(monkeypatch, tmp_path, (1 << 20) + 6 * 1024)
    assert not linear_module._memory_allows(weight)
    monkeypatch.setattr(linear_module, "_MEMINFO", tmp_path / "missing")  # no /proc: do not risk it
    assert not linear_module._memory_allows(weight)


def test_no_copy_is_made_when_memory_is_short(monkeypatch, tmp_path):
    layer = Linear(32, 40)
    force_layout(monkeypatch, PACKED, WEIGHT_MAJOR)
    fake_meminfo(monkeypatch, tmp_path, 512 * 1024)  # half a GiB: below the reserve
    for _ in range(PACK_AFTER_CALLS + 2):
        y, expected = decode_step(layer)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert layer._packed.tensor is None


def test_a_copied_model_packs_its_own_weights(monkeypatch):
    layer = Linear(32, 40)
    force_layout(monkeypatch, PACKED)
    for _ in range(PACK_AFTER_CALLS):
        decode_step(layer)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight.mul_(2)
    assert twin._packed is None
    torch.testing.assert_close(*decode_step(twin), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(*decode_step(layer), rtol=1e-5, atol=1e-5)


def test_the_probe_offers_packing_only_where_it_exists(monkeypatch):
    timed = []
    real_fastest_times = linear_module._fastest_times
    monkeypatch.setattr(linear_module, "_fastest_times",
                        lambda candidates: timed.append(set(candidates)) or real_fastest_times(candidates))
    weight = torch.randn(64, 32)
    fp32 = linear_module._probe(weight, None, 8)
    bf16 = linear_module._probe(weight.bfloat16(), None, 8)
    assert timed == [{PLAIN, WEIGHT_MAJOR, ONEDNN, PACKED, ONEDNN_PACKED}, {PLAIN, WEIGHT_MAJOR}]
    assert fp32[1] in (PLAIN, WEIGHT_MAJOR) and bf16[0] in (PLAIN, WEIGHT_MAJOR)


def test_training_and_long_inputs_never_probe(monkeypatch):
    calls = []
    monkeypatch.setattr(linear_module, "_probe", lambda *args: calls.append(args) or (WEIGHT_MAJOR, WEIGHT_MAJOR))
    layer = Linear(16, 16)
    layer(torch.randn(2, 16)).sum().backward()  # autograd on: always F.linear
    with torch.no_grad():
        layer(torch.randn(4, 32, 16))  # 128 rows: a prefill, not a decode step
    assert calls == []
    with torch.no_grad():
        layer(torch.randn(4, 1, 16))
        layer(torch.randn(4, 1, 16))
    assert len(calls) == 1  # probed once for this (shape, dtype, rows, threads), then remembered


def test_it_is_still_an_nn_linear_with_the_same_state_dict():
    layer = Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_one_off_generations_free_their_packed_copies(monkeypatch):
    force_layout(monkeypatch, PACKED)
    chars = CharTokenizer.train(["abcdefghij"])
    model = GPT(ModelConfig(vocab_size=chars.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64)).eval()
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:  # what a longer generation leaves behind
        for _ in range(PACK_AFTER_CALLS):
            decode_step(layer, rows=1)
    assert all(layer._packed.tensor is not None for layer in layers)
    generate_text(model, chars, "abc", max_new_tokens=PACK_AFTER_CALLS + 4, temperature=0)
    assert all(layer._packed is None for layer in layers)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_with_every_layer_packed_gives_the_same_tokens(family, monkeypatch):
    arch = {} if family == "gpt2" else dict(n_kv_head=2, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=60, n_layer=2, n_head=4, n_embd=32, block_size=32, tie_embeddings=False,
                            **arch)).eval()
    prompts, params = [[5, 9, 2, 7], [3], [8, 8, 1]], SamplingParams(temperature=0, max_new_tokens=20)

    def tokens(layout):
        monkeypatch.setattr(linear_module, "_layout_choice", {})
        force_layout(monkeypatch, layout)
        linear_module.drop_packed_weights(model)
        return list(generate_tokens(model, prompts, params))

    packed = tokens(PACKED)
    assert all(m._packed.tensor is not None for m in model.modules() if isinstance(m, Linear))
    assert packed == tokens(PLAIN)


def test_plain_products_makes_every_decode_product_f_linear_bit_for_bit():
    from lmforge.model.linear import Linear, plain_products

    torch.manual_seed(0)
    layer = Linear(96, 200)
    x = torch.randn(3, 96)
    with torch.no_grad(), plain_products():
        inside = layer(x)
    assert torch.equal(inside, torch.nn.functional.linear(x, layer.weight, layer.bias))
