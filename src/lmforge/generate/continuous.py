"""Continuous batching: sequences join and leave the running batch between decode steps.

Static batching (generate_tokens) runs a batch from its first token to its last: a request that arrives
meanwhile waits for the whole batch, and one long answer holds every short one's slot. Here each
`step()` is one round of the scheduler:
1. admit: waiting sequences take free KV slots (the pool is sized by a memory budget);
2. decode: every decoding sequence gets its next token from one batched forward pass;
3. prefill: sequences still reading their prompt read the next piece of it, at most prefill_chunk
   tokens in all per round, so a 1,000-token prompt delays the decoding rows by a chunk at a time
   instead of by its whole prefill. A sequence whose prompt is read gets its first token and joins
   the decoding rows.
A sequence leaves as soon as it is finished (its token budget here; stop strings and end-of-text by the
caller's `remove`), and its slot serves the next waiting one at the next round.

Every sequence keeps its own position, sampling settings, generator and context: its tokens are the
ones it gets alone. Sliding past the context window works as in generate_tokens: when a sequence's
slot is full, it keeps its last block_size // 2 tokens and reads them again from position 0, as a
prefill.

Slots: decoding sequences always sit in slots 0..d-1, so the decode step reads their keys as a view
of the pool (no copy); when one leaves, the last one moves into its slot (a copy of its filled
positions, once). Prefilling sequences sit in the slots above.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from ..model.gpt import GPT
from ..model.kv_slots import SlotPool, SlotStep
from .engine import evaluation_mode, kept_after_slide
from .limits import PREFILL_CHUNK
from .params import SamplingParams
from .sampling import sample_next



@dataclass
class Sequence:
    """One sequence being generated."""

    key: Hashable                       # the caller's name for it
    params: SamplingParams
    generator: torch.Generator | None
    tokens: list[int]                   # prompt + tokens generated: the repetition penalty's context
    pending: list[int]                  # tokens not in the KV cache yet; the next token follows the last of them
    slot: int = -1
    generated: int = 0
    prompt_length: int = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_length = len(self.tokens)


def slots_for_budget(model: GPT, kv_cache_mb: float, max_slots: int) -> int:
    """How many slots (sequences at once) fit in kv_cache_mb, at most max_slots; ValueError if not one."""
    per_slot = SlotPool.slot_bytes(model.config, next(model.parameters()).dtype)
    n = min(max_slots, int(kv_cache_mb * 2**20 // per_slot))
    if n < 1:
        raise ValueError(f"a KV cache budget of {kv_cache_mb} MB holds no sequence: one needs "
                         f"{per_slot / 2**20:.1f} MB (the whole context, every layer)")
    return n


class ContinuousBatcher:
    """The token level of continuous batching: add sequences, call step(), get (key, token) events."""

    def __init__(self, model: GPT, n_slots: int, prefill_chunk: int = PREFILL_CHUNK):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        weights = next(model.parameters())
        self.model, self.prefill_chunk, self.device = model, prefill_chunk, weights.device
        self.block_size = model.config.block_size
        self.pool = SlotPool(model.config, n_slots, weights.dtype, weights.device)
        self.waiting: deque[Sequence] = deque()
        self.decoding: list[Sequence] = []    # decoding[i] sits in slot i
        self.prefilling: list[Sequence] = []  # in the order they read their prompts
        self.free = set(range(n_slots))

    # ---- the caller's side ----

    def add(self, key: Hashable, prompt: list[int], params: SamplingParams,
            generator: torch.Generator | None = None) -> None:
        """Queue a sequence: 1..block_size prompt tokens (see engine.fit_prompt), max_new_tokens >= 1."""
        if not 1 <= len(prompt) <= self.block_size:
            raise ValueError(f"a prompt needs 1 to {self.block_size} tokens, got {len(prompt)}")
        if params.max_new_tokens < 1:
            raise ValueError("a sequence needs max_new_tokens >= 1")
        self.waiting.append(Sequence(key, params, generator, list(prompt), list(prompt)))

    def remove(self, key: Hashable) -> None:
        """Stop generating for `key` (finished or cancelled) and free its slot; unknown keys are ignored."""
        for seq in self.decoding:
            if seq.key == key:
                self.free.add(self._leave_decoding(seq))
                return
        for seq in self.prefilling:
            if seq.key == key:
                self.prefilling.remove(seq)
                self.free.add(seq.slot)
                return
        self.waiting = deque(seq for seq in self.waiting if seq.key != key)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.decoding or self.prefilling)

    @property
    def slots_in_use(self) -> int:
        return self.pool.n_slots - len(self.free)

    def keys(self) -> list[Hashable]:
        """Every sequence not finished yet: decoding, prefilling or waiting."""
        return [seq.key for seq in (*self.decoding, *self.prefilling, *self.waiting)]

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, int]]:
        """One round: admit, decode, prefill. Returns the tokens made, as (key, token id)."""
        self._admit()
        events: list[tuple[Hashable, int]] = []
        with evaluation_mode(self.model):
            self._slide_full_rows()
            if self.decoding:
                events += self._decode()
            if self.prefilling:
                events += self._prefill()
        return events

    # ---- a round ----

    def _admit(self) -> None:
        while self.waiting and self.free:
            seq = self.waiting.popleft()
            seq.slot = self.free.pop()  # every free slot lies above the decoding rows
            self.pool.lengths[seq.slot] = 0
            self.prefilling.append(seq)

    def _slide_full_rows(self) -> None:
        """A decoding row whose slot is full goes back to prefill its most recent tokens from position 0."""
        for seq in [s for s in self.decoding if self.pool.lengths[s.slot] == self.block_size]:
            seq.slot = self._leave_decoding(seq)
            seq.pending = seq.tokens[-kept_after_slide(self.block_size):]
            self.pool.lengths[seq.slot] = 0
            self.prefilling.insert(0, seq)  # first in line: it was running already

    def _decode(self) -> list[tuple[Hashable, int]]:
        rows = list(self.decoding)
        logits = self._forward(rows, [seq.pending for seq in rows])
        return self._emit(rows, logits)

    def _prefill(self) -> list[tuple[Hashable, int]]:
        rows, chunks, budget = [], [], self.prefill_chunk
        for seq in self.prefilling:  # in order: only the first unfinished one can get a partial chunk
            if budget == 0:
                break
            chunk = seq.pending[:budget]
            rows.append(seq)
            chunks.append(chunk)
            budget -= len(chunk)
        logits = self._forward(rows, chunks)
        done = [i for i, seq in enumerate(rows) if not seq.pending]
        for seq in (rows[i] for i in done):
            self._join_decoding(seq)
        return self._emit([rows[i] for i in done], logits[done])

    def _forward(self, rows: list[Sequence], chunks: list[list[int]]) -> torch.Tensor:
        """Feed each row its chunk of tokens at its own position; next-token logits after each chunk (B, V)."""
        step = SlotStep([s.slot for s in rows], [self.pool.lengths[s.slot] for s in rows],
                        [len(c) for c in chunks], self.device)
        ids = torch.zeros(len(rows), step.width, dtype=torch.long)  # right padding: id 0, never read
        for i, chunk in enumerate(chunks):
            ids[i, :len(chunk)] = torch.tensor(chunk)
        hidden = self.model.hidden_states(ids.to(self.device), step.model_positions(self.block_size),
                                          self.pool.layers(step), step.attention_mask())  # (B, T, C)
        for seq, chunk in zip(rows, chunks):
            self.pool.lengths[seq.slot] += len(chunk)
            seq.pending = seq.pending[len(chunk):]
        last = hidden[torch.arange(len(rows), device=self.device), step.last_real()]  # (B, C)
        return self.model.lm_head(last)

    def _emit(self, rows: list[Sequence], logits: torch.Tensor) -> list[tuple[Hashable, int]]:
        """Sample each row's next token; it is the row's next input. Rows out of budget leave."""
        events = []
        for seq, token in zip(rows, self._sample(rows, logits)):
            seq.tokens.append(token)
            seq.pending = [token]
            seq.generated += 1
            events.append((seq.key, token))
            if seq.generated >= seq.params.max_new_tokens:
                self.remove(seq.key)
        return events

    def _sample(self, rows: list[Sequence], logits: torch.Tensor) -> list[int]:
        if all(s.params.greedy and s.params.repetition_penalty == 1.0 for s in rows):
            return logits.argmax(dim=-1).tolist()  # no generator or context needed: one batched argmax
        tokens = []
        for seq, row_logits in zip(rows, logits):
            context = (torch.tensor(seq.tokens, device=self.device)
                       if seq.params.repetition_penalty != 1.0 else None)
            tokens.append(int(sample_next(row_logits, seq.params, seq.generator, context)))
        return tokens

    # ---- slots ----

    def _leave_decoding(self, seq: Sequence) -> int:
        """Take seq out of the decoding rows, keeping them in slots 0..d-1; returns the slot left free."""
        last = self.decoding.pop()
        if last is not seq:  # the last decoding row moves into the leaver's slot
            self.pool.move(last.slot, seq.slot)
            last.slot, self.decoding[seq.slot] = seq.slot, last
        return len(self.decoding)

    def _join_decoding(self, seq: Sequence) -> None:
        """seq has read its prompt: it becomes decoding row d, in slot d."""
        self.prefilling.remove(seq)
        d = len(self.decoding)
        if seq.slot != d:
            if d in self.free:
                self.pool.move(seq.slot, d)
                self.free.remove(d)
                self.free.add(seq.slot)
            else:  # another prefilling sequence has slot d: they trade
                other = next(s for s in self.prefilling if s.slot == d)
                self.pool.swap(seq.slot, d)
                other.slot = seq.slot
            seq.slot = d
        self.decoding.append(seq)
