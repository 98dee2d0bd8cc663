"""Preference data for DPO and ORPO: a prompt, a chosen answer and a rejected one.

Record formats (JSON array or JSON Lines), detected from the first record's keys:
  * "prompt_chosen_rejected": {"prompt": ..., "chosen": ..., "rejected": ...}; each a string, or
    (trl's conversational form) the prompt a list of messages and chosen/rejected a list holding the
    assistant's answer;
  * "alpaca": {"instruction", "input" (optional), "chosen", "rejected"}, as in "LLMs from scratch"
    (instruction-data-with-preference.json);
  * "implicit": {"chosen": [messages], "rejected": [messages]}: two whole conversations that share
    everything but the last assistant answer (trl's implicit prompt).

Each side is rendered with the chat template and tokenised like an SFT example (data/sft.py), but
only the final answer (and the end-of-text after it) is a target: the prompt, earlier turns
included, is masked. Pre-flight drops pairs whose two sides tokenise identically (nothing to learn,
and DPO's gradient is zero there) or whose answer is empty, and reports answers cut by the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..model.chunked_loss import IGNORE_INDEX
from ..tokenizer.base import Tokenizer
from .sft import ExampleBatches, SFTExample, pad_rows, read_records
from .templates import ChatTemplate, Message, render_for_training

PREFERENCE_FORMATS = {
    "prompt_chosen_rejected": {"prompt", "chosen", "rejected"},
    "alpaca": {"instruction", "chosen", "rejected"},
    "implicit": {"chosen", "rejected"},
}


@dataclass
class PreferencePair:
    """A prompt with two answers, as messages: the prompt conversation, then each answer's text."""

    prompt: list[Message]
    chosen: str
    rejected: str


def load_preference_pairs(path: str | Path, format: str = "auto") -> list[PreferencePair]:
    """Read a JSON array or JSONL file of preference records (module docstring); one pair per record."""
    path = Path(path)
    records = read_records(path)
    if format == "auto":
        format = next((f for f, keys in PREFERENCE_FORMATS.items() if keys <= records[0].keys()), None)
        if format is None:
            raise ValueError(f"{path}: record 0 does not look like preference data; its keys are "
                             f"{sorted(records[0])}. Known formats: {list(PREFERENCE_FORMATS)}")
    elif format not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown preference format {format!r}: use 'auto' or one of {list(PREFERENCE_FORMATS)}")
    pairs = []
    for index, record in enumerate(records):
        if not PREFERENCE_FORMATS[format] <= record.keys():
            raise ValueError(f"{path}: record {index} lacks {sorted(PREFERENCE_FORMATS[format] - record.keys())}")
        try:
            pairs.append(_PARSERS[format](record))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {index} is not a valid {format} record: {exc}") from exc
    return pairs


