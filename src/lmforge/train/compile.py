"""torch.compile for training, with a clean fallback to eager mode when no compiler works.

torch.compile traces the model's forward into a graph and hands it to Inductor, which fuses elementwise
work (norms, activations, RoPE) into generated kernels: C++/OpenMP on CPU, Triton on CUDA. So it needs a
working C++ compiler on CPU and Triton on a GPU. Where those are missing it would fail at the first step,
minutes into a run; here the check happens before training starts, and a compile error that still occurs
later falls back to eager for that piece of the model instead of ending the run.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch
from tqdm import tqdm


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot generate kernels for `device` here, or None when it can."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed (pip install triton)"
    if device.type == "cpu":
        try:
            from torch._inductor import cpp_builder

            compiler = cpp_builder.get_cpp_compiler()
        except Exception as exc:  # torch looks for one in several places and raises when none is found
            return f"no C++ compiler found ({exc.__class__.__name__}); install g++ or clang"
        return None if shutil.which(compiler) else f"the C++ compiler {compiler!r} is not on PATH"
    return f"compiling for {device.type} is not supported here"


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
