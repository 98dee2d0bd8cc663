"""Instruction fine-tuning (SFT) data: conversation files -> token ids with a loss mask -> batches.

Supervised fine-tuning teaches a pretrained model to answer. Each training example is a whole
conversation written out with a chat template (see `lmforge.data.templates`), and the model is
trained on next-token prediction as in pretraining, with one difference: only the assistant's
answers are *supervised*. The label of every other token (system prompt, user question, the
template's own markup) is IGNORE_INDEX (-100), which the loss skips, so the model learns to write
answers rather than to imitate questions. After every answer comes the end-of-text token, also
supervised: that is how a tuned model learns to stop talking.

The pipeline, one section of this module each:

    load_sft_examples     JSON/JSONL in one of four common shapes -> conversations
    tokenize_conversation conversation -> SFTExample(input_ids, labels)
    preflight             catches the silent mistakes before training starts (drop_unfinished
                          leaves out the examples whose answer truncation cut off)
    render_inspection     shows one example with its trained tokens marked
    SFTBatches            examples -> (x, y) batches, padded or packed

Formats (`format="auto"` picks one from the first record's keys):

    alpaca             {"instruction", "input" (optional), "output"}
    sharegpt           {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
    messages           {"messages": [{"role": "system"|"user"|"assistant", "content"}]}  (OpenAI)
    prompt_completion  {"prompt", "completion"}

Every record becomes a list of {"role", "content"} messages. An Alpaca input becomes an "input"
message after the user's instruction (templates place or merge it). A prompt/completion pair
becomes a user/assistant pair and is rendered with the chosen template like every other
conversation, so the tuned model can be used with `lmforge chat`; to train on the text exactly as
written (prompts that carry their own format), choose the "raw" template.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from lmforge.data.templates import ChatTemplate, Message, render_for_training
from lmforge.tokenizer.base import Tokenizer

IGNORE_INDEX = -100
"""Label of a token the loss skips (prompt, padding); the value PyTorch's cross_entropy ignores by default."""

# The keys that identify each format, in the order auto-detection tries them.
FORMAT_KEYS = {"messages": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "output"},
               "prompt_completion": {"prompt", "completion"}}
SFT_FORMATS = tuple(FORMAT_KEYS)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
MESSAGE_ROLES = {"system", "user", "assistant"}


# --- Loading -----------------------------------------------------------------------------------


def load_sft_examples(path: str | Path, format: str = "auto") -> list[list[Message]]:
    """Read a JSON array or JSONL file of records in one of SFT_FORMATS; return one conversation per record."""
    path = Path(path)
    records = read_records(path)
    if format != "auto" and format not in SFT_FORMATS:
        raise ValueError(f"unknown SFT format {format!r}: use 'auto' or one of {list(SFT_FORMATS)}")
    if format == "auto":
        format = detect_sft_format(records[0]) or _bad_record(path, 0, records[0], "any known SFT format")
    return [_to_conversation(record, format, path, index) for index, record in enumerate(records)]


