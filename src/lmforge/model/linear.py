"""nn.Linear, plus faster paths for the few-row products of token-by-token generation on CPU.

A linear layer computes y = x W^T + b with W stored (out, in). With many rows in x (training,
prefill) every BLAS library handles that well. Decoding feeds one token per sequence, so x has only
1-64 rows, and then how the product is done matters a lot on CPU. Five ways, same numbers:

* plain: F.linear, x W^T;
* weight-major: y^T = W x^T, with W as the left, "tall" operand. Up to 1.8x faster for GPT-2's
  50,257 x 768 output layer in bf16 on a 2-core Xeon, and sometimes slower (fp32 at 2 rows);
* packed (fp32 with MKL): a BLAS call re-arranges ("packs") W into its kernel's tile layout on
  every call, which at a few rows costs as much as the multiplication itself. MKL can pack W once
  (cblas_sgemm_pack) and reuse it for every step: GPT-2 124M's matmuls at 8 rows took 28 instead
  of 42 ms per step. A packed copy is made for one row count (and serves a few rows fewer, padded
  with zeros), costs about 1.6x the weight's memory, and is only worth making for a long run of
  steps, so a layer packs after PACK_AFTER_CALLS such calls with unchanged weights, and only while
  memory is plentiful.
* onednn (fp32): oneDNN's inner product (torch.ops.mkldnn, what torch.compile's CPU "freezing"
  uses) on W as it is. At one row MKL's matrix-vector product runs on one core (13-15 GB/s on a
  2-core AMD EPYC whatever the thread count); oneDNN's splits the output over all of them (15-27
  GB/s, the machine reads 28);
* onednn-packed (fp32): the same on a copy of W in oneDNN's blocked layout, made and kept like
  MKL's packed copy (the size of W): a little faster again for the larger matrices (GPT-2's
  50,257 x 768 output layer: 29 instead of 27 GB/s).

Which way wins depends on the BLAS, the CPU, the dtype, the shape and the row count, so nothing is
hard-coded: the first time a (shape, dtype, rows, threads) combination is seen, the candidates are
timed on the layer's own weight and the choice is remembered.

Only inference takes these paths (autograd off, CPU, at most MAX_DECODE_ROWS rows); training and
prefill always use F.linear. Results agree with F.linear to float rounding.
"""

from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_DECODE_ROWS = 64
PACK_AFTER_CALLS = 8  # packing GPT-2 124M takes 0.1-0.7 s on 2 cores: worth it for long generations only
PLAIN, WEIGHT_MAJOR, ONEDNN = "plain", "weight-major", "onednn"
PACKED, ONEDNN_PACKED = "packed", "onednn-packed"
PREPARED = (PACKED, ONEDNN_PACKED)  # the layouts that work on a prepared copy of the weight
_PROBE_SECONDS = 0.01  # per probe; a model has a handful of distinct shapes
_PROBE_MIN_RUNS = 3
_PROBE_BYTES = 128 << 20  # the probe reads this much weight data in turn: more than a CPU's caches hold
_PROBE_MAX_COPIES = 64
_STREAMING_ROWS = 8  # from this row bucket on, the probe gives near-ties to the weight-major layout
_PACKED_SIZE = 1.6  # MKL's packed copy of an fp32 weight, relative to the weight (measured: 240 vs 154 MB)
_MEMORY_RESERVE = 1 << 30  # packing never leaves less than this much memory available
_MEMINFO = Path("/proc/meminfo")  # where Linux says how much memory is available
# (out, in, dtype, row bucket, threads) -> (fastest way, fastest way that needs no packed copy)
_layout_choice: dict[tuple, tuple[str, str]] = {}
_plain_only = threading.local()  # set by plain_products(): this thread uses F.linear only


