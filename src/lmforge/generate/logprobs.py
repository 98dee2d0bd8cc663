"""Log-probabilities of tokens, and the two shapes OpenAI's API gives them in.

The server computes them once a request's text is complete, on the worker thread: the prompt and the
generated tokens are read again in one pass (TextEngine.token_logprobs), which gives the model's own
distribution at every position, before temperature, top-k or penalties, as OpenAI and vLLM report it.

* /v1/completions, `logprobs: N` (and `echo`): the legacy object of parallel lists, `tokens`,
  `token_logprobs`, `top_logprobs` (a dict of the N likeliest tokens, plus the chosen one) and
  `text_offset`; with echo, the prompt's tokens come first and the very first has null, since
  nothing predicts it. This is what lm-evaluation-harness's `local-completions` reads.
* /v1/chat/completions, `logprobs: true` (+ `top_logprobs: N`): a `content` list with one object per
  answer token: token, logprob, bytes, top_logprobs.
Token strings are each token decoded alone; a token that holds only part of a character's UTF-8 bytes
decodes to U+FFFD (and so do its `bytes` in chat). Two such tokens among the top ones share a key in
the completions `top_logprobs` dict, which keeps the likelier one's value: the best value listed stays
the best there is, which is what a "was it the likeliest token" check reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tokenizer.base import Tokenizer


@dataclass
class TokenLogprobs:
    ids: list[int]                               # the tokens reported, in order
    chosen: list[float | None]                   # each one's log-probability (None: nothing predicts it)
    top: list[list[tuple[int, float]] | None]    # the likeliest tokens at each position, best first


def token_logprobs(logprobs: torch.Tensor, ids: list[int], first: int, top_n: int) -> TokenLogprobs:
    """From rows (len(ids) - 1, V) of log-probabilities (row t predicts ids[t + 1]), what is reported of
    ids[first:]."""
    chosen: list[float | None] = []
    top: list[list[tuple[int, float]] | None] = []
    for i in range(first, len(ids)):
        if i == 0:
            chosen.append(None)
            top.append(None)
            continue
        row = logprobs[i - 1]
        chosen.append(float(row[ids[i]]))
        values, indices = row.topk(min(top_n, row.numel())) if top_n else (row[:0], row[:0].long())
        top.append(list(zip(indices.tolist(), values.tolist())))
    return TokenLogprobs(ids[first:], chosen, top)


def completion_logprobs(tokenizer: Tokenizer, lp: TokenLogprobs, offset: int) -> dict:
    """The legacy completions `logprobs` object; `offset`: characters of text before the first token."""
    tokens = [tokenizer.decode([token]) for token in lp.ids]
    offsets, position = [], offset
    for text in tokens:
        offsets.append(position)
        position += len(text)
    top_logprobs = []
    for token, text, chosen, top in zip(lp.ids, tokens, lp.chosen, lp.top):
        if top is None:
            top_logprobs.append(None)
            continue
        entries: dict[str, float] = {}
        for candidate, value in top:  # best first: where two tokens decode alike, the likelier one's value stays
            entries.setdefault(tokenizer.decode([candidate]), value)
        entries.setdefault(text, chosen)  # OpenAI: the chosen token is always listed, so up to N + 1 entries
        top_logprobs.append(entries)
    return {"tokens": tokens, "token_logprobs": lp.chosen, "top_logprobs": top_logprobs, "text_offset": offsets}


def chat_logprobs(tokenizer: Tokenizer, lp: TokenLogprobs) -> dict:
    """The chat completions `logprobs` object: {"content": [one entry per answer token]}."""
    def entry(token: int, value: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(token, chosen), "top_logprobs": [entry(c, v) for c, v in top or []]}
                        for token, chosen, top in zip(lp.ids, lp.chosen, lp.top)]}
