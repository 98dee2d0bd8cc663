"""Choosing the next token from logits: pure functions, no model inside.

The steps, in the order `sample_next` applies them (the order Hugging Face and vLLM use):
1. repetition penalty: make tokens already in the context less likely;
2. temperature: divide the logits (0, or below params.GREEDY_BELOW, = greedy: the most likely token, nothing drawn);
3. top-k: keep the k most likely tokens;
4. top-p (nucleus): keep the smallest set of most likely tokens whose probabilities add up to p;
5. min-p: drop tokens less likely than min_p times the most likely one;
then draw from what is left. Filters set logits to -inf, so softmax gives the dropped tokens zero.
Shapes: V = vocabulary; logits are (..., V), e.g. (V,) for one sequence or (B, V) for a batch.
"""

from __future__ import annotations

import torch

from .params import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise the tokens in context (..., S): positive logits are divided by penalty, negative multiplied.

    This is the CTRL paper's rule, as in Hugging Face: dividing a negative logit would raise it,
    so both cases move the token's logit down. A token counts once however often it occurred.
    """
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, context)
    penalised = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, context, penalised)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set all but the k largest logits (per row) to -inf."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their probability mass reaches p (always at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the mass of the tokens *before* it already reaches p.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top token's (the top token always stays)."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (...,) from logits (..., V); context (..., S) holds the tokens seen so far.

    The same generator state (e.g. the same seed) gives the same draw.
    """
    logits = logits.float()
    if context is not None:
        logits = apply_repetition_penalty(logits, context, params.repetition_penalty)
    if params.greedy:  # also for a tiny temperature, which would overflow the logits to inf
        return logits.argmax(dim=-1)
    logits = filter_top_k(logits / params.temperature, params.top_k)
    logits = filter_min_p(filter_top_p(logits, params.top_p), params.min_p)
    probs = logits.softmax(dim=-1).reshape(-1, logits.size(-1))  # (N, V): multinomial wants 1 or 2 dims
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])
