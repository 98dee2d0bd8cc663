"""The one thread that runs the model for the server, serving waiting requests together as a batch.

The model is not thread-safe, so only this thread touches it. When it is free it takes every request
that has arrived meanwhile (up to the engine's max_batch_size) and runs them as one batch, each with
its own prompt, sampling settings, seed and token budget. Decoding on a CPU is bound by reading the
weights, and a batch reads them once for all its rows (GPT-2 124M fp32 on 2 cores: 42 tokens/s alone,
201 in a batch of 8), so concurrent clients share that read instead of queueing behind each other. A
batch starts batch_window_s after its first request arrived and runs until its last request is done;
requests that come in meanwhile form the next one.

A problem in one row never fails the others: when a batch raises, each of its unfinished rows is run
again alone, and only a row that fails alone gets the error. Every row has a seed (one is drawn for a
request without), and a row gives the same tokens alone as in a batch, so a row that had streamed part
of its text goes on from where it was, without sending that part twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from .engine import TextEngine, TextStream
from .limits import ServerLimits
from .logprobs import TokenLogprobs, token_logprobs
from .server_metrics import ServerMetrics
from .params import Completion, SamplingParams

log = logging.getLogger("lmforge.serve")

# How long the worker, once a request arrives, waits for others to join its batch: clients that start
# together do not arrive together (8 client threads of bench/serve_batching.py: spread over 30 ms), and
# without a wait the first would run alone while the rest wait for its whole generation. It adds this much
# to the first token of a lone request: about two decode steps of GPT-2 124M on a 2-core CPU.
BATCH_WINDOW_S = 0.05
UNHEALTHY_AFTER = 3           # this many batches in a row where every row failed: the worker reports unhealthy
BATCH_SIZES_KEPT = 10_000     # batch_sizes keeps the most recent ones only


class QueueFull(Exception):
    """The worker's queue has no room for a request's samples."""


class WorkerStopped(Exception):
    """The worker thread is not running (it died, or the server is closing)."""


class GenerationWorker:
    """Runs the model on one background thread; the event loop submits requests and awaits their pieces."""

    def __init__(self, engine: TextEngine, batch_window_s: float = BATCH_WINDOW_S,
                 max_queued: int = ServerLimits.max_queued, metrics: ServerMetrics | None = None):
        self.engine, self.metrics = engine, metrics
        self.batch_window_s, self.max_queued = batch_window_s, max_queued
        self.batch_sizes: list[int] = []  # requests served by each recent batch, oldest first
        self.running = 0  # rows of the batch running now
        self.last_batch_s = 0.0
        self._failed_batches: deque[bool] = deque(maxlen=UNHEALTHY_AFTER)  # recent batches: did every row fail?
        self._pending: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="lmforge-generate", daemon=True)
        self._thread.start()

    # ---- the event loop's side ----

    def queued(self) -> int:
        """Requests waiting for the next batch."""
        return self._pending.qsize()

    def problem(self) -> str | None:
        """Why the worker cannot serve now, or None when it can."""
        if not self._thread.is_alive():
            return "the generation thread is not running"
        if len(self._failed_batches) == UNHEALTHY_AFTER and all(self._failed_batches):
            return f"the last {UNHEALTHY_AFTER} batches failed"
        return None

    @property
    def kv_slots(self) -> int:
        """Sequences that can hold a KV cache at once."""
        return self.engine.max_batch_size

    def kv_slots_in_use(self) -> int:
        """Sequences holding a KV cache now: a static batch has one per row."""
        return self.running

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: about one batch."""
        return max(1, math.ceil(self.last_batch_s))

    def submit(self, rows: list[tuple[list[int], SamplingParams]], logprobs_top: int | None = None,
               logprobs_echo: bool = False) -> list[Request]:
        """Queue one request's samples (token ids, settings) together, or none of them: QueueFull.

        Only the event loop submits, so the room seen here cannot shrink before the samples are queued."""
        if not self._thread.is_alive():
            raise WorkerStopped("the generation thread is not running")
        if self.queued() + len(rows) > self.max_queued:
            raise QueueFull(f"{self.queued()} samples are waiting already (at most {self.max_queued})")
        loop = asyncio.get_running_loop()
        requests = [Request(ids, _with_seed(params), loop, asyncio.Queue(), logprobs_top=logprobs_top,
                            logprobs_echo=logprobs_echo) for ids, params in rows]
        for request in requests:
            self._pending.put(request)
        return requests

    def close(self) -> None:
        """Stop the thread once the batch it is running (if any) is done."""
        self._pending.put(None)

    # ---- the worker thread ----

    def _serve(self) -> None:
        while (first := self._pending.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.engine.max_batch_size:
                try:
                    request = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if request is None:  # closing: finish this batch first
                    self._pending.put(None)
                    break
                batch.append(request)
            batch = [request for request in batch if not request.cancelled]
            if batch:
                self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        self._note_batch_size(len(batch))
        started = time.monotonic()
        self.running = len(batch)
        try:
            self._generate(batch)
            all_failed = False
        except Exception as exc:
            log.warning("a batch of %d failed (%s: %s); running its rows alone", len(batch), type(exc).__name__, exc)
            all_failed = not self._run_alone(batch, exc)
        finally:
            self.running = 0
        self.last_batch_s = time.monotonic() - started
        self._failed_batches.append(all_failed)

    def _run_alone(self, batch: list[Request], batch_error: Exception) -> bool:
        """Run each unfinished row of a failed batch alone; fail only those that fail alone. True if any row
        of the batch was served."""
        if len(batch) == 1:
            batch[0].fail(batch_error)
            return False
        served = False
        for request in batch:
            if request.done or request.cancelled:
                served |= request.done
                continue
            try:
                self._generate([request])
                served = True
            except Exception as exc:
                log.warning("a request failed alone too (%s: %s)", type(exc).__name__, exc)
                request.fail(exc)
        return served

    def _generate(self, batch: list[Request]) -> None:
        for request in batch:
            request.start_attempt(TextStream(self.engine.tokenizer, request.params.stop))
        prompts, params = [r.prompt_ids for r in batch], [r.params for r in batch]
        for row, piece in self.engine.stream_batch(prompts, params, [r.stream for r in batch]):
            request = batch[row]
            if request.first_token_at is None:
                request.first_token_at = time.monotonic()
            request.deliver(piece)
            if request.stream.finish_reason is not None:  # answered now, not when the whole batch is
                if request.logprobs_top is not None:
                    request.logprobs = self._logprobs_of(request)
                if self.metrics is not None:
                    self.metrics.observe_sample(len(request.prompt_ids), len(request.stream.token_ids),
                                                request.queued_at, request.first_token_at)
                request.finish()

    def _logprobs_of(self, request: Request) -> TokenLogprobs:
        """The log-probabilities a finished request asked for: its prompt and tokens read again in one pass
        (the end-of-text token that ended it included, as vLLM reports it)."""
        stop = [] if request.stream.stop_token is None else [request.stream.stop_token]
        ids = request.prompt_ids + request.stream.token_ids + stop
        first = 0 if request.logprobs_echo else len(request.prompt_ids)
        return token_logprobs(self.engine.token_logprobs(ids), ids, first, request.logprobs_top)

    def _note_batch_size(self, size: int) -> None:
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 2 * BATCH_SIZES_KEPT:  # trimmed now and then, not at every batch
            del self.batch_sizes[:-BATCH_SIZES_KEPT]


def _with_seed(params: SamplingParams) -> SamplingParams:
    """Every row gets a seed, so that a row run again alone (after its batch failed) repeats its tokens."""
    return params if params.seed is not None else replace(params, seed=secrets.randbits(63))


_DONE = object()


@dataclass
class Request:
    """One prompt to complete (token ids), and the way back to the coroutine waiting for it."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # text pieces, then _DONE (or an exception)
    stream: TextStream | None = None  # the current attempt's; finish_reason and token_ids at the end
    cancelled: bool = False
    done: bool = False
    sent_chars: int = 0  # text handed to the client so far, over all attempts
    made_chars: int = 0  # text produced by the current attempt
    logprobs_top: int | None = None  # log-probabilities wanted, with this many likeliest tokens per position
    logprobs_echo: bool = False  # ... of the prompt's tokens too
    logprobs: TokenLogprobs | None = None  # computed on the worker thread when the text is complete
    queued_at: float = field(default_factory=time.monotonic)  # for the latency metrics
    first_token_at: float | None = None

    # -- on the event loop --

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it comes; returns when the request is done, raises what went wrong in the worker."""
        try:
            while (item := await self.queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.cancel()  # done, or the client went away: the batch stops generating for it

    def completion(self) -> Completion:
        """The whole answer, once pieces() has returned."""
        return Completion(text=self.stream.text, token_ids=self.stream.token_ids, prompt_tokens=len(self.prompt_ids),
                          finish_reason=self.stream.finish_reason)

    def cancel(self) -> None:
        self.cancelled = True
        if self.stream is not None:
            self.stream.cancel()

    # -- on the worker thread --

    def start_attempt(self, stream: TextStream) -> None:
        self.stream, self.made_chars = stream, 0
        if self.cancelled:  # cancelled while its earlier attempt failed
            stream.cancel()

    def deliver(self, piece: str) -> None:
        """Send the part of `piece` the client does not have yet (a second attempt repeats the first one's text)."""
        already = max(0, self.sent_chars - self.made_chars)
        self.made_chars += len(piece)
        if fresh := piece[already:]:
            self.sent_chars += len(fresh)
            self._send(fresh)

    def finish(self) -> None:
        self.done = True
        self._send(_DONE)

    def fail(self, exc: Exception) -> None:
        self._send(exc)

    def _send(self, item) -> None:
        if not self.cancelled:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                self.cancelled = True
