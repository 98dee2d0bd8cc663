"""Running an exported GGUF file in llama.cpp itself (through llama-cpp-python): logits and perplexity.

Used by `lmforge export --format gguf` to report what quantization costs, measured by llama.cpp on
the very file written, and by the tests that compare llama.cpp with lmforge.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0
_PATCHING = threading.Lock()  # held while llama.cpp's model defaults are patched (_without_extra_buffer_types)

SAMPLE_TEXT = (
    "The history of every country begins with its geography: rivers decide where towns grow, mountains "
    "where borders run, and the sea whether people trade or fight. Café owners in Zürich and Kraków "
    "still argue about which city invented the best pastry.\n\n"
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "Q: How many legs does a spider have?\nA: Eight. Insects have six, which is one way to tell them apart.\n"
)
"""What the perplexity change is measured on when no --eval-text is given (prose, accents, code)."""


def llamacpp_missing() -> str | None:
    """Why llama.cpp cannot be run from Python here, or None when it can."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install 'lmforge[llamacpp]' builds it, ~10 minutes)"
    return None


def load_llama(gguf_file: str | Path, n_ctx: int, logits_all: bool = True, exact: bool = True,
               threads: int | None = None):
    """A llama.cpp model + context on the CPU.

    exact=True sets it up to compute as exactly as llama.cpp can: a float32 key/value cache (llama.cpp's
    default is f16, which would add its own rounding to every comparison with lmforge) and no flash
    attention. exact=False keeps llama.cpp's own defaults, what its users run.
    """
    from llama_cpp import Llama

    precise = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False) if exact else {}
    threads = threads or os.cpu_count() or 1
    # llama.cpp's AMX matmuls crash on q8_0/q4_0 files (seen with llama-cpp-python 0.3.36 on a 2-core Xeon
    # with AMX: a segfault in decode; llama.cpp issues #20824, and #16315 for wrong Q4_0 results). There
    # the weights stay in the plain CPU buffers, which compute correctly; other CPUs keep their repacked ones.
    plain_buffers = _without_extra_buffer_types() if cpu_has_amx() else contextlib.nullcontext()
    with plain_buffers:
        return Llama(model_path=str(gguf_file), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                     n_gpu_layers=0, n_threads=threads, n_threads_batch=threads, verbose=False, **precise)


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX int8 tiles, which llama.cpp would use for quantized weights (Linux only:
    elsewhere it reads False)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_int8" in flags.split()


@contextlib.contextmanager
def _without_extra_buffer_types():
    """Models loaded inside the block get llama.cpp's `use_extra_bufts = false` (its --no-extra-bufts: no AMX or
    repacked weight buffers). llama-cpp-python's Llama takes no argument for it, so its defaults are patched."""
    import llama_cpp.llama_cpp as api

    # One load at a time: two threads patching at once could leave the patch installed for good.
    with _PATCHING:
        defaults = api.llama_model_default_params
        if "use_extra_bufts" not in dict(defaults()._fields_):  # an older llama.cpp without the switch
            yield
            return

        def plain_params():
            params = defaults()
            params.use_extra_bufts = False
            return params

        api.llama_model_default_params = plain_params
        try:
            yield
        finally:
            api.llama_model_default_params = defaults


def llamacpp_logits(llm, ids: list[int]) -> np.ndarray:
    """Next-token logits (len(ids), vocab) for `ids`, evaluated from an empty context."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llamacpp_greedy(llm, prompt: list[int], n_tokens: int) -> list[int]:
    """The `n_tokens` most-likely-next tokens after `prompt`, one decode step each (llama.cpp's KV cache)."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def mean_nll(llm, ids: list[int], window: int) -> float:
    """Average negative log-likelihood (nats per token) of `ids`, in independent windows of the context size."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        if len(chunk) < 2:
            break
        logits = llamacpp_logits(llm, chunk[:-1]).astype(np.float64)
        log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        targets = np.array(chunk[1:])
        total += float((log_z - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return total / max(count, 1)


def file_nll(gguf_file: str | Path, ids: list[int], context: int) -> float:
    """mean_nll of `ids` under the GGUF file, loaded and freed again."""
    llm = load_llama(gguf_file, n_ctx=context)
    try:
        return mean_nll(llm, ids, window=context)
    finally:
        llm.close()


def quantization_report(checkpoint: str | Path, gguf_file: str | Path, quant: str, text: str,
                        text_name: str) -> list[str]:
    """Lines saying how much the written file's perplexity differs from an f32 export's, both run by llama.cpp."""
    import tempfile

    from ..tokenizer import load_tokenizer
    from ..train.checkpoint import read_model_config
    from .gguf_writer import tokenizer_folder, write_gguf

    reason = llamacpp_missing()
    if reason:
        return [f"perplexity check skipped: {reason}"]
    context = read_model_config(checkpoint).block_size
    ids = load_tokenizer(tokenizer_folder(Path(checkpoint))).encode(text)
    if len(ids) < 2:
        return [f"perplexity check skipped: {text_name} is shorter than two tokens"]
    nll = file_nll(gguf_file, ids, context)
    if quant == "f32":
        reference = nll
    else:
        with tempfile.TemporaryDirectory() as tmp:
            reference_file = Path(tmp) / "f32.gguf"
            write_gguf(checkpoint, reference_file, "f32")
            reference = file_nll(reference_file, ids, context)
    return [f"perplexity in llama.cpp on {len(ids)} tokens of {text_name}: f32 {reference:.4f} nats per token "
            f"(ppl {math.exp(reference):.3f})",
            f"{quant}: {nll - reference:+.4f} nats per token vs f32 (ppl {math.exp(nll):.3f})"]
