"""Storage types of the GGUF export: which tensors get which precision, and packing them.

    f32    4 bytes per weight: exact
    f16    2 bytes: IEEE half precision (10-bit mantissa), tiny rounding
    bf16   2 bytes: bfloat16 (8-bit mantissa, float32's range)
    q8_0   8.5 bits (1.0625 bytes): blocks of 32 weights, one int8 each plus one f16 scale per block
    q4_0   4.5 bits (0.5625 bytes): blocks of 32 weights, one 4-bit int each plus one f16 scale

Only matrices are quantized; norms, biases and llama.cpp's rope factors stay float32 (they are tiny
and sensitive), as llama.cpp's own converter does. A matrix whose rows are not a whole number of
32-weight blocks falls back to f16. With q4_0 the token embedding and the output matrix are stored
as q8_0: they touch every token and are the most sensitive to rounding (llama.cpp's quantizer also
keeps its output layer at a higher precision).

The `gguf` package quantizes the types above in NumPy. It only *reads* the k-quants (Q4_K, Q5_K,
Q6_K ...): their quantizers exist only in llama.cpp's C code, so Q4_K_M/Q5_K_M are not offered here.
"""

from __future__ import annotations

import numpy as np

QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0")
BITS_PER_WEIGHT = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_0": 4.5}

_SENSITIVE = ("token_embd.weight", "output.weight")


def gguf_type(quant: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[quant.upper()]


def file_type(quant: str) -> int:
    """general.file_type: what most of the file is stored as (llama.cpp prints it as the model's type)."""
    from gguf import LlamaFileType

    return LlamaFileType.ALL_F32 if quant == "f32" else LlamaFileType[f"MOSTLY_{quant.upper()}"]


def storage_type(name: str, shape: tuple[int, ...], quant: str) -> str:
    """The type tensor `name` is stored as under export type `quant`."""
    if len(shape) < 2 or quant == "f32":
        return "f32"
    if quant == "q4_0" and name in _SENSITIVE:
        quant = "q8_0"
    if quant in ("q8_0", "q4_0") and shape[-1] % 32:
        return "f16"  # llama.cpp's blocks run along a row
    return quant


def packed(data: np.ndarray, kind: str) -> tuple[np.ndarray, object | None]:
    """The array to write and the raw GGML type to declare (None: the writer infers it from the dtype)."""
    from gguf import quants

    if kind == "f32":
        return data.astype(np.float32), None
    if kind == "f16":
        return data.astype(np.float16), None
    return quants.quantize(data.astype(np.float32), gguf_type(kind)), gguf_type(kind)