def _answer(value: object, what: str) -> str:
    """An answer given as text, or as trl's list holding one assistant message."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    raise TypeError(f"{what} must be a string or [{{'role': 'assistant', 'content': ...}}]")


def _messages(value: object, what: str) -> list[Message]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                              and isinstance(m.get("content"), str) for m in value):
        raise TypeError(f"{what} must be a list of {{'role': ..., 'content': ...}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _from_prompt_chosen_rejected(record: dict) -> PreferencePair:
    prompt = record["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt")
    return PreferencePair(messages, _answer(record["chosen"], "chosen"), _answer(record["rejected"], "rejected"))


def _from_alpaca(record: dict) -> PreferencePair:
    if not isinstance(record["instruction"], str):
        raise TypeError("instruction must be a string")
    prompt = [{"role": "user", "content": record["instruction"]}]
    if record.get("input"):
        prompt.append({"role": "input", "content": str(record["input"])})
    return PreferencePair(prompt, _answer(record["chosen"], "chosen"), _answer(record["rejected"], "rejected"))


def _from_implicit(record: dict) -> PreferencePair:
    chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("chosen and rejected must each end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected must share every message but the last")
    return PreferencePair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])


_PARSERS = {"prompt_chosen_rejected": _from_prompt_chosen_rejected, "alpaca": _from_alpaca,
            "implicit": _from_implicit}


# ---- tokenising -------------------------------------------------------------------------------------------


@dataclass
class TokenizedPair:
    """Both sides of a pair as SFT examples (labels only on the final answer); reference log-probabilities
    (summed over each answer's tokens) once computed."""

    chosen: SFTExample
    rejected: SFTExample
    ref_logps: tuple[float, float] | None = None


def tokenize_answer(prompt: list[Message], answer: str, tokenizer: Tokenizer, template: ChatTemplate,
                    max_length: int | None = None) -> SFTExample:
    """The prompt and one answer rendered with the template; only the answer and its end-of-text are targets."""
    segments = render_for_training([*prompt, {"role": "assistant", "content": answer}], template)
    input_ids: list[int] = []
    labels: list[int] = []
    for i, segment in enumerate(segments):
        ids = tokenizer.encode(segment.text)
        final = i == len(segments) - 1  # the answer's own segment; earlier assistant turns are prompt here
        if final:
            ids.append(tokenizer.eot_id)
        input_ids += ids
        labels += ids if final else [IGNORE_INDEX] * len(ids)
    if max_length is not None and len(input_ids) > max_length:
        return SFTExample(input_ids[:max_length], labels[:max_length], truncated=True)
    return SFTExample(input_ids, labels)


@dataclass
class PreferencePreflight:
    total: int
    identical: int = 0
    empty: int = 0
    truncated: int = 0
    kept: int = 0
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.kept:,} of {self.total:,} pairs kept; left out {self.identical} whose answers tokenise "
                f"identically, {self.empty} with an empty answer, {self.truncated} whose answer the context cuts")


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer: Tokenizer, template: ChatTemplate,
                   max_length: int, max_truncated: float = 0.0) -> tuple[list[TokenizedPair], PreferencePreflight]:
    """Tokenise every pair and leave out those that cannot teach anything (see PreferencePreflight).

    A pair with an answer cut by the context is left out too; more than max_truncated (a share) of
    such pairs is an error that names the fix (a shorter data set or a longer context)."""
    report, kept = PreferencePreflight(total=len(pairs)), []
    for pair in pairs:
        if not pair.chosen.strip() or not pair.rejected.strip():
            report.empty += 1
            continue
        chosen = tokenize_answer(pair.prompt, pair.chosen, tokenizer, template, max_length)
        rejected = tokenize_answer(pair.prompt, pair.rejected, tokenizer, template, max_length)
        if chosen.input_ids == rejected.input_ids:
            report.identical += 1
            continue
        if chosen.truncated or rejected.truncated:
            report.truncated += 1
            continue
        kept.append(TokenizedPair(chosen, rejected))
    report.kept = len(kept)
    if report.truncated > max_truncated * report.total:
        raise ValueError(f"pre-flight: {report.truncated} of {report.total} pairs have an answer cut at "
                         f"{max_length} tokens (allowed: {max_truncated:.0%}); use a model with a longer context, "
                         "shorter examples, or raise finetune.preference.max_truncated")
    if not kept:
        raise ValueError(f"pre-flight: no pair left to train on ({report.summary()})")
    return kept, report


# ---- batches ----------------------------------------------------------------------------------------------


class PreferenceBatches(ExampleBatches):
    """Batches of pairs for the training loop: (x, y, y_all, ref_logps, pairs).

    x (2B, T) holds the B chosen sequences, then the B rejected ones, right-padded; y their next-token
    targets (IGNORE_INDEX on the prompt and the padding); y_all the same with the prompt's tokens as
    targets too (ORPO's SFT part may score them); ref_logps (2B,) the reference model's summed
    log-probabilities of each answer (zeros until computed; ORPO needs none); pairs (B,) is a column of
    zeros, there so that the loop, which divides the loss by the count of targets in a batch's last
    tensor, divides it by the number of pairs: DPO's loss is a mean over pairs.
    """

    def __init__(self, pairs: Sequence[TokenizedPair], batch_size: int, seed: int = 1337, pad_id: int = 0):
        self.pairs, self.pad_id = list(pairs), pad_id
        super().__init__(len(self.pairs), batch_size, seed)

    def _collate(self, items: np.ndarray) -> tuple[torch.Tensor, ...]:
        pairs = [self.pairs[i] for i in items]
        sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        x = pad_rows([s.input_ids[:-1] for s in sides], self.pad_id)
        y = pad_rows([s.labels[1:] for s in sides], IGNORE_INDEX)
        y_all = pad_rows([s.input_ids[1:] for s in sides], IGNORE_INDEX)  # the prompt's tokens as targets too
        ref = [p.ref_logps or (0.0, 0.0) for p in pairs]
        ref_logps = torch.tensor([r[0] for r in ref] + [r[1] for r in ref], dtype=torch.float64)
        return x, y, y_all, ref_logps, torch.zeros(len(pairs), dtype=torch.long)


def with_reference_logps(pairs: Sequence[TokenizedPair], logps_of, batch_size: int) -> list[TokenizedPair]:
    """The pairs with ref_logps filled in by `logps_of(x, y) -> (N,)` summed log-probabilities, batch by batch."""
    done = []
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start:start + batch_size])
        x, y, _, _, _ = PreferenceBatches(chunk, len(chunk))._collate(np.arange(len(chunk)))
        logps = logps_of(x, y).double().tolist()
        n = len(chunk)
        done += [replace(pair, ref_logps=(logps[i], logps[n + i])) for i, pair in enumerate(chunk)]
    return done
