"""The llama.cpp backend of lmforge's own commands: `generate|chat|serve|eval CKPT --backend llamacpp`.

The checkpoint is exported to GGUF once (cached by content, gguf_writer.cached_gguf) and llama.cpp,
through llama-cpp-python, computes the logits with its own kernels and KV cache. Everything else
stays lmforge's, so the two backends behave alike:
* the tokenizer: the GGUF file carries the same vocabulary and the export tests check that llama.cpp
  tokenizes every text as lmforge does, so token ids go to llama.cpp directly;
* the sampler (generate.sampling): same settings, and a seed gives the same draws for the same logits;
* stop strings, streaming, chat templates and the OpenAI server (generate.engine.TextEngine);
* a full context slides as in the PyTorch engine: the last block_size // 2 tokens are read again
  from position 0, so greedy text matches the PyTorch engine's past the window too.

One sequence at a time: llama-cpp-python's Llama object holds the KV cache of one sequence, so this
engine's max_batch_size is 1 and the server runs concurrent requests one after another (the PyTorch
engine batches them).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..generate.engine import TextEngine, kept_after_slide
from ..generate.params import SamplingParams
from ..generate.sampling import sample_next
from ..tokenizer.base import Tokenizer
from .llamacpp_eval import llamacpp_logits, llamacpp_missing, load_llama

DEFAULT_QUANT = "q8_0"  # 8 bits a weight: about 4x less to read per token than fp32, logits within ~1% here


def gguf_for(checkpoint: str | Path, quant: str) -> Path:
    """The cached GGUF file of a checkpoint (written on first use), after checking llama.cpp is importable."""
    from .gguf_writer import cached_gguf

    reason = llamacpp_missing()
    if reason:
        raise ValueError(f"--backend llamacpp: {reason}")
    return cached_gguf(checkpoint, quant)


class LlamaCppEngine(TextEngine):
    """lmforge's text engine with llama.cpp computing the next-token logits of one sequence at a time."""

    max_batch_size = 1

    def __init__(self, gguf_file: str | Path, tokenizer: Tokenizer, context_size: int, threads: int | None = None):
        self.tokenizer, self.context_size = tokenizer, context_size
        self.gguf_file = Path(gguf_file)
        # llama.cpp's usual settings (f16 KV cache): what its own users get. Only the last position's
        # logits are kept (logits_all=False); they are read straight from the context (last_logits).
        self.llm = load_llama(gguf_file, n_ctx=context_size, logits_all=False, exact=False,
                              threads=threads or torch.get_num_threads())

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, quant: str = DEFAULT_QUANT,
                        threads: int | None = None) -> LlamaCppEngine:
        from ..tokenizer import load_tokenizer
        from ..train.checkpoint import read_model_config
        from .gguf_writer import tokenizer_folder

        gguf_file = gguf_for(checkpoint, quant)
        tokenizer = load_tokenizer(tokenizer_folder(Path(checkpoint)))
        return cls(gguf_file, tokenizer, read_model_config(checkpoint).block_size, threads)

    @property
    def scorer(self) -> LlamaCppScorer:
        """A second llama.cpp context that keeps every position's logits (for log-probabilities), made on
        first use: generation itself keeps only the last position's."""
        if getattr(self, "_scorer", None) is None:
            self._scorer = LlamaCppScorer(self.gguf_file, self.context_size, self.llm.n_threads)
        return self._scorer

    def describe(self) -> str:
        return f"llama.cpp backend: {self.gguf_file} ({self.llm.n_threads} threads)"

    def token_steps(self, prompts: list[list[int]], params: list[SamplingParams],
                    generators: list[torch.Generator | None]) -> Iterator[list[int]]:
        if len(prompts) != 1:
            raise ValueError(f"the llama.cpp backend runs one sequence at a time, got {len(prompts)}")
        return self._steps(prompts[0], params[0], generators[0])

    def _steps(self, prompt: list[int], params: SamplingParams, generator: torch.Generator | None) -> Iterator[list[int]]:
        """One-row lists of the next token, max_new_tokens times (the shape generate_tokens yields)."""
        if not prompt:
            raise ValueError("every prompt needs at least one token")
        tokens = list(prompt)  # every token so far: the repetition penalty looks at all of them
        self._read_again(tokens)
        for step in range(params.max_new_tokens):
            history = torch.tensor(tokens) if params.repetition_penalty != 1.0 else None
            next_id = int(sample_next(self.last_logits(), params, generator, history))
            yield [next_id]
            if step == params.max_new_tokens - 1:
                return
            tokens.append(next_id)
            if self.llm.n_tokens >= self.context_size:  # full: slide, as generate_tokens does
                self._read_again(tokens[-kept_after_slide(self.context_size):])
            else:
                self.llm.eval([next_id])

    def _read_again(self, tokens: list[int]) -> None:
        """Empty the KV cache and read `tokens` from position 0."""
        self.llm.reset()
        self.llm.eval(tokens)

    def last_logits(self) -> torch.Tensor:
        """Next-token logits (V,) after the last token read, as float32 (a copy: llama.cpp reuses its buffer)."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        vocab = self.llm.n_vocab()
        return torch.from_numpy(np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                                      shape=(vocab,)).copy())

    def close(self) -> None:
        self.llm.close()
        if getattr(self, "_scorer", None) is not None:
            self._scorer.llm.close()


class LlamaCppScorer(torch.nn.Module):
    """A GGUF file in llama.cpp as a module that maps token ids (B, T) to logits (B, T, V): what
    eval.perplexity.evaluate scores. Each row is read from an empty context, as a window is in lmforge."""

    def __init__(self, gguf_file: str | Path, context_size: int, threads: int | None = None):
        super().__init__()
        self.context_size = context_size
        # Exact settings (float32 KV cache, no flash attention): the scores compare with the PyTorch engine's.
        self.llm = load_llama(gguf_file, n_ctx=context_size, logits_all=True, exact=True,
                              threads=threads or torch.get_num_threads())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.size(1) > self.context_size:
            raise ValueError(f"windows of {ids.size(1)} tokens do not fit llama.cpp's context of {self.context_size}")
        return torch.stack([torch.from_numpy(llamacpp_logits(self.llm, row)) for row in ids.tolist()])