def detect_sft_format(record: dict) -> str | None:
    """The format a record's keys show, or None."""
    return next((format for format, keys in FORMAT_KEYS.items() if keys <= record.keys()), None)


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a JSON array file or a JSON Lines file (instruction, preference and prompt data alike);
    a ValueError names the file and the line or record that is not one."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:  # JSON Lines: one record per line
        records = [_parse_json_line(line, path, number)
                   for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not records:
        raise ValueError(f"{path}: no records found")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is a {type(record).__name__}, expected a JSON object")
    return records


def _parse_json_line(line: str, path: Path, number: int) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc


def _to_conversation(record: dict, format: str, path: Path, index: int) -> list[Message]:
    if not FORMAT_KEYS[format] <= record.keys():
        _bad_record(path, index, record, f"a {format} record")
    try:
        conversation = CONVERTERS[format](record)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: record {index} is not a valid {format} record: {exc}") from exc
    if not conversation:
        raise ValueError(f"{path}: record {index} holds no messages")
    return conversation


def _bad_record(path: Path, index: int, record: dict, expected: str) -> NoReturn:
    raise ValueError(f"{path}: record {index} does not look like {expected}; its keys are {sorted(record)}. "
                     f"Known formats: {list(SFT_FORMATS)} (see lmforge.data.sft)")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _from_alpaca(record: dict) -> list[Message]:
    conversation = [{"role": "user", "content": _text(record["instruction"], "instruction")}]
    if record.get("input"):
        conversation.append({"role": "input", "content": _text(record["input"], "input")})
    return conversation + [{"role": "assistant", "content": _text(record["output"], "output")}]


def _from_sharegpt(record: dict) -> list[Message]:
    conversation = []
    for turn in record["conversations"]:
        if turn["from"] not in SHAREGPT_ROLES:
            raise ValueError(f"unknown speaker {turn['from']!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        conversation.append({"role": SHAREGPT_ROLES[turn["from"]], "content": _text(turn["value"], "value")})
    return conversation


def _from_messages(record: dict) -> list[Message]:
    conversation = []
    for message in record["messages"]:
        if message["role"] not in MESSAGE_ROLES:
            raise ValueError(f"unknown role {message['role']!r}; expected one of {sorted(MESSAGE_ROLES)}")
        conversation.append({"role": message["role"], "content": _text(message["content"], "content")})
    return conversation


def _from_prompt_completion(record: dict) -> list[Message]:
    return [{"role": "user", "content": _text(record["prompt"], "prompt")},
            {"role": "assistant", "content": _text(record["completion"], "completion")}]


CONVERTERS = {"alpaca": _from_alpaca, "sharegpt": _from_sharegpt, "messages": _from_messages,
              "prompt_completion": _from_prompt_completion}


# --- Tokenising --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTExample:
    """One tokenised conversation. labels[i] is input_ids[i] where trained, IGNORE_INDEX elsewhere.

    Labels are aligned with the inputs, not shifted: SFTBatches does the shift to next-token targets.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def tokenize_conversation(messages: list[Message], tokenizer: Tokenizer, template: ChatTemplate,
                          mask_prompt: bool = True, max_length: int | None = None) -> SFTExample:
    """Render `messages` with `template` and tokenise them, with labels for the supervised tokens only.

    Each segment is tokenised on its own and the ids concatenated, so the mask boundary falls
    exactly between segments (tokenising the whole text at once could merge a prompt's last
    characters and an answer's first ones into one token). This matches generation too, where the
    prompt is tokenised alone and the model writes the answer's tokens after it.
    The end-of-text id follows every assistant answer and is supervised. `mask_prompt=False`
    trains on every token. Longer than `max_length`: the end is cut off and `truncated` is set.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for segment in render_for_training(messages, template):
        ids = tokenizer.encode(segment.text)
        if segment.supervised:
            ids.append(tokenizer.eot_id)
        input_ids += ids
        labels += ids if segment.supervised or not mask_prompt else [IGNORE_INDEX] * len(ids)
    if max_length is not None and len(input_ids) > max_length:
        return SFTExample(input_ids[:max_length], labels[:max_length], truncated=True)
    return SFTExample(input_ids, labels)


# --- Pre-flight checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class PreflightReport:
    """What a dataset holds, counted the way it will be trained (cut at max_length)."""

    examples: int
    tokens: int
    supervised_tokens: int
    truncated: int
    longest: int

    @property
    def supervised_share(self) -> float:
        return self.supervised_tokens / max(self.tokens, 1)

    def summary(self) -> str:
        return (f"{self.examples} examples, {self.tokens} tokens ({self.supervised_share:.1%} supervised), "
                f"longest {self.longest}, {self.truncated} truncated")

    __str__ = summary


def preflight(examples: Sequence[SFTExample], tokenizer: Tokenizer, max_length: int,
              max_truncated_fraction: float = 0.05) -> PreflightReport:
    """Check a tokenised dataset before training; raise ValueError on a dataset that would train badly.

    Fails when more than `max_truncated_fraction` of the examples are longer than `max_length`
    (or were cut when tokenised), when an example has no supervised token (nothing to learn: a
    conversation without an answer, or one cut before it), and when an example's last supervised
    token is not the end-of-text token (the model would not learn to stop: usually an answer cut
    off by truncation). Each message gives the count and the first offending example's index.
    """
    if not examples:
        raise ValueError("preflight: the dataset holds no examples")
    trained = [example.labels[:max_length] for example in examples]  # what training will see
    truncated = [i for i, example in enumerate(examples) if example.truncated or len(example.input_ids) > max_length]
    if len(truncated) > max_truncated_fraction * len(examples):
        raise ValueError(f"preflight: {len(truncated)} of {len(examples)} examples (more than "
                         f"{max_truncated_fraction:.0%}) are longer than max_length={max_length}, the first is "
                         f"example {truncated[0]}; raise max_length or shorten the data")
    _fail_if_any([i for i, labels in enumerate(trained) if all(label == IGNORE_INDEX for label in labels)],
                 len(examples), "have no supervised token (nothing to learn: no assistant answer, or cut before it)")
    _fail_if_any([i for i, labels in enumerate(trained) if _last_supervised(labels) != tokenizer.eot_id],
                 len(examples), "do not end with a supervised end-of-text token (an answer cut off by "
                                "truncation, or tokenised without it); raise max_length or leave them out "
                                "(drop_unfinished)")
    return PreflightReport(examples=len(examples), tokens=sum(len(labels) for labels in trained),
                           supervised_tokens=sum(label != IGNORE_INDEX for labels in trained for label in labels),
                           truncated=len(truncated), longest=max(len(example.input_ids) for example in examples))


def drop_unfinished(examples: Sequence[SFTExample], eot_id: int) -> list[SFTExample]:
    """The examples whose last supervised token is end-of-text: those cut off mid-answer are left out."""
    return [example for example in examples if _last_supervised(example.labels) == eot_id]


def _last_supervised(labels: list[int]) -> int | None:
    return next((label for label in reversed(labels) if label != IGNORE_INDEX), None)


def _fail_if_any(offending: list[int], total: int, problem: str) -> None:
    if offending:
        raise ValueError(f"preflight: {len(offending)} of {total} examples {problem}; "
                         f"the first is example {offending[0]}")


# --- Inspection --------------------------------------------------------------------------------

TRAINED_MARKERS = ("[[", "]]")
ANSI_MARKERS = ("\x1b[32m", "\x1b[0m")  # green, then back to normal


def drop_truncated_answers(examples: Sequence[SFTExample], eot_id: int, max_share: float,
                           max_length: int) -> list[SFTExample]:
    """Leave out examples whose answer truncation cut before its end token -- unless there are too many.

    Only truncation is forgiven: an untruncated example without its end token is a broken dataset,
    which `preflight` reports. More than `max_share` of examples cut is an error too: the context is
    too short for this data.
    """
    finished = {id(example) for example in drop_unfinished(examples, eot_id)}
    kept = [example for example in examples if id(example) in finished or not example.truncated]
    dropped = len(examples) - len(kept)
    if dropped > max_share * len(examples):
        raise ValueError(f"{dropped} of {len(examples)} examples lose the end of their answer at {max_length} "
                         f"tokens (more than the {max_share:.0%} allowed); use a model with a longer context, "
                         "shorter examples, or allow more (finetune.instruct.max_truncated)")
    return kept


def render_inspection(example: SFTExample, tokenizer: Tokenizer, color: bool = False) -> str:
    """The example's text with every trained (supervised) stretch marked: [[like this]], or green with color=True."""
    start, end = ANSI_MARKERS if color else TRAINED_MARKERS
    pieces = []
    # Stretches of consecutive tokens that are all trained or all not, each decoded as a whole.
    tokens = zip(example.input_ids, example.labels)
    for supervised, run in itertools.groupby(tokens, key=lambda token: token[1] != IGNORE_INDEX):
        text = tokenizer.decode([token_id for token_id, _ in run])
        pieces.append(f"{start}{text}{end}" if supervised else text)
    return "".join(pieces)


# --- Splitting ---------------------------------------------------------------------------------


def split_examples(examples: Sequence, val_fraction: float, seed: int = 1337) -> tuple[list, list]:
    """Shuffle (seeded) and split into (train, val); val gets `held_out_count` of them."""
    order = np.random.default_rng(seed).permutation(len(examples))
    val_count = held_out_count(len(examples), val_fraction)
    return [examples[i] for i in order[val_count:]], [examples[i] for i in order[:val_count]]


def held_out_count(total: int, val_fraction: float) -> int:
    """round(total * val_fraction), but at least 1 when the fraction is > 0 and at most total - 1 (train keeps one)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    wanted = max(round(total * val_fraction), 1) if val_fraction > 0 else 0
    return max(min(wanted, total - 1), 0)


# --- Batching ----------------------------------------------------------------------------------


class ExampleBatches:
    """The batch-source contract of the training loop (as TokenBatches), over a fixed list of items.

    Every epoch visits every item once, in an order drawn from a generator seeded with (seed, epoch),
    so the batch at any (epoch, index) is fixed and a resumed run sees exactly what an uninterrupted
    one would. An epoch has ceil(items / batch_size) batches: the last may be smaller, so no example
    is skipped (the loop divides the loss by the number of targets, so a small batch weighs right).
    Subclasses say how a batch of items becomes tensors (`_collate`) and may change the order.
    """

    def __init__(self, item_count: int, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if item_count < 1:
            raise ValueError("cannot make batches from an empty dataset")
        self.item_count, self.batch_size, self.seed = item_count, batch_size, seed
        self.epoch = 0
        self.index = 0
        self.all_batches = -(-item_count // batch_size)  # ceiling division
        self.batches_per_epoch = self.all_batches  # this process's share (split_across)
        self.rank, self.world_size = 0, 1
        self._cached_plan: tuple[int, list[np.ndarray]] | None = None

    def split_across(self, rank: int, world_size: int) -> "ExampleBatches":
        """Make this stream one process's share of a distributed run: batches rank, rank + world_size, ...
        of every epoch's plan. Every process gets the same number of batches per epoch, so the last
        (all_batches mod world_size) batches of an epoch are left out. Returns self."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if self.all_batches < world_size:
            raise ValueError(f"{self.all_batches} batches per epoch cannot be shared by {world_size} processes; "
                             "use more examples or a smaller batch_size")
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = self.all_batches // world_size
        return self

    def _collate(self, items: np.ndarray) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _epoch_order(self, generator: np.random.Generator) -> list[np.ndarray]:
        """The epoch's batches as arrays of item indices; by default a shuffle cut into batch_size pieces."""
        return _cut(generator.permutation(self.item_count), self.batch_size)

    def _epoch_plan(self) -> list[np.ndarray]:
        if self._cached_plan is None or self._cached_plan[0] != self.epoch:
            self._cached_plan = (self.epoch, self._epoch_order(np.random.default_rng([self.seed, self.epoch])))
        return self._cached_plan[1]

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next training batch; after the last batch of an epoch the next epoch begins."""
        items = self._epoch_plan()[self.index * self.world_size + self.rank]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return self._collate(items)

    def state_dict(self) -> dict:
        """Position in the data stream, for checkpoints."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by `state_dict`."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < self.batches_per_epoch:
            raise ValueError(f"cannot resume at epoch {epoch}, batch {index}: an epoch has {self.batches_per_epoch} "
                             "batches; resume with the same data and batch_size as the checkpoint")
        self.epoch, self.index = epoch, index

    @property
    def epoch_progress(self) -> float:
        """Epochs completed so far, fractional (e.g. 2.5 = halfway through the third epoch)."""
        return self.epoch + self.index / self.batches_per_epoch

    def eval_batch_count(self) -> int:
        """How many batches eval_batches() yields without a limit (the last one may be smaller)."""
        return self.all_batches

    def eval_batches(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Consecutive items in their stored order, batched: the same batches on every call."""
        batches = _cut(np.arange(self.item_count), self.batch_size)
        yield from (self._collate(items) for items in batches[:max_batches])


def _cut(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [order[start:start + size] for start in range(0, len(order), size)]


GROUP_BATCHES = 50
"""With group_by_length, examples are sorted by length within windows of this many batches."""


class SFTBatches(ExampleBatches):
    """Batches of tokenised conversations for the training loop.

    Unpacked (default): one example per row. x is input_ids[:-1] and y is labels[1:], so y[t] is
    the target for the token after x[t] (IGNORE_INDEX where not trained). A batch is right-padded
    only to its own longest example: x with `pad_id`, y with IGNORE_INDEX. Right padding needs no
    attention mask, because causal attention never lets a real token see the padding after it;
    the padding's own outputs are not scored. `group_by_length` puts examples of similar length
    together (sorted within windows of GROUP_BATCHES batches, batch order shuffled), wasting less
    compute on padding. Yields (x, y).

    Packed (`pack=True`): whole examples are placed side by side in rows of block_size + 1 tokens
    (best-fit, longest first; an example is never split), and each row gives x = tokens[:-1],
    y = labels[1:] as above. Yields (x, segment_ids, y); segment_ids[b, t] numbers the example
    that x[b, t] belongs to (1, 2, ... within a row; 0 for padding). What packing guarantees:

    * Loss: no example learns from another's tokens as a target. The one target that would cross
      a boundary (the next example's first token, predicted from the previous example's
      end-of-text) is IGNORE_INDEX, so the targets are exactly those of the unpacked examples.
    * Attention: only if the model uses segment_ids. With plain causal attention a later example
      attends to the earlier ones in its row (they are separated by end-of-text, as documents are
      in pretraining). A model that attends only within its segment (`packed_attention_mask`) and
      restarts positions at each example (`packed_positions`) computes exactly the logits, and so
      the loss, of the unpacked examples.
    """

    def __init__(self, examples: Sequence[SFTExample], batch_size: int, seed: int = 1337, pad_id: int = 0,
                 pack: bool = False, block_size: int | None = None, group_by_length: bool = False) -> None:
        _check_examples(examples, block_size, pack)
        self.examples, self.pad_id, self.pack, self.group_by_length = list(examples), pad_id, pack, group_by_length
        self.lengths = np.array([len(example.input_ids) for example in examples])
        self.rows = pack_examples(self.lengths.tolist(), block_size + 1) if pack else None
        super().__init__(len(self.rows) if pack else len(examples), batch_size, seed)

    def _epoch_order(self, generator: np.random.Generator) -> list[np.ndarray]:
        if self.pack or not self.group_by_length:
            return super()._epoch_order(generator)
        order = generator.permutation(self.item_count)
        windows = _cut(order, self.batch_size * GROUP_BATCHES)
        order = np.concatenate([window[np.argsort(self.lengths[window], kind="stable")] for window in windows])
        batches = _cut(order, self.batch_size)
        return [batches[i] for i in generator.permutation(len(batches))]

    def _collate(self, items: np.ndarray) -> tuple[torch.Tensor, ...]:
        if self.pack:
            rows = [_packed_row([self.examples[i] for i in self.rows[item]]) for item in items]
            x, y, segments = zip(*rows)
            # Targets last, as in every batch the loop sees: (x, segment_ids, y).
            return pad_rows(x, self.pad_id), pad_rows(segments, 0), pad_rows(y, IGNORE_INDEX)
        chosen = [self.examples[i] for i in items]
        return (pad_rows([example.input_ids[:-1] for example in chosen], self.pad_id),
                pad_rows([example.labels[1:] for example in chosen], IGNORE_INDEX))


def _check_examples(examples: Sequence[SFTExample], block_size: int | None, pack: bool) -> None:
    if pack and block_size is None:
        raise ValueError("packing needs block_size: the length of the rows examples are packed into")
    shortest = min((len(example.input_ids) for example in examples), default=2)
    if shortest < 2:
        raise ValueError("every example needs at least 2 tokens (one input and one target)")
    longest = max((len(example.input_ids) for example in examples), default=0)
    if block_size is not None and longest - 1 > block_size:
        raise ValueError(f"an example has {longest} tokens, more than block_size + 1 = {block_size + 1}; "
                         f"tokenise with max_length={block_size + 1}")


def _packed_row(examples: list[SFTExample]) -> tuple[list[int], list[int], list[int]]:
    """(x, y, segment ids) of several examples placed one after another."""
    ids, labels, segments = [], [], []
    for number, example in enumerate(examples, start=1):
        ids += example.input_ids
        # An example's first label is the target predicted from the token before it: in a packed row
        # that is the previous example's end-of-text. Nothing should be learnt across that boundary.
        labels += [IGNORE_INDEX] + example.labels[1:]
        segments += [number] * len(example.input_ids)
    return ids[:-1], labels[1:], segments[:-1]


def pack_examples(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group example indices into rows of at most `capacity` tokens: best-fit, longest first, rows in index order."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row number), sorted: bisect finds the tightest fit
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fit = bisect.bisect_left(free, (lengths[index], -1))
        if fit == len(free):
            rows.append([index])
            row, space = len(rows) - 1, capacity - lengths[index]
        else:
            space, row = free.pop(fit)
            rows[row].append(index)
            space -= lengths[index]
        if space > 0:
            bisect.insort(free, (space, row))
    return [sorted(row) for row in rows]


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """(len(rows), longest) int64 tensor, each row right-padded with `value`."""
    padded = torch.full((len(rows), max(len(row) for row in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return padded


# --- What a model does with packed rows ---------------------------------------------------------


def packed_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position of each token within its own example: 0, 1, 2, ... restarting at each new segment."""
    columns = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts_segment = torch.ones_like(segment_ids, dtype=torch.bool)
    starts_segment[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    segment_start = torch.where(starts_segment, columns, 0).cummax(dim=1).values
    return columns - segment_start


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask, True where query t may attend to key s: s <= t and both in the same segment.

    Block-diagonal and causal; padding (segment 0) attends only to padding, so no row is fully masked.
    Shaped for F.scaled_dot_product_attention's attn_mask (the 1 broadcasts over heads).
    """
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same_segment & causal).unsqueeze(1)
