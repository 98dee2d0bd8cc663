"""Whether torch.compile can generate kernels on a device here (a C++ compiler on CPU, Triton on CUDA).

Without one, torch.compile fails at the first call, possibly minutes into a run; callers ask first
and run eagerly instead, saying why.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch


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
