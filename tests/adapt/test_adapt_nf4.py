"""Pure-PyTorch NF4: the code table, packing, quantization error, memory, NF4Linear, and bitsandbytes parity."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.adapt.nf4 import (NF4_CODE, NF4Linear, dequantize_nf4, nf4_code_from_normal_quantiles, pack_nibbles,
                               quantize_nf4, unpack_nibbles)

LARGEST_GAP = (NF4_CODE[1:] - NF4_CODE[:-1]).max().item()  # between 0.7230 and 1.0


def test_code_table_is_the_papers_normal_quantile_grid():
    assert NF4_CODE.shape == (16,) and torch.all(NF4_CODE[1:] > NF4_CODE[:-1])
    assert NF4_CODE[0] == -1 and NF4_CODE[7] == 0 and NF4_CODE[15] == 1
    torch.testing.assert_close(NF4_CODE[[1, 8, 14]], torch.tensor([-0.6961928, 0.0795803, 0.7229568]))
    torch.testing.assert_close(nf4_code_from_normal_quantiles(), NF4_CODE, atol=2e-7, rtol=0)


def test_packing_puts_two_codes_per_byte_first_in_the_high_nibble():
    assert pack_nibbles(torch.tensor([1, 2, 15, 0])).tolist() == [0x12, 0xF0]
    codes = torch.randint(0, 16, (1000,))
    packed = pack_nibbles(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 500
    assert torch.equal(unpack_nibbles(packed), codes)


@pytest.mark.parametrize("double_quant", [False, True])
def test_each_error_is_at_most_half_the_largest_code_gap_times_the_block_absmax(double_quant):
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    q = quantize_nf4(weight, double_quant=double_quant)
    error = (dequantize_nf4(q) - weight).view(-1, 64)
    absmax = weight.view(-1, 64).abs().amax(dim=1, keepdim=True)
    # Double quantization also perturbs each block's scale; its int8 step bounds that perturbation.
    slack = 0.0 if not double_quant else (absmax - absmax.mean()).abs().max() / 127
    assert (error.abs() <= LARGEST_GAP / 2 * absmax + slack + 1e-6).all()


def test_error_statistics_match_what_bitsandbytes_reports_for_nf4_block_64():
    torch.manual_seed(0)
    weight = torch.randn(512, 512)
    error = (dequantize_nf4(quantize_nf4(weight)) - weight).abs()
    # bitsandbytes' own test suite expects, for NF4 with block 64 on N(0, 1) data, a mean absolute error
    # of ~0.0728 and a mean per-element relative error of ~0.2033.
    assert error.mean().item() == pytest.approx(0.0728, abs=0.002)
    assert (error / weight.abs()).mean().item() == pytest.approx(0.2033, abs=0.01)
    # Relative to the typical weight size: mean |error| / mean |weight| ~ 0.09.
    assert (error.mean() / weight.abs().mean()).item() == pytest.approx(0.091, abs=0.003)


def test_memory_is_about_4_127_bits_per_parameter():
    weight = torch.randn(1024, 1024)
    q = quantize_nf4(weight)
    # 4 bits + 8/64 (int8 absmax per block) + 32/(64*256) (fp32 scale per 256 absmax) + one fp32 mean.
    assert q.bits_per_param == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-4)
    assert q.nbytes == 1024 * 1024 // 2 + 16384 + 64 * 4 + 4
    assert quantize_nf4(weight, double_quant=False).bits_per_param == pytest.approx(4.5)


@pytest.mark.parametrize("shape", [(7, 9), (3, 5, 11), (1,), (300,)])
def test_odd_shapes_round_trip(shape):
    weight = torch.randn(shape)
    restored = dequantize_nf4(quantize_nf4(weight), torch.float64)
    assert restored.shape == weight.shape and restored.dtype == torch.float64
    assert (restored - weight).abs().max() <= LARGEST_GAP / 2 * weight.abs().max() * 1.01 + 1e-6


def test_all_zero_blocks_stay_zero():
    weight = torch.zeros(4, 64)
    weight[0, 0] = 1.0
    assert torch.equal(dequantize_nf4(quantize_nf4(weight)), weight)


def test_nf4_linear_uses_the_dequantized_weight_and_passes_gradients_to_its_input():
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    layer = NF4Linear.from_linear(linear)
    assert list(layer.parameters()) == [layer.bias] and not layer.bias.requires_grad
    buffers = {"weight_packed", "weight_absmax", "weight_absmax_scales", "weight_absmax_mean"}
    assert set(layer.state_dict()) == buffers | {"bias"}
    weight = layer.dequantized_weight()
    x = torch.randn(2, 3, 128, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, F.linear(x, weight, linear.bias), atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    x_ref = x.detach().requires_grad_()
    (grad_ref,) = torch.autograd.grad(F.linear(x_ref, weight, linear.bias).square().sum(), x_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)


def test_nf4_linear_computes_in_bf16_and_returns_the_input_dtype():
    layer = NF4Linear.from_linear(nn.Linear(64, 32), compute_dtype=torch.bfloat16)
    x = torch.randn(4, 64)
    y = layer(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x, layer.dequantized_weight(), layer.bias), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("double_quant", [False, True])
def test_matches_bitsandbytes_quantize_4bit(double_quant):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    weight = torch.randn(256, 512) * 0.02  # rows a multiple of 64 long: see qlora.bnb_supports
    ours = quantize_nf4(weight, double_quant=double_quant)
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    assert torch.equal(ours.packed, packed.view(-1))  # the same 4-bit codes, byte for byte
    theirs = bnbf.dequantize_4bit(packed, state)
    mine = dequantize_nf4(ours)
    if not double_quant:
        assert torch.equal(mine, theirs)
    else:
        # Only the 8-bit code of the absmax constants differs (linear int8 here, bnb's dynamic map there).
        assert (mine - theirs).abs().max() < 0.01 * weight.abs().max()
        assert (mine - weight).abs().mean() == pytest.approx((theirs - weight).abs().mean().item(), rel=0.01)