@contextmanager
def plain_products():
    """Within this block (on this thread) every Linear computes with F.linear. The faster decode paths are picked
    by timing, so two runs may compute the same product with different kernels, equal only to float rounding;
    where a run must repeat itself bit for bit (sampling in RL, after a resume), that is not good enough."""
    before = getattr(_plain_only, "on", False)
    _plain_only.on = True
    try:
        yield
    finally:
        _plain_only.on = before


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) that decodes few rows the fastest way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: _PackedWeight | None = None  # not a buffer: derived from weight, never saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)  # the compiler picks its own kernels; no timing in a graph
        rows = x.numel() // x.size(-1) if x.numel() else 0
        if torch.is_grad_enabled() or x.device.type != "cpu" or not 0 < rows <= MAX_DECODE_ROWS \
                or getattr(_plain_only, "on", False):
            return F.linear(x, self.weight, self.bias)
        layout, unpacked_layout = _layout(self.weight, self.bias, rows)
        if layout in PREPARED:
            packed = self._packed_weight(rows, layout)
            if packed.tensor is not None:
                y = _prepared_product(layout, x.reshape(rows, -1), packed, self.weight, self.bias)
                return y.reshape(*x.shape[:-1], self.out_features)
            layout = unpacked_layout  # not packed (yet): the best of the others
        if layout == PLAIN:
            return F.linear(x, self.weight, self.bias)
        if layout == ONEDNN:
            y = _onednn_product(x.reshape(rows, -1).contiguous(), self.weight, self.bias)
        else:
            y = _weight_major_product(x.reshape(rows, -1), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _packed_weight(self, rows: int, layout: str = PACKED) -> _PackedWeight:
        """The prepared copy (`layout`) that serves `rows` rows; its tensor is None until this layer has earned one."""
        packed = getattr(self, "_packed", None)  # modules made before this attribute existed lack it
        if packed is None or packed.layout != layout or not packed.serves(self.weight, rows):
            packed = self._packed = _PackedWeight(self.weight, rows, layout)  # drops a stale copy
        packed.calls += 1
        if packed.tensor is None and packed.calls >= PACK_AFTER_CALLS and _memory_allows(self.weight):
            packed.tensor = _prepare(layout, self.weight.detach(), packed.rows)
        return packed


def drop_packed_weights(model: nn.Module) -> None:
    """Free every packed copy in `model` (they come back, after a few steps, when decoding resumes)."""
    for module in model.modules():
        if isinstance(module, Linear):
            module._packed = None


class _PackedWeight:
    """A packed copy of one weight, valid while the weight is the same tensor holding the same values.

    In-place changes (an optimizer step, load_state_dict) bump the tensor's version counter; a new
    tensor (model.to(dtype), param.data = ...) changes the object or its storage. Either one makes
    the copy stale, so sample generations during training never use old weights.
    """

    def __init__(self, weight: torch.Tensor, rows: int, layout: str = PACKED):
        self.rows, self.layout = rows, layout
        self.source = weakref.ref(weight)  # weak: a replaced weight must not be kept alive by its copy
        self.data_ptr, self.version = weight.data_ptr(), weight._version
        self.calls = 0
        self.tensor: torch.Tensor | None = None

    def __deepcopy__(self, memo) -> None:
        return None  # a copied model packs its own weights when it needs to

    def serves(self, weight: torch.Tensor, rows: int) -> bool:
        """True when this copy is of `weight` as it is now, and was packed for `rows` or a few more.

        A copy packed for 7 rows also serves 5 or 6 (padded with zero rows: at these sizes the time
        goes to reading the weight, not to the arithmetic), so a server whose batches shrink does not
        re-pack; a larger batch, or one in another power-of-two bucket, gets its own copy.
        """
        return (rows <= self.rows and _bucket(rows) == _bucket(self.rows) and self.source() is weight
                and weight.data_ptr() == self.data_ptr and weight._version == self.version)


def _bucket(rows: int) -> int:
    """Row counts rounded up to a power of two (1, 2, 4, ..., 64)."""
    return 1 << (rows - 1).bit_length()


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (r, in) with zero rows added up to `rows` (what a packed copy was made for), contiguous."""
    if x.size(0) == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros(rows - x.size(0), x.size(1))])


def _weight_major_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) -> (rows, out), computed as (W x^T)^T."""
    y_t = weight @ x.t() if bias is None else torch.addmm(bias[:, None], weight, x.t())  # (out, rows)
    return y_t.t().contiguous()


def _packed_product(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, x.size(0))


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) contiguous -> (rows, out); weight as it is, or oneDNN's prepared copy of it."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _prepare(layout: str, weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight copy a prepared layout multiplies with, made for `rows` rows."""
    if layout == PACKED:
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _prepared_product(layout: str, x: torch.Tensor, packed: _PackedWeight, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) -> (rows, out) through a prepared copy. MKL's is made for a row count and takes
    exactly that many (zero rows added, then dropped); oneDNN's takes any."""
    if layout == ONEDNN_PACKED:
        return _onednn_product(x.contiguous(), packed.tensor, bias)
    rows = x.size(0)
    return _packed_product(_pad_rows(x, packed.rows), packed.tensor, weight, bias)[:rows]


def can_pack(weight: torch.Tensor) -> bool:
    """MKL's packed GEMM exists in this torch build (x86 builds have it) and the weight is fp32 on CPU."""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


def can_use_onednn(weight: torch.Tensor) -> bool:
    """oneDNN's inner product exists in this torch build and the weight is fp32 on CPU. (bf16 also needs
    AVX-512 or AVX-NE-CONVERT; lmforge's bf16 decode keeps the other layouts.)"""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _memory_allows(weight: torch.Tensor) -> bool:
    """True when a packed copy of `weight` leaves at least _MEMORY_RESERVE of memory available (Linux)."""
    return _memory_available_for(_PACKED_SIZE * weight.numel() * weight.element_size())


