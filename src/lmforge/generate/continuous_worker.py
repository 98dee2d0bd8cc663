"""The server's generation thread with continuous batching: requests join the running batch between steps.

GenerationWorker (worker.py) serves requests in static batches: whoever arrives while a batch runs
waits for all of it. Here the thread runs generate.continuous.ContinuousBatcher round after round;
before each round it takes in every request that has arrived (each starts reading its prompt at
once, if a KV slot is free) and drops the ones whose client went away; after each round it turns the
new tokens into text for each request (stop strings, end-of-text, the token budget), answers the
finished ones and frees their slots.

A failure keeps to the requests it touches, as in the static worker: when a round raises, every
unfinished request is run again alone (static path, same tokens, the text already sent is not sent
twice) and only a request that fails alone gets the error. The batcher then starts empty.
"""

from __future__ import annotations

import logging
import queue
import time

from .continuous import ContinuousBatcher
from .engine import TextEngine, TextStream
from .limits import KV_CACHE_MB, PREFILL_CHUNK, ServerLimits
from .server_metrics import ServerMetrics
from .worker import GenerationWorker, Request

log = logging.getLogger("lmforge.serve")


class ContinuousWorker(GenerationWorker):
    """GenerationWorker's interface (submit, queued, problem, close), scheduling continuously."""

    def __init__(self, engine: TextEngine, max_queued: int = ServerLimits.max_queued,
                 metrics: ServerMetrics | None = None, kv_cache_mb: float = KV_CACHE_MB,
                 prefill_chunk: int = PREFILL_CHUNK):
        self.batcher: ContinuousBatcher = engine.continuous_batcher(kv_cache_mb, prefill_chunk)
        self.active: dict[int, Request] = {}  # every request the batcher holds, by its key
        super().__init__(engine, batch_window_s=0.0, max_queued=max_queued, metrics=metrics)

    def queued(self) -> int:
        """Requests not started yet: arrived, or taken in but waiting for a KV slot."""
        return self._pending.qsize() + len(self.batcher.waiting)

    @property
    def kv_slots(self) -> int:
        return self.batcher.pool.n_slots

    def kv_slots_in_use(self) -> int:
        return self.batcher.slots_in_use

    # ---- the worker thread ----

    def _serve(self) -> None:
        closing = False
        while True:
            closing |= self._take_arrivals(wait=not self.batcher.busy and not closing)
            self._drop_cancelled()
            if not self.batcher.busy:
                if closing:
                    return
                continue
            started = time.monotonic()
            try:
                for key, token in self.batcher.step():
                    self._take_token(self.active[key], token)
            except Exception as exc:
                log.warning("a round of %d rows failed (%s: %s); running its requests alone",
                            len(self.active), type(exc).__name__, exc)
                self._recover(exc)
                continue
            finally:
                self.running = len(self.batcher.decoding) + len(self.batcher.prefilling)
            self.last_batch_s = time.monotonic() - started
            self._failed_batches.append(False)

    def _take_arrivals(self, wait: bool) -> bool:
        """Add every request that has arrived to the batcher (waiting for one if `wait`); True when closing."""
        while True:
            try:
                request = self._pending.get(timeout=None) if wait else self._pending.get_nowait()
            except queue.Empty:
                return False
            wait = False
            if request is None:
                return True
            if request.cancelled:
                continue
            request.start_attempt(TextStream(self.engine.tokenizer, request.params.stop))
            if request.params.max_new_tokens == 0:
                request.deliver(request.stream.finish("length"))
                self._answer(request)
                continue
            key = id(request)
            self.active[key] = request
            self.batcher.add(key, request.prompt_ids, request.params, self.engine.generator_for(request.params.seed))

    def _drop_cancelled(self) -> None:
        for key, request in list(self.active.items()):
            if request.cancelled:
                self.batcher.remove(key)
                del self.active[key]

    def _take_token(self, request: Request, token: int) -> None:
        if request.cancelled:  # its client went away during the round: no answer, no metrics
            self.batcher.remove(id(request))
            del self.active[id(request)]
            return
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        stream = request.stream
        params = request.params
        request.deliver(stream.take(token, None if params.ignore_eos else self.engine.tokenizer.eot_id,
                                    params.max_new_tokens))
        if stream.finish_reason is not None:  # stop string, end-of-text, or the budget: its slot is free now
            key = id(request)
            self.batcher.remove(key)
            del self.active[key]
            self._answer(request)

    def _answer(self, request: Request) -> None:
        if request.logprobs_top is not None:
            request.logprobs = self._logprobs_of(request)
        if self.metrics is not None:
            self.metrics.observe_sample(len(request.prompt_ids), len(request.stream.token_ids),
                                        request.queued_at, request.first_token_at)
        request.finish()

    def _recover(self, exc: Exception) -> None:
        """After a failed round: every request the batcher held runs alone; the batcher starts empty."""
        requests = list(self.active.values())
        self.active.clear()
        for key in self.batcher.keys():
            self.batcher.remove(key)
        self.running = len(requests)
        served = self._run_alone(requests, exc)
        self.running = 0
        self._failed_batches.append(not served)
