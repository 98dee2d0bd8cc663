"""`lmforge export --format gguf`: the GGUF file, the Ollama Modelfile beside it, and the quality report."""

from __future__ import annotations

from pathlib import Path

from .gguf_quant import BITS_PER_WEIGHT


def export_gguf(checkpoint: str | Path, out_file: str | Path, quant: str = "f16", force: bool = False,
                eval_text: str | None = None, eval_text_name: str = "the built-in sample text") -> list[str]:
    """Write the GGUF file and its Modelfile; return the lines to show the user."""
    from ..data.templates import load_chat_template
    from ..train.checkpoint import read_model_config
    from .gguf_writer import write_gguf
    from .llamacpp_eval import SAMPLE_TEXT, quantization_report
    from .modelfile import write_modelfile

    checkpoint, out_file = Path(checkpoint).expanduser(), Path(out_file).expanduser()
    if out_file.suffix != ".gguf":
        raise ValueError(f"--out {out_file}: name the file *.gguf")
    if out_file.exists() and not force:
        raise ValueError(f"--out {out_file} exists; choose another name or pass --force")
    vocab = write_gguf(checkpoint, out_file, quant)
    eot_token = vocab.tokens[vocab.eos_id]
    modelfile = write_modelfile(out_file.with_suffix(".Modelfile"), out_file.name, load_chat_template(checkpoint),
                                eot_token, read_model_config(checkpoint).block_size)
    size_mb = out_file.stat().st_size / 1e6
    lines = [f"exported {checkpoint} to {out_file} ({quant}, {BITS_PER_WEIGHT[quant]:g} bits per weight in "
             f"the matrices, {size_mb:.2f} MB)",
             f"Ollama: ollama create NAME -f {modelfile}   llama.cpp: llama-cli -m {out_file}",
             *[f"note: {note}" for note in vocab.notes]]
    text = SAMPLE_TEXT if eval_text is None else eval_text
    return lines + quantization_report(checkpoint, out_file, quant, text, eval_text_name)

