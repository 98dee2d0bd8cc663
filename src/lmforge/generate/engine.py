"""Autoregressive generation: feed the context, pick a token, append it, repeat.

`Engine` is the interface the CLI, chat and server use. This first version re-runs the model on the
whole (cropped) context every step; the KV-cached version keeps the same interface.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .params import Completion, SamplingParams
from .sampling import sample_next


@torch.no_grad()
def generate_ids(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, stop_ids: tuple[int, ...] = (),
                 generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (stops early at a token in stop_ids, which is not yielded)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block_size = model.config.block_size
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    try:
        for _ in range(max_new_tokens):
            logits = model(ids[:, -block_size:])[:, -1, :]  # only the last position predicts the next token
            next_id = sample_next(logits, temperature, top_k, top_p, generator)
            token = int(next_id.item())
            if token in stop_ids:
                return
            yield token
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    finally:
        model.train(was_training)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> str:
    """Generate a continuation of `prompt` (text in, text out); stops at end-of-text."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    return Engine(model, tokenizer).generate([prompt], params)[0].text


class Engine:
    """Text in, text out, for one model and its tokenizer."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt) if prompt else [self.tokenizer.eot_id]

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Pieces of generated text as they are produced (a piece may be empty while a character is incomplete)."""
        for piece, _ in self._stream_with_ids(prompt, params):
            yield piece

    def _stream_with_ids(self, prompt: str, params: SamplingParams) -> Iterator[tuple[str, list[int]]]:
        params.validate()
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        new_ids: list[int] = []
        emitted = ""
        for token in generate_ids(self.model, self._prompt_ids(prompt), params.max_new_tokens, params.temperature,
                                  params.top_k, params.top_p, stop_ids=(self.tokenizer.eot_id,),
                                  generator=generator):
            new_ids.append(token)
            text = self.tokenizer.decode(new_ids)  # decode the whole tail: one token can be half a character
            cut = _first_stop(text, params.stop)
            if cut is not None:
                yield text[len(emitted):cut], new_ids
                return
            yield text[len(emitted):], new_ids
            emitted = text

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        completions = []
        for prompt in prompts:
            text, ids = "", []
            for piece, ids in self._stream_with_ids(prompt, params):
                text += piece
            stopped = len(ids) < params.max_new_tokens or _first_stop(self.tokenizer.decode(ids), params.stop) is not None
            completions.append(Completion(text=text, token_ids=list(ids), prompt_tokens=len(self._prompt_ids(prompt)),
                                          finish_reason="stop" if stopped else "length"))
        return completions


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i != -1]
    return min(found) if found else None
