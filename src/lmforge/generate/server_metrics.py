"""What `lmforge serve` reports at /metrics, in Prometheus' text format (no client library needed).

    lmforge_requests_total{path, status}             counter: answered requests, by endpoint and HTTP status
    lmforge_prompt_tokens_total                      counter: prompt tokens of finished generations
    lmforge_generation_tokens_total                  counter: tokens generated
    lmforge_time_to_first_token_seconds              histogram: from queueing a sample to its first token
    lmforge_time_per_output_token_seconds            histogram: mean time between a sample's later tokens
    lmforge_queue_length, lmforge_running_rows, lmforge_requests_in_flight   gauges, read when scraped

Counters and histograms are updated by the event loop (statuses) and by the worker thread (tokens,
latencies), so one lock guards them. Names and buckets follow vLLM's where they overlap.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PER_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative buckets (le = "less or equal"), a sum and a count, as Prometheus histograms are."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return out + [f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]


class ServerMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = self.generation_tokens = 0
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.time_per_output_token = Histogram(PER_TOKEN_BUCKETS)

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def observe_sample(self, prompt_tokens: int, generated: int, queued_at: float, first_token_at: float | None,
                       finished_at: float | None = None) -> None:
        """A finished sample (one row of a request): its token counts and latencies (time.monotonic() values)."""
        finished_at = time.monotonic() if finished_at is None else finished_at
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generated
            if first_token_at is not None:
                self.time_to_first_token.observe(first_token_at - queued_at)
                if generated > 1:
                    self.time_per_output_token.observe((finished_at - first_token_at) / (generated - 1))

    def render(self, gauges: dict[str, float]) -> str:
        """The Prometheus text exposition of every metric, with `gauges` (name -> value) read just now."""
        with self._lock:
            lines = ["# HELP lmforge_requests_total Requests answered, by endpoint and HTTP status.",
                     "# TYPE lmforge_requests_total counter"]
            lines += [f'lmforge_requests_total{{path="{path}",status="{status}"}} {n}'
                      for (path, status), n in sorted(self.requests.items())]
            for name, value, doc in (("prompt_tokens", self.prompt_tokens, "Prompt tokens of finished samples."),
                                     ("generation_tokens", self.generation_tokens, "Tokens generated.")):
                lines += [f"# HELP lmforge_{name}_total {doc}", f"# TYPE lmforge_{name}_total counter",
                          f"lmforge_{name}_total {value}"]
            for name, histogram, doc in (
                    ("time_to_first_token_seconds", self.time_to_first_token,
                     "From queueing a sample to its first token."),
                    ("time_per_output_token_seconds", self.time_per_output_token,
                     "Mean time between a sample's tokens after the first.")):
                lines += [f"# HELP lmforge_{name} {doc}", f"# TYPE lmforge_{name} histogram",
                          *histogram.lines(f"lmforge_{name}")]
        for name, value in gauges.items():
            lines += [f"# TYPE lmforge_{name} gauge", f"lmforge_{name} {_number(value)}"]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
