"""Tiny checkpoints of every kind the GGUF export handles, built from configs (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import train_bpe
from lmforge.train.checkpoint import save_checkpoint
from tests.testdata import SHAKESPEARE

GPT2_STYLE = dict(norm="layernorm", pos="learned", mlp="gelu", bias=True)
LLAMA_STYLE = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, n_kv_head=2)
QWEN2_STYLE = dict(LLAMA_STYLE, qkv_bias=True)
STYLES = {"gpt2": GPT2_STYLE, "llama": LLAMA_STYLE, "qwen2": QWEN2_STYLE}

# Real text of every kind a tokenizer can get wrong: prose with accents, code, emoji, odd spacing,
# and special-token strings written in the text.
TOKENIZER_TEXTS = [
    "Café Zürich: naïve façade, señor Ørsted, Ελληνικά, русский, 日本語のテキスト, 한국어.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != 0:\n        print(f\"{x=}\")\n",
    "Emoji: 👍🏽 🇫🇷 👨‍👩‍👧 ✨ — and “quotes” ‘here’… 1234567 3.14159",
    "It's   spaced\u00a0out \r\n\r\n  trailing   ",
    "Special strings in text: <|endoftext|> and <|im_start|>user\nhi<|im_end|>",
    "  leading spaces, 'll 've 're 's 'd 'm, I'M SHOUTING, don't",
]


def training_text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")[:60_000] + "\n".join(TOKENIZER_TEXTS)


def random_gpt(cfg: ModelConfig, seed: int = 0, std: float = 0.15) -> GPT:
    """A model whose weights are not at their (near-zero) init, so every layer matters to the logits."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, std)
    return model.eval()


def lmforge_checkpoint(run_dir: Path, style: str, tokenizer, n_embd: int = 64, **extra) -> Path:
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=n_embd, block_size=256,
                      **{**STYLES[style], **extra})
    return save_checkpoint(run_dir, "best", random_gpt(cfg), tokenizer, meta={"step": 1})


def bpe_tokenizer(vocab_size: int = 512):
    return train_bpe([training_text()], vocab_size)


def hf_split_tokenizer(split_regex: str, vocab_size: int = 512, ignore_merges: bool = False):
    """A byte-level BPE with a Qwen2- or Llama-3-style split expression, as their tokenizer.json files have."""
    import tokenizers
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([training_text()], trainer=trainer)
    if ignore_merges:
        spec = json.loads(backend.to_str())
        spec["model"]["ignore_merges"] = True
        backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
    return backend


def hf_checkpoint(folder: Path, family: str, backend) -> Path:
    """A Hugging Face folder as save_pretrained writes it: a tiny random model and a tokenizer.json."""
    import transformers

    vocab = backend.get_vocab_size()
    eos = backend.token_to_id("<|endoftext|>")
    common = dict(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos)
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
        model_class = transformers.GPT2LMHeadModel
    elif family == "llama":
        config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                          rms_norm_eps=1e-6, tie_word_embeddings=False, **common)
        model_class = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                          rms_norm_eps=1e-6, tie_word_embeddings=True, **common)
        model_class = transformers.Qwen2ForCausalLM
    torch.manual_seed(1)
    model = model_class(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_gain = ("norm" in name or "ln_" in name) and name.endswith("weight")
            p.normal_(1.0 if is_norm_gain else 0.0, 0.15)
    model.save_pretrained(folder)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder
