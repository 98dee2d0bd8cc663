"""Autoregressive generation: feed the context, pick a token, append it, repeat.

This is the simple version: every step re-runs the model on the whole (cropped) context.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

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
    generator = None
    if seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    new = list(generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                            stop_ids=(tokenizer.eot_id,), generator=generator))
    return tokenizer.decode(new)
