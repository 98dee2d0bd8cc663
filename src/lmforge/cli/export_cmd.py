"""The `lmforge export` verb: write a checkpoint as a Hugging Face model folder.

    lmforge export CKPT --format hf --out DIR [--dtype float32|bfloat16|float16] [--force]
    lmforge export LORA_CKPT --format peft --out DIR     (adapter_config.json + adapter_model.safetensors)
    lmforge export CKPT --format gguf [--quant f16] [--out FILE.gguf]   (for llama.cpp, Ollama, LM Studio)

DIR then holds config.json, generation_config.json and model.safetensors (see model/hf.py) plus
tokenizer.json and tokenizer_config.json (see tokenizer/hf.py), so that
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it, and
so do lmforge's own commands (`lmforge generate DIR ...`). A chat_template.json stored with the
checkpoint is copied along, so `lmforge chat DIR` keeps answering in the format it was tuned on, and
written as the tokenizer's Jinja `chat_template` too, for transformers' `apply_chat_template`.

--format gguf writes one GGUF file (see export/gguf_writer.py) and an Ollama Modelfile beside it,
then, when llama-cpp-python is installed, reports how much the quantization changes the perplexity
measured by llama.cpp on the file (docs/gguf.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")
"""Tokenizer files of a Hugging Face folder; exporting such a folder copies them unchanged."""

CHAT_TEMPLATE_FILE = "chat_template.json"


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")
    if args.format == "gguf":
        return export_gguf_cli(args)
    if args.out is None:
        raise ValueError(f"--format {args.format} needs --out DIR")
    if args.format == "peft":
        out_dir = export_peft(args.checkpoint, args.out, force=args.force)
    else:
        out_dir = export_hf(args.checkpoint, args.out, dtype=args.dtype, force=args.force)
    files = ", ".join(sorted(path.name for path in out_dir.iterdir()))
    print(f"exported {args.checkpoint} to {out_dir} ({files})")
    return 0


def export_gguf_cli(args: argparse.Namespace) -> int:
    from ..export.gguf_export import export_gguf

    checkpoint = Path(args.checkpoint).expanduser()
    out_file = Path(args.out).expanduser() if args.out else default_gguf_name(checkpoint, args.quant)
    text_name = "the built-in sample text (pass --eval-text FILE for your own validation text)"
    text = None
    if args.eval_text:
        text, text_name = Path(args.eval_text).read_text(encoding="utf-8"), args.eval_text
    for line in export_gguf(checkpoint, out_file, args.quant, force=args.force, eval_text=text,
                            eval_text_name=text_name):
        print(line)
    return 0


def default_gguf_name(checkpoint: Path, quant: str) -> Path:
    """runs/demo/best -> ./demo-best-f16.gguf (a checkpoint folder's own name is often just "best")."""
    folder = checkpoint.resolve()
    name = f"{folder.parent.name}-{folder.name}" if folder.parent.name else folder.name
    return Path(f"{name}-{quant}.gguf")


def export_hf(checkpoint: str | Path, out_dir: str | Path, dtype: str = "float32", force: bool = False) -> Path:
    """Write the model, tokenizer and chat template of `checkpoint` as a Hugging Face folder `out_dir`."""
    import torch

    from ..model.hf import family_of, is_hf_checkpoint, save_hf_model
    from ..train.checkpoint import load_model_from_checkpoint

    checkpoint, out_dir = Path(checkpoint).expanduser(), Path(out_dir).expanduser()
    _check_destination(checkpoint, out_dir, force)
    model = load_model_from_checkpoint(checkpoint)
    family_of(model.config)  # fails before anything is written when no HF family fits
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_hf_checkpoint(checkpoint):
        bos, eos = _copy_hf_tokenizer(checkpoint, out_dir)
    else:
        bos = eos = _write_tokenizer(checkpoint, out_dir, model.config.block_size)
    save_hf_model(model.to(getattr(torch, dtype)), out_dir, bos_token_id=bos, eos_token_id=eos)
    if (checkpoint / CHAT_TEMPLATE_FILE).is_file():
        shutil.copy2(checkpoint / CHAT_TEMPLATE_FILE, out_dir / CHAT_TEMPLATE_FILE)
        _write_hf_chat_template(out_dir)
    return out_dir


def _write_hf_chat_template(out_dir: Path) -> None:
    """Give the folder's tokenizer lmforge's chat template as Jinja, for transformers' apply_chat_template.

    It replaces a template the tokenizer files brought along (a fine-tuned model answers in the format
    it was tuned on). Written both into tokenizer_config.json and as chat_template.jinja, the two places
    transformers versions read it from.
    """
    import json

    from ..data.templates import jinja_chat_template, load_chat_template

    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    eos = config.get("eos_token") or ""
    eos = eos.get("content", "") if isinstance(eos, dict) else eos  # HF writes special tokens either way
    jinja = jinja_chat_template(load_chat_template(out_dir), eot_token=eos)
    config["chat_template"] = jinja
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(jinja + "\n", encoding="utf-8")


def export_peft(checkpoint: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write a LoRA checkpoint's adapters in PEFT format, next to (or pointing at) an HF copy of its base.

    The base named in the checkpoint's adapter_config.json is used as it is when it is already a
    Hugging Face folder; an lmforge base is exported to OUT/base first. Then
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), OUT)` rebuilds the model.
    """
    import json
    import warnings

    from ..adapt.peft_format import save_peft_adapter
    from ..model.hf import is_hf_checkpoint
    from ..train.checkpoint import ADAPTER_CONFIG, load_lora_checkpoint

    checkpoint, out_dir = Path(checkpoint).expanduser(), Path(out_dir).expanduser()
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        raise ValueError(f"--format peft: {checkpoint} is not a LoRA checkpoint (no {ADAPTER_CONFIG}); "
                         "use --format hf for full weights")
    _check_destination(checkpoint, out_dir, force)
    info = json.loads((checkpoint / ADAPTER_CONFIG).read_text())
    if info.get("quantized"):
        warnings.warn("these adapters were trained on a 4-bit NF4 base; on the full-precision base PEFT loads "
                      "they give slightly different logits (export --format hf merges into the dequantized "
                      "base instead, which is exact)", stacklevel=2)
    model = load_lora_checkpoint(checkpoint, merge=False)
    base = Path(info["base_model"])
    if not is_hf_checkpoint(base):
        base = export_hf(base, out_dir / "base", force=force).resolve()
    return save_peft_adapter(model, out_dir, base)


def _check_destination(checkpoint: Path, out_dir: Path, force: bool) -> None:
    if out_dir.exists() and out_dir.resolve() == checkpoint.resolve():
        raise ValueError("--out must be a new folder, not the checkpoint itself")
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not force):
        # Files left from an earlier export (e.g. weight shards) would mix with the new ones.
        raise ValueError(f"--out {out_dir} exists and is not an empty folder; choose another or pass --force")


def _write_tokenizer(checkpoint: Path, out_dir: Path, block_size: int) -> int:
    """Write the lmforge tokenizer of `checkpoint` as HF files; return its end-of-text id."""
    from ..tokenizer import load_tokenizer
    from ..tokenizer.hf import save_hf_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    save_hf_tokenizer(tokenizer, out_dir, model_max_length=block_size)
    return tokenizer.eot_id


def _copy_hf_tokenizer(checkpoint: Path, out_dir: Path) -> tuple[int | None, int | None]:
    """Copy an HF folder's tokenizer files as they are; return its configured bos and eos ids."""
    from ..model.hf import read_hf_config

    for name in HF_TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out_dir / name)
    config = read_hf_config(checkpoint)
    return config.get("bos_token_id"), config.get("eos_token_id")


def register(sub) -> None:
    """Add the `export` verb to the `lmforge` sub-command parser."""
    from ..export.gguf_quant import QUANTS

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model folder or a GGUF file")
    p.add_argument("checkpoint", help="an lmforge checkpoint folder (e.g. runs/demo/best) or a Hugging Face folder")
    p.add_argument("--format", choices=["hf", "peft", "gguf"], default="hf",
                   help="hf: config.json + model.safetensors + tokenizer.json, for transformers (default; LoRA "
                        "checkpoints are merged); peft: a LoRA checkpoint's adapters for the peft library; "
                        "gguf: one file for llama.cpp, Ollama and LM Studio, plus an Ollama Modelfile")
    p.add_argument("--out", help="hf/peft: the folder to write (must be new or empty); gguf: the file to write "
                                 "(default: ./RUN-CHECKPOINT-QUANT.gguf)")
    p.add_argument("--quant", choices=QUANTS, default="f16",
                   help="gguf: storage of the weight matrices: f32 (exact), f16/bf16 (2 bytes), q8_0 (~1 byte, "
                        "near-lossless), q4_0 (~0.56 bytes, visible loss); default f16")
    p.add_argument("--eval-text", metavar="FILE",
                   help="gguf: a validation text for the perplexity change the quantization causes, measured in "
                        "llama.cpp (default: a short built-in sample)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="precision of the written weights (default: float32; bfloat16 halves the size)")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that already holds files (gguf: replace an existing file)")
    p.set_defaults(func=cmd_export)
