"""Exported GGUF files run in llama.cpp itself (llama-cpp-python): same logits, same greedy text, same tokens.

Every kind of checkpoint the export takes: GPT-2, Llama and Qwen2 styles trained by lmforge (with its
BPE, and GPT-2-style also with GPT-2's own tokenizer), Hugging Face folders of each family (with
Qwen2's and Llama 3's split expressions), and a LoRA run (merged).

One llama.cpp detail shows in the GPT-2 numbers: its CPU GELU rounds the input to float16 and reads a
float16 table (ggml's GGML_GELU_FP16). The f32 GPT-2 file is therefore compared at 1e-4 with lmforge
computing GELU the same way, and more loosely with lmforge's exact GELU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.cli import export_cmd
from lmforge.data.templates import CHATML, PLAIN, jinja_chat_template, render, save_chat_template
from lmforge.export.gguf_writer import write_gguf
from lmforge.export.llamacpp_eval import llamacpp_greedy, llamacpp_logits, load_llama
from lmforge.model import layers
from lmforge.tokenizer import GPT2Tokenizer, load_tokenizer
from lmforge.tokenizer.hf import exportable_backend
from lmforge.train.checkpoint import load_model_from_checkpoint, save_checkpoint
from tests.export.gguf_models import (TOKENIZER_TEXTS, bpe_tokenizer, hf_checkpoint, hf_split_tokenizer,
                                      lmforge_checkpoint)
from tests.export.test_gguf_file import run_export

llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")

PROMPT = "ROMEO: What light through yonder window breaks? Café, naïve — 👍 def f(x): return x"
RELATIVE = {"f16": 5e-3, "bf16": 3e-2, "q8_0": 0.1, "q4_0": 0.1}
"""Largest logit difference allowed vs lmforge, relative to the largest logit, on these random tiny models
(measured maxima: f16 2.8e-3, bf16 1.9e-2, q8_0 5.5e-2; llama.cpp also rounds the activations to 8 bits
in q8_0/q4_0 products). q4_0 is compared with lmforge running on the same 4-bit-rounded weights."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> checkpoint folder; built once for the module (a few seconds)."""
    from lmforge.export.gguf_tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT

    root = tmp_path_factory.mktemp("gguf")
    bpe = bpe_tokenizer()
    found = {style: lmforge_checkpoint(root / style, style, bpe) for style in ("gpt2", "llama", "qwen2")}
    found["gpt2+gpt2-tokenizer"] = lmforge_checkpoint(root / "gpt2tok", "gpt2", GPT2Tokenizer(), n_embd=32)
    found["llama untied+rope llama3"] = lmforge_checkpoint(
        root / "llama3", "llama", bpe, tie_embeddings=False, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
    found["hf gpt2"] = hf_checkpoint(root / "hf-gpt2", "gpt2", exportable_backend(bpe))
    found["hf llama"] = hf_checkpoint(root / "hf-llama", "llama", hf_split_tokenizer(LLAMA3_SPLIT, ignore_merges=True))
    found["hf qwen2"] = hf_checkpoint(root / "hf-qwen2", "qwen2", hf_split_tokenizer(QWEN2_SPLIT))
    found["lora llama (merged)"] = lora_checkpoint(root / "lora", found["llama"])
    return found


def lora_checkpoint(run_dir, base):
    from lmforge.adapt.lora import LoRAConfig, apply_lora
    from lmforge.train.model_files import LoRAFiles

    model = load_model_from_checkpoint(base)
    lora = LoRAConfig(r=4, alpha=8.0, dropout=0.0, targets=("q", "k", "v", "o", "down"))
    apply_lora(model, lora.targets, r=lora.r, alpha=lora.alpha, dropout=lora.dropout)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    return save_checkpoint(run_dir, "adapted", model, load_tokenizer(base), {}, files=LoRAFiles(base, lora))


CASES = ["gpt2", "llama", "qwen2", "gpt2+gpt2-tokenizer", "llama untied+rope llama3", "hf gpt2", "hf llama",
         "hf qwen2", "lora llama (merged)"]


def ggml_gelu_forward(self, x):
    """GeluMLP as ggml's CPU computes it: GELU's input and output rounded to float16 (GGML_GELU_FP16)."""
    h = self.up(x)
    y = F.gelu(h.half().float(), approximate="tanh").half().float()
    y = torch.where(h <= -10, torch.zeros_like(h), torch.where(h >= 10, h, y))
    return self.down(y)


def lmforge_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


def lmforge_greedy(model, prompt: list[int], n_tokens: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n_tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def relative_error(theirs: np.ndarray, ours: np.ndarray) -> float:
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


@pytest.fixture(scope="module")
def f32_files(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("f32")
    files = {}
    for i, (name, ckpt) in enumerate(checkpoints.items()):
        files[name] = root / f"{i}.gguf"
        write_gguf(ckpt, files[name], "f32")
    return files


@pytest.mark.parametrize("case", CASES)
def test_f32_file_gives_lmforge_logits_and_greedy_text_in_llama_cpp(case, checkpoints, f32_files, monkeypatch):
    ckpt = checkpoints[case]
    model, tokenizer = load_model_from_checkpoint(ckpt).eval(), load_tokenizer(_tok_dir(ckpt))
    exact = lmforge_logits(model, tokenizer.encode(PROMPT))
    if model.config.mlp == "gelu":
        monkeypatch.setattr(layers.GeluMLP, "forward", ggml_gelu_forward)
    ids = tokenizer.encode(PROMPT)
    llm = load_llama(f32_files[case], n_ctx=model.config.block_size)
    try:
        theirs = llamacpp_logits(llm, ids)
        # Measured: 2e-6 (llama, qwen2), 1.1e-4 (gpt2: float16 rounding right at table-entry boundaries).
        assert relative_error(theirs, lmforge_logits(model, ids)) < (2e-4 if model.config.mlp == "gelu" else 1e-4)
        assert relative_error(theirs, exact) < (1e-3 if model.config.mlp == "gelu" else 1e-4)
        greedy = llamacpp_greedy(llm, ids, 64)
        assert greedy == lmforge_greedy(model, ids, 64)
        assert llm.detokenize(greedy).decode("utf-8", errors="replace") == tokenizer.decode(greedy)
    finally:
        llm.close()


def _tok_dir(ckpt):
    from lmforge.export.gguf_writer import tokenizer_folder

    return tokenizer_folder(ckpt)


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("case", ["gpt2", "llama", "qwen2"])
def test_quantized_files_stay_within_their_tolerance(case, quant, checkpoints, tmp_path):
    ckpt = checkpoints[case]
    model, tokenizer = load_model_from_checkpoint(ckpt).eval(), load_tokenizer(ckpt)
    ids = tokenizer.encode(PROMPT)
    if quant == "q4_0":
        round_like_the_file(model, quant)
    write_gguf(ckpt, tmp_path / "q.gguf", quant)
    llm = load_llama(tmp_path / "q.gguf", n_ctx=model.config.block_size)
    try:
        error = relative_error(llamacpp_logits(llm, ids), lmforge_logits(model, ids))
    finally:
        llm.close()
    assert error < RELATIVE[quant]


def round_like_the_file(model, quant: str) -> None:
    """Give `model` the weights the file holds: each matrix quantized and dequantized as the export does it."""
    from gguf import quants

    from lmforge.export.gguf_quant import gguf_type, storage_type

    gguf_names = {"tok_emb.weight": "token_embd.weight", "lm_head.weight": "output.weight"}
    with torch.no_grad():
        for name, p in model.named_parameters():
            kind = storage_type(gguf_names.get(name, name), tuple(p.shape), quant)
            if kind in ("q8_0", "q4_0"):
                packed = quants.quantize(p.numpy(), gguf_type(kind))
                p.copy_(torch.from_numpy(quants.dequantize(packed, gguf_type(kind))))


@pytest.mark.parametrize("case", ["gpt2", "gpt2+gpt2-tokenizer", "hf llama", "hf qwen2"])
def test_llama_cpp_tokenizes_every_text_as_lmforge(case, checkpoints, f32_files):
    tokenizer = load_tokenizer(_tok_dir(checkpoints[case]))
    reads_specials = exportable_backend(tokenizer)  # what HF tokenizers do with special-token strings
    llm = llama_cpp.Llama(model_path=str(f32_files[case]), vocab_only=True, verbose=False)
    try:
        for text in TOKENIZER_TEXTS + [render([{"role": "user", "content": "¿Qué tal? 🙂"}], CHATML)]:
            data = text.encode("utf-8")
            assert llm.tokenize(data, add_bos=False, special=False) == tokenizer.encode(text), text
            assert llm.tokenize(data, add_bos=True, special=False) == tokenizer.encode(text), text  # no BOS added
            expected = reads_specials.encode(text, add_special_tokens=False).ids
            assert llm.tokenize(data, add_bos=False, special=True) == expected, text
            assert llm.detokenize(tokenizer.encode(text)).decode("utf-8") == text
    finally:
        llm.close()


def test_chat_template_in_the_file_renders_like_lmforge(checkpoints, tmp_path):
    import jinja2
    from gguf import GGUFReader

    ckpt = checkpoints["llama"]
    save_chat_template(ckpt, PLAIN)
    try:
        write_gguf(ckpt, tmp_path / "chat.gguf", "q8_0")
    finally:
        (ckpt / "chat_template.json").unlink()
    source = GGUFReader(tmp_path / "chat.gguf").fields["tokenizer.chat_template"].contents()
    assert source == jinja_chat_template(PLAIN, eot_token="<|endoftext|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = jinja2.Environment().from_string(source).render(messages=messages, add_generation_prompt=True)
    assert rendered == render(messages, PLAIN)


def test_export_reports_the_perplexity_change_measured_by_llama_cpp(checkpoints, tmp_path, capsys):
    text = tmp_path / "valid.txt"
    text.write_text("\n".join(TOKENIZER_TEXTS) * 4, encoding="utf-8")
    out = tmp_path / "m.gguf"
    assert run_export(checkpoints["qwen2"], "--format", "gguf", "--quant", "q8_0", "--out", out,
                      "--eval-text", text) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"perplexity in llama.cpp on \d+ tokens of {re.escape(str(text))}: f32 \d+\.\d+ nats", printed)
    delta = float(re.search(r"q8_0: ([+-]\d+\.\d+) nats per token vs f32", printed).group(1))
    assert abs(delta) < 0.05


@pytest.mark.parametrize("amx", [True, False])
def test_on_an_amx_cpu_llama_cpp_keeps_the_weights_in_its_plain_buffers(amx, f32_files, monkeypatch):
    """llama.cpp's AMX matmuls segfaulted on every q8_0/q4_0 file of the test above (2-core Xeon with AMX,
    llama-cpp-python 0.3.36); its plain CPU buffers compute them correctly. Other CPUs keep the defaults."""
    from lmforge.export import llamacpp_eval

    monkeypatch.setattr(llamacpp_eval, "cpu_has_amx", lambda: amx)
    llm = load_llama(f32_files["llama"], n_ctx=16)
    try:
        assert llm.model_params.use_extra_bufts is (not amx)
    finally:
        llm.close()
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts  # the library's default is back
