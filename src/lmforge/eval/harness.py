"""lmforge models inside EleutherAI's lm-evaluation-harness (`lm-eval`, an optional extra).

The harness asks a model three kinds of question, and `LMForgeLM` answers each with lmforge's own parts:
* loglikelihood(context, continuation): log P(continuation | context), summed over the continuation's
  tokens, and whether every one of them was the most likely token (greedy). Multiple-choice tasks
  (HellaSwag, ARC, MMLU...) score every choice this way and pick the likeliest. The harness splits
  the text at token boundaries itself (context + continuation encoded whole, the context's tokens
  cut off; trailing spaces of the context moved to the continuation) and hands over token ids;
  they are scored in batches, longest first, padded on the right (a causal model never looks right,
  so padding changes nothing before it).
* loglikelihood_rolling(text): the log-likelihood of a whole text (perplexity tasks: wikitext), in
  windows of the model's context, each token predicted once.
* generate_until(context, until=[...]): free text, through the engine (KV cache, stop strings).

The engine is any generate.engine.TextEngine: the PyTorch Engine (its model scores the batches) or
the llama.cpp backend (its GGUF file in llama.cpp scores them; TextEngine.scorer), so `lmforge eval --tasks` works on
lmforge checkpoints, Hugging Face folders and, with --backend llamacpp, GGUF exports alike.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..generate.engine import TextEngine, evaluation_mode
from ..generate.params import SamplingParams

DEFAULT_MAX_GEN_TOKS = 256


class LMForgeLM(TemplateLM):
    """An lm-eval model over an lmforge engine: its scorer (token ids (B, T) -> logits (B, T, V)) scores the
    batches, the engine generates."""

    def __init__(self, engine: TextEngine, batch_size: int = 8):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.engine, self.scorer = engine, engine.scorer
        self.tokenizer_ = engine.tokenizer
        self.batch_size_ = batch_size
        self.truncated = 0  # requests whose context had to be cut to fit the model's window
        self.truncated_continuations = 0  # ... and whose continuation too: only its last tokens were scored

    # ---- what TemplateLM needs --------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer_.eot_id

    @property
    def max_length(self) -> int:
        return self.engine.context_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer_.encode(string)  # lmforge's tokenizers add no BOS/EOS of their own

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tokenizer_.decode(tokens)

    # ---- scoring ----------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, greedy?) of each request's continuation tokens after its context tokens."""
        pairs = [(context, continuation) for _, context, continuation in requests]
        return self.score_pairs(pairs)

    def score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Score (context ids, continuation ids) pairs in batches, longest first; results in the given order."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        for first in range(0, len(order), self.batch_size_):
            batch = order[first:first + self.batch_size_]
            for i, result in zip(batch, self._score_batch([pairs[i] for i in batch])):
                results[i] = result
        return results

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        inputs, lengths = [], []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("a continuation to score needs at least one token")
            whole = (context + continuation)[-(self.max_length + 1):]  # the window the model can read, +1 target
            if len(whole) < len(context) + len(continuation):
                self.truncated += 1
            scored = min(len(continuation), len(whole) - 1)  # a continuation longer than the window loses its start
            if scored < len(continuation):
                self.truncated_continuations += 1
            inputs.append(whole[:-1])  # the model reads all but the last token; position t predicts whole[t+1]
            lengths.append(scored)
        width = max(map(len, inputs))
        ids = torch.zeros(len(inputs), width, dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, :len(tokens)] = torch.tensor(tokens)
        with torch.no_grad(), evaluation_mode(self.scorer):  # no dropout, whatever mode the model was in
            logprobs = F.log_softmax(self.scorer(ids.to(self.engine.sampling_device)).float(), dim=-1).cpu()
        results = []
        for row, ((_, continuation), tokens, n) in enumerate(zip(pairs, inputs, lengths)):
            scored = logprobs[row, len(tokens) - n:len(tokens)]  # the n positions that predict the continuation
            target = torch.tensor(continuation[-n:])
            total = float(scored.gather(-1, target[:, None]).sum())
            results.append((total, bool((scored.argmax(-1) == target).all())))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts: windows of the context, each token predicted once (the first
        after the end-of-text token, as a document starts)."""
        results = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1)]
            results.append(sum(score for score, _ in self.score_pairs(windows)))
        return results

    # ---- generation -------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        answers = []
        for request in requests:
            context, gen_kwargs = request.args
            params = self._sampling_params(dict(gen_kwargs))
            ids = self.tok_encode(context) or [self.eot_token_id]
            room = max(1, self.max_length - params.max_new_tokens)  # as the harness's HF model: leave room
            if len(ids) > room:
                self.truncated += 1
                ids = ids[-room:]
            answers.append(self.engine.generate([ids], params)[0].text)
        return answers

    def _sampling_params(self, gen_kwargs: dict) -> SamplingParams:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        do_sample = gen_kwargs.pop("do_sample", False)
        temperature = float(gen_kwargs.pop("temperature", 0.0)) if do_sample else 0.0
        params = SamplingParams(max_new_tokens=int(gen_kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                                temperature=temperature, top_p=float(gen_kwargs.pop("top_p", 1.0) or 1.0),
                                top_k=int(gen_kwargs.pop("top_k", 0) or 0), seed=1234 if do_sample else None,
                                stop=[s for s in until if s])
        if gen_kwargs:
            warnings.warn(f"generation settings lmforge does not use: {', '.join(sorted(gen_kwargs))}", stacklevel=3)
        params.validate()
        return params
