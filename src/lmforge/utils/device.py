"""Pick the device and the numeric precision of a run."""

from __future__ import annotations

import contextlib

import torch

# On CPU, bf16 autocast pays off only when matmuls dominate; for tiny models the casts and small
# kernels cost more than they save (measured: a 4x4x128 model runs slower in bf16 on 2 cores).
CPU_BF16_MIN_PARAMS = 20_000_000


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, n_params: int) -> str:
    """Turn 'auto' into fp32/bf16/fp16 for this device and model size; reject impossible choices."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision: fp16 needs a CUDA GPU (on CPU it is ~100x slower); use bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16() and n_params >= CPU_BF16_MIN_PARAMS:
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a forward pass: bf16/fp16 matmuls, fp32 elsewhere; a no-op in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
