"""torch.compile for training, with a clean fallback to eager mode when no compiler works.

torch.compile traces the model's forward into a graph and hands it to Inductor, which fuses elementwise
work (norms, activations, RoPE) into generated kernels: C++/OpenMP on CPU, Triton on CUDA. So it needs a
working C++ compiler on CPU and Triton on a GPU. Where those are missing it would fail at the first step,
minutes into a run; here the check happens before training starts, and a compile error that still occurs
later falls back to eager for that piece of the model instead of ending the run.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..utils.compiler import compiler_problem


def maybe_compile(model: torch.nn.Module, enabled: bool, device: torch.device, verbose: bool = True):
    """`model` compiled when asked for and possible, else `model` itself (eager), saying why."""
    if not enabled:
        return model
    problem = compiler_problem(device)
    if problem is not None:
        if verbose:
            tqdm.write(f"train.compile: running eager, {problem}")
        return model
    # A graph that fails to compile later (an unsupported op, a compiler crash) runs eagerly, with a warning.
    torch._dynamo.config.suppress_errors = True
    if verbose:
        tqdm.write("train.compile: compiling the model (the first steps take longer)")
    return torch.compile(model)
