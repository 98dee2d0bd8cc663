"""QLoRA: LoRA adapters on top of a 4-bit NF4 base model, plus 8-bit optimizer state.

Fine-tuning memory is weights + gradients + optimizer state + activations. LoRA (lora.py) removes
the base's gradients and optimizer state; QLoRA (Dettmers et al., 2023) also shrinks the frozen base
itself to ~4.1 bits per weight (nf4.py), a quarter of bf16. The adapters still train in full
precision: in each forward pass the base weight is dequantized on the fly, used, and dropped.

The recipe, in order:

    report = quantize_model(model)          # blocks' linear layers -> NF4 (bitsandbytes or ours)
    apply_lora(model, targets=(...))        # adapters over the 4-bit layers; all else frozen
    opt = build_8bit_optimizer(adapter_params, ...)   # optional: 8-bit Adam state (bitsandbytes)

Two NF4 backends do the same thing: bitsandbytes' Linear4bit (fused kernels, on CUDA and CPU) and
the pure-PyTorch NF4Linear (readable, dependency-free). The output head and embeddings stay in full
precision: they are small next to the blocks and the most sensitive to rounding.

Merging an adapter into a 4-bit base cannot keep it 4-bit exactly: the update is far smaller than
the gaps of the NF4 grid. lora.merge_lora therefore returns full-precision layers (dequantized base
plus update: faithful, but large); quantizing those again rounds the update away in part.
merge_drift measures either choice as the change of the logits on a probe input.

bitsandbytes 0.50 on CPU: its 4-bit kernel misreads weights whose in_features is not a multiple of
64 (a block then spans two rows), so such layers use the pure-PyTorch backend (see bnb_supports).
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from .lora import merge_lora
from .nf4 import BLOCK_SIZE, NF4Linear, is_4bit_linear

INSTALL_HINT = "pip install 'lmforge[quant]'"
BACKENDS = ("auto", "torch", "bnb")
OPTIMIZERS = {"adamw8bit": "AdamW8bit", "paged_adamw8bit": "PagedAdamW8bit"}


def _import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as error:
        raise ImportError(f"bitsandbytes is not installed; {INSTALL_HINT}") from error
    return bitsandbytes


def bnb_supports(linear: nn.Linear) -> bool:
    """Whether bitsandbytes handles this layer correctly: its CPU 4-bit kernel (0.50) misreads
    weights whose rows are not a whole number of 64-value blocks long; CUDA has no such limit."""
    return linear.weight.device.type != "cpu" or linear.in_features % BLOCK_SIZE == 0


def resolve_backend(backend: str, layers: list[nn.Linear]) -> str:
    """"auto" -> "bnb" when bitsandbytes is installed and handles every layer, else "torch".

    An explicit "bnb" is checked: bitsandbytes must be installed and handle every layer.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    unsupported = [f"{m.out_features}x{m.in_features}" for m in layers if not bnb_supports(m)]
    if backend == "auto":
        installed = importlib.util.find_spec("bitsandbytes") is not None
        return "bnb" if installed and not unsupported else "torch"
    if backend == "bnb":
        _import_bitsandbytes()
        if unsupported:
            raise ValueError(f"bitsandbytes' CPU 4-bit kernel needs in_features divisible by {BLOCK_SIZE}; "
                             f"layers {', '.join(sorted(set(unsupported)))} are not: use backend='torch'")
    return backend


def module_bytes(model: nn.Module) -> int:
    """Bytes of a model's weights: parameters and buffers (shared ones once), plus the scaling
    constants bitsandbytes keeps beside a 4-bit weight. The fixed 16/256-entry code tables are not counted.
    """
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    total = sum(t.numel() * t.element_size() for t in tensors)
    for t in tensors:
        state = getattr(t, "quant_state", None)
        if state is not None:
            total += _quant_state_bytes(state)
    return total


def _quant_state_bytes(state) -> int:
    parts = [state.absmax, getattr(state, "offset", None)]
    if getattr(state, "state2", None) is not None:
        parts.append(state.state2.absmax)
    return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))


def _bnb_linear4bit(linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    """An nn.Linear -> bitsandbytes Linear4bit: NF4, block 64, double quantization (compress_statistics)."""
    bnb = _import_bitsandbytes()
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                              device="meta")
    layer.weight = bnb.nn.Params4bit(linear.weight.detach().clone(), requires_grad=False, blocksize=BLOCK_SIZE,
                                     compress_statistics=True, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    # On CPUs with AVX512-BF16, bitsandbytes rewrites the packed weight into a CPU-kernel layout at the
    # first inference-mode forward. That layout is no longer NF4 as dequantize_4bit reads it (merging
    # needs that), and in bitsandbytes 0.50 the rewrite fails for layers narrower than 64 inputs.
    layer.support_avx512bf16_for_cpu = False
    # Params4bit quantizes when it is moved to a device, so this .to() is what packs the weight.
    return layer.to(linear.weight.device)


def _quantized(linear: nn.Linear, backend: str, compute_dtype: torch.dtype) -> nn.Module:
    if backend == "bnb":
        return _bnb_linear4bit(linear, compute_dtype)
    return NF4Linear.from_linear(linear, compute_dtype)


@dataclass
class QuantReport:
    """What quantize_model replaced and what it saved."""

    backend: str
    layers: list[str]
    bytes_before: int
    bytes_after: int

    def __str__(self) -> str:
        return (f"quantized {len(self.layers)} linear layers to NF4 ({self.backend}): "
                f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB")


def _selected(name: str, module: nn.Module, skip: tuple[str, ...]) -> bool:
    """Plain nn.Linear layers (not 4-bit already) none of whose path components is in skip."""
    plain = isinstance(module, nn.Linear) and not is_4bit_linear(module)
    return plain and not set(name.split(".")) & set(skip)


def quantize_model(model: nn.Module, backend: str = "auto", skip: tuple[str, ...] = ("lm_head",),
                   compute_dtype: torch.dtype = torch.float32) -> QuantReport:
    """Replace the model's linear layers by frozen NF4 ones, in place.

    skip: path components to leave in full precision (default: the output head). A layer tied to an
    embedding cannot be quantized (the embedding needs the float matrix), so that is an error.
    compute_dtype: dtype of the 4-bit layers' matmuls; bf16 on a GPU, fp32 (the default) on CPU.
    """
    names = [name for name, m in model.named_modules() if _selected(name, m, skip)]
    backend = resolve_backend(backend, [model.get_submodule(name) for name in names])
    before = module_bytes(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name in names:
        linear = model.get_submodule(name)
        if id(linear.weight) in embeddings:
            raise ValueError(f"{name} shares its weight with an embedding; keep it in skip (e.g. skip=('lm_head',))")
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, _quantized(linear, backend, compute_dtype))
    return QuantReport(backend, names, before, module_bytes(model))


@torch.no_grad()
def merge_drift(model: nn.Module, probe_ids: torch.Tensor, requantize: str | None = None) -> float:
    """Max |logits change| on probe_ids when the adapters are merged (measured on a copy; dropout off).

    requantize=None: merge into full-precision layers, as merge_lora does. The merged weight is the
    dequantized base plus the update, exactly what the adapted model computed, so the drift is float
    rounding (~1e-6). requantize="torch"|"bnb"|"auto": quantize the merged layers back to NF4 to keep
    the 4-bit size; the update is then rounded to the NF4 grid and the drift is real.
    """
    was_training = model.training
    model.eval()
    try:
        before = model(probe_ids)
        merged = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the caller is measuring exactly what the warning is about
            merge_lora(merged)
        if requantize is not None:
            quantize_model(merged, backend=requantize)
        after = merged(probe_ids)
    finally:
        model.train(was_training)
    return (after.float() - before.float()).abs().max().item()


def build_8bit_optimizer(params, name: str = "adamw8bit", lr: float = 1e-4,
                         betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0):
    """A bitsandbytes AdamW whose two moment buffers are stored in 8 bits (blockwise quantized).

    Adam keeps two fp32 numbers per trained parameter; 8-bit state cuts that from 8 to ~2 bytes.
    bitsandbytes keeps small tensors (under 4096 elements) in 32-bit state, where the saving is nil.
    "paged_adamw8bit" additionally puts the state in CUDA unified memory so it can spill to CPU
    RAM under memory pressure instead of crashing; on a CPU-only machine bitsandbytes warns and
    runs it as the plain, unpaged optimizer.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown 8-bit optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    bnb = _import_bitsandbytes()
    optimizer_class = getattr(bnb.optim, OPTIMIZERS[name])
    return optimizer_class(params, lr=lr, betas=betas, weight_decay=weight_decay)
