"""Weight-only int8 quantization for generation and evaluation: a quarter of fp32's weight memory.

Every Linear weight W (out, in) and the token embedding become int8 numbers q and one scale per
output row, symmetric around zero: s = max|W_row| / 127, q = round(W_row / s), so W ~ q * s[:, None]
with an error of at most s / 2 per weight. Activations, norms, biases and the KV cache keep the
model's dtype; only the big matrices shrink. A tied output head (GPT-2) and token embedding share
one int8 copy: the embedding's row for a token is the head's output row for it, with the same scale.

How to multiply by an int8 weight fastest depends on the machine, so `quantize_model` times the
kernels below on the model's own layers, one decode step (one row) each, and keeps the fastest:

* int8-mm: torch's `_weight_int8pack_mm`, made for exactly this (int8 weight, per-row scales);
* dequantize: int8 -> the activation dtype, then F.linear, at every call (writes and reads a full
  fp32/bf16 weight per call: slow, but it works everywhere);
* bf16-copy: dequantized once to a bf16 weight kept beside the int8 one (2 more bytes per weight);
* compiled: a torch.compile'd loop that reads the int8 weight and multiplies as it goes (one pass,
  1 byte per weight read). Compiling takes seconds per layer shape, so it is a candidate only where
  asked for (probe_compiled=True).

Inputs with more rows than DECODE_ROWS (a prompt, an eval window) always take `dequantize`: there the
matmul's arithmetic dominates and the per-call conversion is a small extra.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

QUANTIZE_CHOICES = ("none", "int8")
DECODE_ROWS = 16  # up to this many rows (a decode step of up to 16 sequences) use the probed kernel
_PROBE_PASSES = 2  # timed passes over all layers per kernel; the faster one counts
_QMAX = 127  # symmetric: -127..127 (-128 unused, so negating a weight never overflows)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) -> q int8 (out, in) and fp32 scales (out,), W ~ q * scales[:, None]."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / _QMAX).clamp(min=torch.finfo(torch.float32).tiny)  # an all-zero row: scale > 0
    q = torch.round(w / scales[:, None]).clamp(-_QMAX, _QMAX).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """y = x (q * s)^T + b, computed by `kernel` (chosen by quantize_model's probe) for few rows."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.dtype = dtype  # the activations' dtype
        self.kernel: Kernel = DEQUANTIZE
        self.prepared = None  # what the kernel derived from the weight once (bf16-copy's copy), or None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scales = quantize_int8(linear.weight)
        return cls(q, scales, linear.bias, linear.weight.dtype)

    def use(self, kernel: Kernel) -> None:
        self.kernel, self.prepared = kernel, kernel.prepare(self) if kernel.prepare else None

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scales[:, None].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.size(-1)
        if torch.compiler.is_compiling() and rows <= DECODE_ROWS:  # inside a compiled decode step (--compile)
            y = _int8_matvec(x.reshape(rows, self.in_features), self.qweight, self.scales)
        elif rows > DECODE_ROWS or torch.is_grad_enabled():
            y = DEQUANTIZE.matmul(x.reshape(-1, self.in_features), self, None)
        else:
            y = self.kernel.matmul(x.reshape(rows, self.in_features), self, self.prepared)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel.name}"


