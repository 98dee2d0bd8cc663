"""Writing a checkpoint as one GGUF file, the format llama.cpp, Ollama and LM Studio load.

A GGUF file is a header of typed key/value metadata (architecture, sizes, tokenizer, chat template)
followed by named tensors, each in its own storage type. Written with the `gguf` Python package
(llama.cpp's own reader/writer); no llama.cpp build is needed.

    write_gguf(checkpoint, out_file, quant="f16")      one file, from any loadable checkpoint
    cached_gguf(checkpoint, quant="f16")                the same, written once and reused (by content)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .gguf_arch import add_hyperparameters, gguf_arch_of, gguf_tensors
from .gguf_quant import QUANTS, file_type, packed, storage_type
from .gguf_tokenizer import GGUFVocab, add_vocab, gguf_vocab

FORMAT_VERSION = 1  # part of the cache key: bump when the written files change
CACHE_DIR_ENV = "LMFORGE_GGUF_CACHE"


def write_gguf(checkpoint: str | Path, out_file: str | Path, quant: str = "f16") -> GGUFVocab:
    """Write `checkpoint` (lmforge, Hugging Face or LoRA, merged) as GGUF; return the vocabulary written
    (its `notes` are for the user).

    Everything that could be refused (architecture, tokenizer) is checked before the file is created.
    """
    from gguf import GGUFWriter

    from ..data.templates import jinja_chat_template, load_chat_template
    from ..tokenizer import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint

    if quant not in QUANTS:
        raise ValueError(f"--quant: choose one of {', '.join(QUANTS)}, got {quant!r}")
    checkpoint, out_file = Path(checkpoint).expanduser(), Path(out_file).expanduser()
    model = load_model_from_checkpoint(checkpoint)
    cfg = model.config
    arch = gguf_arch_of(cfg)
    tokenizer = load_tokenizer(tokenizer_folder(checkpoint))
    vocab = gguf_vocab(tokenizer, cfg.vocab_size, bos_id=_hf_bos_id(checkpoint))
    chat_template = jinja_chat_template(load_chat_template(checkpoint), eot_token=vocab.tokens[vocab.eos_id])

    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")  # never leave a half-written file under the name
    writer = GGUFWriter(partial, arch)
    writer.add_name(checkpoint.resolve().name)
    writer.add_file_type(file_type(quant))
    writer.add_quantization_version(2)  # GGML_QNT_VERSION: the block layout of q8_0/q4_0
    add_hyperparameters(writer, cfg, arch)
    add_vocab(writer, vocab)
    writer.add_chat_template(chat_template)
    for tensor in gguf_tensors(model, arch):
        data = tensor.data.numpy()
        array, raw_type = packed(data, storage_type(tensor.name, data.shape, quant))
        writer.add_tensor(tensor.name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, out_file)
    return vocab


def tokenizer_folder(checkpoint: Path) -> Path:
    """Where a checkpoint's tokenizer is: a LoRA checkpoint may hold none and use its base's."""
    from ..tokenizer.base import META_FILENAME
    from ..train.checkpoint import ADAPTER_CONFIG

    has_own = any((checkpoint / name).is_file() for name in (META_FILENAME, "tokenizer.json", "vocab.json"))
    if not has_own and (checkpoint / ADAPTER_CONFIG).is_file():
        base = json.loads((checkpoint / ADAPTER_CONFIG).read_text())["base_model"]
        return tokenizer_folder(Path(base))
    return checkpoint


def _hf_bos_id(checkpoint: Path) -> int | None:
    from ..model.hf import is_hf_checkpoint, read_hf_config

    if not is_hf_checkpoint(checkpoint):
        return None
    bos = read_hf_config(checkpoint).get("bos_token_id")
    return bos if isinstance(bos, int) else None


def cached_gguf(checkpoint: str | Path, quant: str = "f16", cache_dir: str | Path | None = None) -> Path:
    """A GGUF file of `checkpoint`, written on first use and reused while the checkpoint's files are unchanged.

    The file is named by a hash of the checkpoint's files (path, size, modification time; a LoRA
    checkpoint's base included), the quantization and the exporter's format version. The cache is
    `cache_dir`, else $LMFORGE_GGUF_CACHE, else ~/.cache/lmforge/gguf.
    """
    checkpoint = Path(checkpoint).expanduser().resolve()
    folder = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "lmforge" / "gguf")
    target = folder / f"{checkpoint.name}-{checkpoint_fingerprint(checkpoint, quant)[:16]}-{quant}.gguf"
    if not target.is_file():
        write_gguf(checkpoint, target, quant)
    return target


def checkpoint_fingerprint(checkpoint: Path, quant: str) -> str:
    digest = hashlib.sha256(f"gguf-v{FORMAT_VERSION}:{quant}".encode())
    for folder in _source_folders(checkpoint):
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _source_folders(checkpoint: Path) -> list[Path]:
    from ..train.checkpoint import ADAPTER_CONFIG

    folders = [checkpoint]
    adapter = checkpoint / ADAPTER_CONFIG
    if adapter.is_file():
        folders += _source_folders(Path(json.loads(adapter.read_text())["base_model"]).resolve())
    return folders
