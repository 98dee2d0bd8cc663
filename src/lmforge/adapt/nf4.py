"""NF4: the 4-bit "NormalFloat" weight format of QLoRA (Dettmers et al., 2023), in plain PyTorch.

Why a special 4-bit format? Trained weights are roughly normally distributed. A uniform 4-bit grid
wastes codes on the rare large values; NF4 instead places its 16 values at quantiles of N(0, 1), so
each code is used about equally often (an "information-theoretically optimal" grid for normal data).

How a weight matrix is stored:

1. Blockwise absmax scaling. The flattened weight is cut into blocks of 64 values. Each block is
   divided by its largest magnitude (its absmax), so its values lie in [-1, 1]. A single outlier
   then only hurts the precision of its own 64 neighbours.
2. Rounding to the nearest of the 16 NF4 codes; two 4-bit code indices are packed into one byte
   (the first of each pair in the high nibble, the layout bitsandbytes uses).
3. Double quantization. One fp32 absmax per 64 weights costs 32/64 = 0.5 bits per weight. QLoRA
   quantizes these constants too: subtract their mean (they are all positive, so centring them
   uses both halves of a signed 8-bit range), then quantize them to 8 bits in blocks of 256 with
   one fp32 scale per block. Cost: 8/64 + 32/(64*256) = 0.127 bits per weight, so ~4.127 in total.

Our second-level code is a symmetric linear int8 grid (value = code * scale / 127); the paper and
bitsandbytes use an 8-bit "dynamic" float-like code there. Both err by well under 1% of an absmax,
so dequantized weights agree with bitsandbytes' to within that (identical without double quant).

`NF4Linear` keeps only the packed form and dequantizes in every forward pass. Its backward pass
dequantizes again instead of saving the full-precision weight: that is what keeps a 4-bit base
small during training, where only the LoRA adapters on top of it learn.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# The 16 NF4 values, sorted; identical to the table in the QLoRA paper's appendix and bitsandbytes.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])

BLOCK_SIZE = 64
ABSMAX_BLOCK_SIZE = 256


def nf4_code_from_normal_quantiles() -> torch.Tensor:
    """Derive NF4_CODE as the paper does: quantiles of N(0, 1), normalised to [-1, 1].

    The grid is asymmetric so that zero is exactly representable: 8 quantiles for the positive half,
    7 for the negative half, plus 0. The outermost probability is 1 - delta rather than 1 (whose
    quantile is infinite), with delta = (1/32 + 1/30) / 2, halfway between the two halves' steps.
    """
    edge = 1 - 0.5 * (1 / 32 + 1 / 30)
    positive = torch.special.ndtri(torch.linspace(edge, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(edge, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.abs().max()).float()


@dataclass
class NF4Tensor:
    """A weight in NF4 form; `dequantize_nf4` turns it back into a float tensor.

    packed: uint8, two code indices per byte.  absmax: one scale per block of `block_size`, either
    fp32 or (double quantization) int8 codes, decoded with absmax_scales (fp32, one per block of
    `absmax_block_size` constants) and absmax_mean (fp32 scalar).
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    block_size: int = BLOCK_SIZE
    absmax_scales: torch.Tensor | None = None
    absmax_mean: torch.Tensor | None = None
    absmax_block_size: int = ABSMAX_BLOCK_SIZE

    @property
    def double_quantized(self) -> bool:
        return self.absmax_scales is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes plus all the scaling constants."""
        parts = (self.packed, self.absmax, self.absmax_scales, self.absmax_mean)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.numel


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) -> (n_blocks, block_size), zero-padding the last block (zeros never change an absmax)."""
    padding = -flat.numel() % block_size
    return F.pad(flat, (0, padding)).view(-1, block_size)


def _nearest_code(normalised: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of a sorted code: search among the midpoints between neighbours."""
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(normalised, midpoints)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Code indices 0..15 (even count) -> bytes, first of each pair in the high nibble."""
    codes = codes.to(torch.uint8)
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: bytes -> code indices (int64, twice as many)."""
    pairs = torch.stack([packed >> 4, packed & 0x0F], dim=-1)
    return pairs.reshape(-1).long()


def _quantize_absmax(absmax: torch.Tensor, block_size: int) -> tuple[torch.Tensor, ...]:
    """Double quantization: centred absmax constants -> int8 codes, per-block scales, the mean."""
    mean = absmax.mean()
    blocks = _blocks(absmax - mean, block_size)
    scales = blocks.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    codes = torch.round(blocks / scales[:, None] * 127).to(torch.int8)
    return codes.reshape(-1)[:absmax.numel()], scales, mean


def _absmax_values(q: NF4Tensor) -> torch.Tensor:
    """The per-block fp32 absmax, decoding the second quantization level when there is one."""
    if not q.double_quantized:
        return q.absmax
    blocks = _blocks(q.absmax.float(), q.absmax_block_size)
    centred = blocks * (q.absmax_scales[:, None] / 127)
    return centred.reshape(-1)[:q.absmax.numel()] + q.absmax_mean


def quantize_nf4(weight: torch.Tensor, block_size: int = BLOCK_SIZE, double_quant: bool = True,
                 absmax_block_size: int = ABSMAX_BLOCK_SIZE) -> NF4Tensor:
    """Any float tensor -> NF4Tensor (see the module docstring for the three steps)."""
    blocks = _blocks(weight.detach().reshape(-1).float(), block_size)
    absmax = blocks.abs().amax(dim=1)
    # Multiply by the reciprocal (as bitsandbytes does) so both round identically; clamp guards all-zero blocks.
    normalised = (blocks * (1.0 / absmax.clamp_min(torch.finfo(torch.float32).tiny))[:, None]).clamp(-1, 1)
    codes = _nearest_code(normalised.reshape(-1), NF4_CODE.to(weight.device))
    if codes.numel() % 2:  # only possible with an odd block_size
        codes = F.pad(codes, (0, 1))
    q = NF4Tensor(pack_nibbles(codes), absmax, weight.shape, block_size, absmax_block_size=absmax_block_size)
    if double_quant:
        q.absmax, q.absmax_scales, q.absmax_mean = _quantize_absmax(absmax, absmax_block_size)
    return q


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NF4Tensor -> float tensor of its original shape, in `dtype`."""
    code = NF4_CODE.to(q.packed.device)
    values = code[unpack_nibbles(q.packed)][:q.absmax.numel() * q.block_size]
    scaled = values.view(-1, q.block_size) * _absmax_values(q)[:, None]
    return scaled.reshape(-1)[:q.numel].view(q.shape).to(dtype)


class _NF4MatMul(torch.autograd.Function):
    """x @ W^T for a frozen NF4 W: the backward pass dequantizes W again rather than saving it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: NF4Tensor) -> torch.Tensor:
        ctx.q = q  # holds only the packed buffers, not a full-precision copy
        return x @ dequantize_nf4(q, x.dtype).t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out @ dequantize_nf4(ctx.q, grad_out.dtype), None


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4; the bias stays in full precision.

    compute_dtype is the dtype of the matmul (bf16 on GPUs, fp32 on CPU); the output is returned in
    the input's dtype so the layer drops in for the nn.Linear it replaces. The packed tensors are
    buffers: they move with .to() and appear in state_dict(), but no optimizer ever sees them.
    """

    def __init__(self, q: NF4Tensor, bias: torch.Tensor | None = None, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.compute_dtype = compute_dtype
        self.block_size, self.absmax_block_size = q.block_size, q.absmax_block_size
        self.register_buffer("weight_packed", q.packed)
        self.register_buffer("weight_absmax", q.absmax)
        self.register_buffer("weight_absmax_scales", q.absmax_scales)
        self.register_buffer("weight_absmax_mean", q.absmax_mean)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype = torch.float32,
                    block_size: int = BLOCK_SIZE, double_quant: bool = True) -> NF4Linear:
        return cls(quantize_nf4(linear.weight, block_size, double_quant), linear.bias, compute_dtype)

    @property
    def quantized(self) -> NF4Tensor:
        return NF4Tensor(self.weight_packed, self.weight_absmax, torch.Size((self.out_features, self.in_features)),
                         self.block_size, self.weight_absmax_scales, self.weight_absmax_mean, self.absmax_block_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nf4(self.quantized, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _NF4MatMul.apply(x.to(self.compute_dtype), self.quantized)
        if self.bias is not None:
            y = y + self.bias.to(self.compute_dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}")


def is_bnb_4bit(module: nn.Module) -> bool:
    """True for a bitsandbytes Linear4bit (which can only exist once bitsandbytes is imported)."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


def is_4bit_linear(module: nn.Module) -> bool:
    return isinstance(module, NF4Linear) or is_bnb_4bit(module)


def dequantized_weight(module: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight behind a 4-bit linear layer: ours (NF4Linear) or bitsandbytes' Linear4bit."""
    if isinstance(module, NF4Linear):
        return module.dequantized_weight(dtype)
    if is_bnb_4bit(module):
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
    raise TypeError(f"{type(module).__name__} is not a 4-bit linear layer")