def _memory_available_for(size: float) -> bool:
    """True when `size` more bytes leave at least _MEMORY_RESERVE of memory available (Linux)."""
    needed = size + _MEMORY_RESERVE
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 > needed
    except OSError:
        pass
    return False  # no way to tell: do not risk doubling the model's memory


def _layout(weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> tuple[str, str]:
    # Row counts are bucketed to powers of two: one probe serves a whole bucket, so a growing input
    # (generation without a cache) does not probe at every step.
    bucket = _bucket(rows)
    key = (*weight.shape, weight.dtype, bucket, torch.get_num_threads())
    if key not in _layout_choice:
        _layout_choice[key] = _probe(weight, bias, bucket)
    return _layout_choice[key]


def _probe(weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> tuple[str, str]:
    """Time the candidates on this weight, alternating, for about 10 ms each.

    Returns the fastest way and the fastest way without a packed copy.
    """
    x = torch.randn(rows, weight.size(1), dtype=weight.dtype)
    weights = _streamed_copies(weight.detach())
    turn = _RoundRobin(len(weights))
    candidates = {PLAIN: lambda: F.linear(x, weights[turn()], bias),
                  WEIGHT_MAJOR: lambda: _weight_major_product(x, weights[turn()], bias)}
    if can_pack(weight):
        packed = [_prepare(PACKED, w, rows) for w in weights]
        candidates[PACKED] = lambda: _packed_product(x, packed[i := turn()], weights[i], bias)
    if can_use_onednn(weight):
        prepared = [_prepare(ONEDNN_PACKED, w, rows) for w in weights]
        candidates[ONEDNN] = lambda: _onednn_product(x, weights[turn()], bias)
        candidates[ONEDNN_PACKED] = lambda: _onednn_product(x, prepared[turn()], bias)
    best = _fastest_times(candidates)
    if rows >= _STREAMING_ROWS:
        # Even streamed, several rows favour W @ x^T in a real decode step more than this probe can see
        # (GPT-2 124M bf16 at 8 rows: 304 tok/s with the probe's choices, 351 with W @ x^T everywhere).
        # So near-ties go to W @ x^T here.
        unpacked = PLAIN if best[PLAIN] < 0.9 * best[WEIGHT_MAJOR] else WEIGHT_MAJOR
    else:
        unpacked = WEIGHT_MAJOR if best[WEIGHT_MAJOR] < 0.9 * best[PLAIN] else PLAIN  # one row: a clear win only
    if ONEDNN in best and best[ONEDNN] < 0.9 * best[unpacked]:
        unpacked = ONEDNN
    # A prepared copy costs memory and packing time: it has to win clearly.
    prepared_layout = min((layout for layout in PREPARED if layout in best), key=best.get, default=None)
    if prepared_layout is not None and best[prepared_layout] < 0.9 * best[unpacked]:
        return prepared_layout, unpacked
    return unpacked, unpacked


def _streamed_copies(weight: torch.Tensor) -> list[torch.Tensor]:
    """The weight and enough copies of it to fill _PROBE_BYTES.

    A decode step reads every weight once, from memory; a probe that multiplied one small weight over and
    over would time it sitting in the CPU's caches, where the ranking differs (GPT-2's 768 x 768 at one
    row on a 2-core EPYC: MKL 27 GB/s from cache, 13 from memory; oneDNN 22 and 15). Going round
    copies larger than the caches together makes the probe read from memory as decoding does. With
    the prepared copies of each, a probe briefly holds about 3.6 x _PROBE_BYTES; short of memory, it
    times the weight alone.
    """
    count = min(_PROBE_MAX_COPIES, max(1, _PROBE_BYTES // max(1, weight.numel() * weight.element_size())))
    if not _memory_available_for((1 + _PACKED_SIZE + 1) * _PROBE_BYTES):
        count = 1
    return [weight] + [weight.clone() for _ in range(count - 1)]


class _RoundRobin:
    """Copy indices 0, 1, ..., n - 1, 0, ... shared by all candidates of a probe: whichever runs next gets
    the copy touched longest ago, never the one the previous candidate has just pulled into the caches."""

    def __init__(self, n: int):
        self.n, self.last = n, -1

    def __call__(self) -> int:
        self.last = (self.last + 1) % self.n
        return self.last


def _fastest_times(candidates: dict) -> dict[str, float]:
    """Best time of each candidate over about _PROBE_SECONDS, run in turns so a slow moment hurts all alike."""
    for fn in candidates.values():
        fn()  # the first call may allocate or pick a kernel
    best = dict.fromkeys(candidates, float("inf"))
    deadline = time.perf_counter() + _PROBE_SECONDS
    runs = 0
    while runs < _PROBE_MIN_RUNS or time.perf_counter() < deadline:
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
        runs += 1
    return best
