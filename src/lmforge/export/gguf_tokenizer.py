"""The tokenizer as GGUF metadata, so that llama.cpp turns every text into the ids lmforge does.

llama.cpp re-implements a few tokenizer families itself; the file names one and lists its data:

    tokenizer.ggml.model    "gpt2": byte-level BPE (bytes mapped to printable characters, GPT-2 style)
    tokenizer.ggml.pre      how text is split into words before BPE: llama.cpp knows a fixed list of
                            regular expressions by name ("gpt-2", "qwen2", "llama-bpe", ...)
    tokenizer.ggml.tokens   every token's text, by id; token_type marks special (CONTROL) ones
    tokenizer.ggml.merges   the BPE merge list, in priority order

lmforge's "bpe" and "gpt2" tokenizers and Hugging Face byte-level BPEs with one of those split
expressions are exported. Two kinds are refused, each with its reason:

* lmforge's character tokenizer. llama.cpp has no character-level model: each of its tokenizers turns
  a character missing from the vocabulary into its UTF-8 bytes (or fails), where lmforge gives one
  <|unk|>, so some texts would get other ids and a different count of them.
* Hugging Face tokenizers of other kinds (SentencePiece/Unigram, WordPiece) or with a split expression
  llama.cpp does not know by name: writing them under a wrong name would tokenize some texts differently.

Special tokens: lmforge never adds a BOS or EOS when encoding, so add_bos/add_eos are false; its
end-of-text token is the EOS (what ends a generation) and also stands for BOS and padding, as in the
Hugging Face export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..tokenizer.base import Tokenizer

# Word-splitting expressions of Hugging Face tokenizer.json files, and llama.cpp's name for each.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
KNOWN_SPLITS = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}
GPT2_PRE = "gpt-2"  # ByteLevel's own split expression (use_regex=true)

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values


@dataclass
class GGUFVocab:
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int
    bos_id: int
    unk_id: int | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know (printed by the export)


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int, bos_id: int | None = None) -> GGUFVocab:
    """The tokenizer's GGUF description, padded with unused tokens to the model's `vocab_size` rows."""
    from ..tokenizer.hf import exportable_backend

    if tokenizer.kind == "char":
        raise ValueError(
            "--format gguf: the character tokenizer cannot be exported: llama.cpp has no character-level "
            "tokenizer, and its tokenizers turn a character missing from the vocabulary into its UTF-8 bytes "
            "where lmforge gives one <|unk|>, so texts would get other ids. Train with data.tokenizer=bpe "
            "(or gpt2) to export to GGUF; --format hf exports this checkpoint")
    spec = json.loads(exportable_backend(tokenizer).to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(f"--format gguf: only byte-level BPE tokenizers are exported, this one is a "
                         f"{model.get('type')} model{' with byte fallback' if model.get('byte_fallback') else ''}")
    vocab = _check_vocab(spec, pre_tokenizer_name(spec), tokenizer, vocab_size, bos_id)
    if (spec.get("normalizer") or {}).get("type") == "NFC":
        vocab.notes.append("the tokenizer normalizes text to Unicode NFC first and llama.cpp does not: texts "
                           "already in NFC (almost all) get the same ids")
    return vocab


def _check_vocab(spec: dict, pre: str, tokenizer: Tokenizer, vocab_size: int, bos_id: int | None) -> GGUFVocab:
    tokens: dict[int, str] = {token_id: text for text, token_id in spec["model"]["vocab"].items()}
    types = {token_id: NORMAL for token_id in tokens}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if max(tokens) >= vocab_size:
        raise ValueError(f"--format gguf: the tokenizer has ids up to {max(tokens)} but the model only "
                         f"{vocab_size} embedding rows")
    # Rows beyond the tokenizer (a vocab_size rounded up) become unused placeholder tokens.
    token_list = [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    type_list = [types.get(i, UNUSED) for i in range(vocab_size)]
    unk = spec["model"].get("unk_token")
    return GGUFVocab(pre=pre, tokens=token_list, token_types=type_list, merges=_merges(spec),
                     eos_id=tokenizer.eot_id, bos_id=tokenizer.eot_id if bos_id is None else bos_id,
                     unk_id=spec["model"]["vocab"].get(unk) if unk else None)


def _merges(spec: dict) -> list[str]:
    # tokenizer.json writes merges as "a b" (older) or ["a", "b"] (tokenizers >= 0.20); GGUF wants "a b".
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for how this tokenizer.json splits text into words; ValueError if it has none."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    splits = [step for step in steps if step.get("type") == "Split"]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space") or len(steps) != len(byte_level) + len(splits):
        raise ValueError(f"--format gguf: llama.cpp cannot reproduce this pre-tokenizer: {json.dumps(pre)}")
    if not splits and byte_level[0].get("use_regex", True):
        return GPT2_PRE
    if len(splits) == 1 and not byte_level[0].get("use_regex", True):
        pattern = splits[0].get("pattern", {}).get("Regex")
        if pattern in KNOWN_SPLITS and splits[0].get("behavior") == "Isolated" and not splits[0].get("invert"):
            return _with_merge_rule(KNOWN_SPLITS[pattern], spec)
    raise ValueError("--format gguf: llama.cpp knows no pre-tokenizer by name for this split expression "
                     f"({json.dumps(pre)}); texts would be split into other words")


def _with_merge_rule(pre: str, spec: dict) -> str:
    # llama.cpp's "llama-bpe" takes a word found whole in the vocabulary as it is, without merging
    # (Hugging Face's ignore_merges); the tokenizer must do the same or a few words would differ.
    if pre == "llama-bpe" and not spec["model"].get("ignore_merges"):
        raise ValueError("--format gguf: this tokenizer uses Llama 3's split expression without ignore_merges; "
                         "llama.cpp's llama-bpe always ignores merges for whole-word tokens")
    return pre


def add_vocab(writer, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.eos_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    writer.add_add_bos_token(False)  # lmforge's encode adds neither
    writer.add_add_eos_token(False)