class Int8Embedding(nn.Module):
    """nn.Embedding over int8 rows with one scale each; may share them with a tied Int8Linear head."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.qweight[ids].to(self.dtype) * self.scales[ids, None].to(self.dtype))


# ---- the kernels ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    name: str
    matmul: Callable  # (x (rows, in), layer, prepared) -> (rows, out) in x's dtype, no bias
    prepare: Callable | None = None  # layer -> what matmul needs besides the int8 weight (kept on the layer)
    extra_bytes_per_weight: int = 0  # memory the prepared copy adds


def _int8_mm(x, layer, prepared):
    # The scales must have x's dtype; x must be contiguous.
    return torch.ops.aten._weight_int8pack_mm(x.contiguous(), layer.qweight, layer.scales.to(x.dtype))


def _dequantize(x, layer, prepared):
    return F.linear(x, layer.dequantized(x.dtype))


def _bf16_copy(x, layer, prepared):
    return F.linear(x.to(torch.bfloat16), prepared).to(x.dtype)


def _int8_matvec(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # Written as a broadcast product and a sum, not a matmul, so that the compiler fuses the int8 -> float
    # conversion into the reduction: one pass over the int8 weight, no full-size float copy.
    return (x[:, None, :] * qweight.to(x.dtype)).sum(dim=-1) * scales.to(x.dtype)


_compiled_matvec: Callable | None = None


def _compiled(x, layer, prepared):
    global _compiled_matvec
    if _compiled_matvec is None:
        _compiled_matvec = torch.compile(_int8_matvec, dynamic=False)
    return _compiled_matvec(x, layer.qweight, layer.scales)


INT8_MM = Kernel("int8-mm", _int8_mm)
DEQUANTIZE = Kernel("dequantize", _dequantize)
BF16_COPY = Kernel("bf16-copy", _bf16_copy, prepare=lambda layer: layer.dequantized(torch.bfloat16),
                   extra_bytes_per_weight=2)
COMPILED = Kernel("compiled", _compiled)
KERNELS = {k.name: k for k in (INT8_MM, DEQUANTIZE, BF16_COPY, COMPILED)}


# ---- quantizing a model and choosing its kernel --------------------------------------------------------
@dataclass
class QuantReport:
    kernel: str  # the kernel every Int8Linear uses for decode steps
    times_ms: dict[str, float]  # one decode step's matmuls (all layers, one row) per kernel probed; inf: failed
    layers: int
    fp32_bytes: int  # the quantized matrices' size in fp32
    int8_bytes: int  # their size now: int8 weights, scales, and the kernel's extra copies

    def summary(self) -> str:
        times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in self.times_ms.items())
        return (f"int8 weights: {self.layers} layers, {self.int8_bytes / 1e6:.0f} MB instead of "
                f"{self.fp32_bytes / 1e6:.0f} MB in fp32; decode kernel {self.kernel} (one step's matmuls: {times})")


@torch.no_grad()
def quantize_model(model: nn.Module, kernel: str = "auto", probe_compiled: bool = False) -> QuantReport:
    """Replace every Linear (and the token embedding) with int8 versions, in place; pick the kernel.

    kernel="auto" times the candidates on this model's layers (about a second for GPT-2 124M on 2
    cores) and keeps the fastest; or name one of KERNELS.
    """
    fp32_bytes = 0
    linears: list[Int8Linear] = []
    replaced: dict[int, Int8Linear] = {}  # id(original weight) -> its int8 layer, to share with a tied embedding
    for parent, name, module in list(_children(model)):
        if isinstance(module, nn.Linear):
            layer = Int8Linear.from_linear(module)
            replaced[id(module.weight)] = layer
            linears.append(layer)
            fp32_bytes += module.weight.numel() * 4
            setattr(parent, name, layer)
    for parent, name, module in list(_children(model)):
        if isinstance(module, nn.Embedding) and name == "tok_emb":
            tied = replaced.get(id(module.weight))
            if tied is None:
                q, scales = quantize_int8(module.weight)
                fp32_bytes += module.weight.numel() * 4
            else:
                q, scales = tied.qweight, tied.scales
            setattr(parent, name, Int8Embedding(q, scales, module.weight.dtype))
    names = list(KERNELS) if kernel == "auto" else [kernel]
    if kernel == "auto" and not probe_compiled:
        names.remove(COMPILED.name)
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        raise ValueError(f"unknown int8 kernel {unknown[0]!r}; choose auto or one of {', '.join(KERNELS)}")
    times = probe_kernels(linears, [KERNELS[n] for n in names])
    best = _fastest(times)
    if times[best] == float("inf"):
        raise ValueError(f"the int8 kernel {best!r} does not run on this machine; use kernel='auto'")
    for layer in linears:
        layer.use(KERNELS[best])
    return QuantReport(kernel=best, times_ms={n: t * 1e3 for n, t in times.items()}, layers=len(linears),
                       fp32_bytes=fp32_bytes, int8_bytes=quantized_bytes(model))


def _fastest(times: dict[str, float]) -> str:
    """The fastest kernel; one that keeps an extra copy (memory is why one quantizes) has to win by 10%."""
    best = min(times, key=times.get)
    lean = {name: t for name, t in times.items() if KERNELS[name].extra_bytes_per_weight == 0}
    if not lean:
        return best
    best_lean = min(lean, key=lean.get)
    return best if times[best] < 0.9 * times[best_lean] else best_lean


def _children(model: nn.Module):
    """(parent, attribute name, child) for every module below `model`."""
    for parent in model.modules():
        for name, child in parent.named_children():
            yield parent, name, child


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the int8 weights, scales and kernel copies in `model` (shared tensors once)."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int8Embedding)):
            tensors = [module.qweight, module.scales, getattr(module, "prepared", None)]
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


def probe_kernels(layers: list[Int8Linear], kernels: list[Kernel]) -> dict[str, float]:
    """Seconds for one row through all `layers`, per kernel (inf where the kernel fails here).

    All layers in turn, as in a real decode step: the weights stream from memory instead of staying
    in the caches, as they would if one layer were timed in a loop.
    """
    times = {}
    for kernel in kernels:
        try:
            times[kernel.name] = _time_kernel(layers, kernel)
        except Exception:  # a kernel missing from this torch build, or failing for this dtype/shape
            times[kernel.name] = float("inf")
    if all(t == float("inf") for t in times.values()):
        times[DEQUANTIZE.name] = 0.0  # nothing ran (no layers): dequantize always works
    return times


def _time_kernel(layers: list[Int8Linear], kernel: Kernel) -> float:
    prepared = [kernel.prepare(layer) if kernel.prepare else None for layer in layers]
    inputs = [torch.randn(1, layer.in_features, dtype=layer.dtype, device=layer.qweight.device) for layer in layers]
    for layer, x, p in zip(layers, inputs, prepared):
        kernel.matmul(x, layer, p)  # warm-up: first-call setup, compilation
    best = float("inf")
    for _ in range(_PROBE_PASSES):
        start = time.perf_counter()
        for layer, x, p in zip(layers, inputs, prepared):
            kernel.matmul(x, layer, p)
        best = min(best, time.perf_counter() - start)
    return best
