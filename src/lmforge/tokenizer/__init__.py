"""Tokenizers: turning text into token ids and back.

Four kinds share one interface (`Tokenizer`), chosen with a spec string:
"char" (one token per character), "bpe" (a byte-level BPE trained on your documents),
"gpt2" (GPT-2's vocabulary) or a path (a saved lmforge or Hugging Face tokenizer).
"""

from lmforge.tokenizer.base import EOT, Tokenizer
from lmforge.tokenizer.bpe import train_bpe
from lmforge.tokenizer.char import CharTokenizer
from lmforge.tokenizer.factory import build_tokenizer, load_tokenizer
from lmforge.tokenizer.gpt2 import GPT2Tokenizer
from lmforge.tokenizer.hf import HFTokenizer, load_hf_tokenizer

__all__ = [
    "EOT",
    "Tokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "load_hf_tokenizer",
    "train_bpe",
]
