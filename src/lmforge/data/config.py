"""DataConfig: where the training text comes from and how it becomes tokens."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """The corpus and its tokenizer."""

    path: list[str] | None = field(default=None, metadata={
        "help": "files/folders of text, or a prepared data folder; null = built-in demo corpus (the Python "
                "source of the standard library and PyTorch)"})
    tokenizer: str = field(default="bpe", metadata={
        "help": "char | bpe (trained on the corpus) | gpt2 | PATH to a tokenizer folder or tokenizer.json"})
    vocab_size: int = field(default=4096, metadata={"help": "vocabulary size when training a bpe tokenizer"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of documents held out for validation"})
    seed: int = field(default=1337, metadata={
        "help": "seed of the train/validation split (separate from train.seed, so every run validates on the same text)"})
    cache_dir: str = field(default="~/.cache/lmforge/prepared", metadata={
        "help": "where raw paths are prepared into token shards (reused while the files are unchanged)"})
    default_corpus_bytes: int = field(default=64_000_000, metadata={
        "help": "size cap of the built-in demo corpus (64 MB takes all of the standard library's and PyTorch's "
                "Python source but tests: about 46 MB with Python 3.11 and torch 2.13)"})

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size: must be at least 257 (256 bytes + end-of-text), got {self.vocab_size}")
