"""`train.precision: auto`: pick fp32 or bf16 autocast by what is faster for this model on this machine.

On a GPU with bf16 support, bf16 autocast is the answer (tensor cores). On CPU it depends: with AMX
(recent Xeons) a bf16 matmul is ~6x faster than fp32, with only AVX512-BF16 1.4-2x, without either
bf16 is emulated and slow; and for small models the casts and many small kernels can cost more than
the matmuls save (a 4-layer, 128-wide model trains *slower* in bf16 on 2 Xeon cores). So for small
models on a bf16-capable CPU lmforge times a few forward+backward passes of the real model on a
real-sized batch in both precisions and keeps the faster; large models (>= 20M parameters, where
matmuls dominate) go to bf16 without the probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..utils.device import CPU_BF16_MIN_PARAMS, autocast, cpu_supports_bf16, resolve_precision
from .objectives import statistics_left_out

PROBE_STEPS = 3


def choose_precision(requested: str, model: torch.nn.Module, batch: tuple[torch.Tensor, ...],
                     device: torch.device, loss_fn: Callable) -> tuple[str, str]:
    """(precision, why): the requested one, or for "auto" the faster of fp32/bf16 for this model here."""
    n_params = sum(p.numel() for p in model.parameters())
    if requested != "auto" or device.type != "cpu":
        chosen = resolve_precision(requested, device, n_params)
        return chosen, "as configured" if requested != "auto" else f"auto: {device.type} default"
    if not cpu_supports_bf16():
        return "fp32", "auto: this CPU has no native bf16"
    if n_params >= CPU_BF16_MIN_PARAMS:
        return "bf16", f"auto: {n_params / 1e6:.0f}M parameters, matmuls dominate"
    # Dropout in the probe must not shift the run's random stream, nor its passes count in an objective's statistics.
    with torch.random.fork_rng(), statistics_left_out(loss_fn):
        timings = {p: step_time(model, batch, device, p, loss_fn) for p in ("fp32", "bf16")}
    chosen = min(timings, key=timings.get)
    return chosen, "auto: probe " + ", ".join(f"{p} {t * 1000:.1f} ms/step" for p, t in timings.items())


def candidate_precisions(requested: str, device: torch.device) -> tuple[str, ...]:
    """The precisions a run may end up training in: what `choose_precision` picks from. The size probe
    (train/sizing.py) times each model in each of them, so it sizes for the speed the run will have."""
    if requested == "auto" and device.type == "cpu" and cpu_supports_bf16():
        return ("fp32", "bf16")
    return (resolve_precision(requested, device, n_params=0),)


def run_precision(requested: str, model: torch.nn.Module, probe_batch: Callable[[], tuple[torch.Tensor, ...]],
                  device: torch.device, loss_fn: Callable, run_dir, resume: str,
                  distributed: bool) -> tuple[str, str]:
    """(precision, why) for a training run: as configured; for auto, what the run being resumed used, else
    the choice above. Several processes must agree and a timing probe could differ between them, so they
    use the size rule. `probe_batch` is called only when the probe runs."""
    if requested == "auto":
        resumed = precision_of_resumed_run(run_dir, resume)
        if resumed:
            return resumed, "the precision of the run being resumed"
        if distributed:
            n_params = sum(p.numel() for p in model.parameters())
            return resolve_precision("auto", device, n_params), "auto: by model size, the same on every process"
        return choose_precision(requested, model, probe_batch(), device, loss_fn)
    return choose_precision(requested, model, (), device, loss_fn)


def step_time(model: torch.nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device, precision: str,
              loss_fn: Callable) -> float:
    """Best time of a forward+backward pass on `batch` in `precision` (gradients are discarded)."""
    batch = [t.to(device) for t in batch]
    best = float("inf")
    for step in range(PROBE_STEPS + 1):  # the first pass warms up (allocations, kernel choice)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = loss_fn(model, *batch)
        loss.backward()
        if step:
            best = min(best, time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return best


def precision_of_resumed_run(run_dir, resume: str) -> str | None:
    """The precision an interrupted run used, when this run will resume it: a resumed run keeps it
    (the probe could choose differently the second time, and mixing precisions breaks exact resume)."""
    from . import checkpoint as ckpt

    if resume == "never":
        return None
    path = ckpt.find_resume(run_dir) if resume == "auto" else Path(resume)
    if path is None or not (Path(path) / "meta.json").is_file():
        return None
    return ckpt.read_meta(path).get("precision")
