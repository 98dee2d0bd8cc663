"""Hostile clients against `lmforge serve`: does a bad request fail alone, and does the server stay up?

    python bench/hostile_serve.py [--src DIR] [--flood 64] [--out FILE.json]

Builds a tiny random model from a config (a character tokenizer, 2 layers; nothing is downloaded),
starts `python -m lmforge serve` on it in a subprocess (with PYTHONPATH=--src, so the same script
measures another checkout, e.g. a `git worktree` of an older commit), then sends:

* every numeric field set to NaN, +-Infinity, 1e-45, 1e-40, +-1e30, +-10**30, 2**63, 2**64, -1 and 0;
* wrong types (strings, booleans, null, lists and objects where numbers or text belong), nested
  garbage, JSON nested 100,000 deep, a lone UTF-16 surrogate, unknown logit_bias keys;
* a 60 MB body (with Content-Length, and again chunked), a 3 MB prompt, 1,000 stop strings;
* a flood: `--flood` concurrent requests, half of them valid (greedy, so their text is known from
  a run alone beforehand), half hostile, so that they share batches;
* an overload: 4 x `--flood` valid requests at once (what a limit on concurrent requests is for).

Meanwhile a poller asks for /health every 50 ms. Counted: answers by status class, 5xx, dropped
connections (the client saw no HTTP answer), valid requests answered with the right text, and the
longest /health answer time. Prints a table; --out also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

MODEL = "tiny"
VALID = {"model": MODEL, "max_tokens": 16, "temperature": 0}
NUMERIC_FIELDS = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "seed", "n", "max_tokens", "truncate_prompt_tokens"]
HOSTILE_NUMBERS = [float("nan"), float("inf"), float("-inf"), 1e-45, 1e-40, 1e30, -1e30, 10**30, -10**30,
                   2**63, 2**64, -1, 0]
WRONG_TYPES = ["hot", "", True, None, [1], {"a": 1}, [[["deep"]]]]


def build_checkpoint(folder: str) -> None:
    """A tiny random model and its tokenizer, saved as a checkpoint (runs with the measured checkout)."""
    import torch

    from lmforge.model.config import ModelConfig
    from lmforge.model.gpt import GPT
    from lmforge.tokenizer import CharTokenizer
    from lmforge.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    tokenizer = CharTokenizer.train([" ".join(chr(c) for c in range(32, 127)) + "\n"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=256))
    save_checkpoint(folder, "best", model, tokenizer, meta={})


# ---- the requests ----

def body(**changes) -> bytes:
    """A valid request's JSON with `changes`, as a hostile client may write it (NaN and Infinity literals)."""
    return json.dumps({**VALID, **changes}).encode()


def hostile_requests() -> list[tuple[str, str, bytes]]:
    """(category, path, body) of every hostile request sent one at a time."""
    cases = []
    for field in NUMERIC_FIELDS:
        for value in HOSTILE_NUMBERS:
            cases.append(("numbers", "/v1/completions", body(prompt="Hello", **{field: value})))
        for value in WRONG_TYPES:
            cases.append(("wrong types", "/v1/completions", body(prompt="Hello", **{field: value})))
    for value in [*HOSTILE_NUMBERS, *WRONG_TYPES]:  # in logit_bias, as a value and as a key
        cases.append(("logit_bias", "/v1/completions", body(prompt="Hello", logit_bias={"5": value})))
        cases.append(("logit_bias", "/v1/completions", body(prompt="Hello", logit_bias={str(value): 1})))
    garbage = [
        body(prompt=123), body(prompt={"a": [1, {"b": None}]}), body(prompt=[[["x"]]]),
        body(prompt=[]), body(prompt="\ud800"), body(prompt="Hi", stop={"a": 1}),
        body(prompt="Hi", stop=[None, 1]), body(prompt="Hi", stream="yes"),
        body(prompt="Hi", model=["tiny"]), b"[" * 100_000 + b"]" * 100_000, b"{" * 1000, b"null",
        b'{"model": "tiny", "prompt": "Hi", "max_tokens": 1e999}', b"\xff\xfe not utf-8",
    ]
    cases += [("garbage", "/v1/completions", b) for b in garbage]
    chat_garbage = [
        body(messages="Hi"), body(messages=[]), body(messages=[{"role": "user"}]),
        body(messages=[{"role": "user", "content": {"nested": [1, 2]}}]),
        body(messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=float("nan")),
        body(messages=[{"role": "user", "content": "\ud800"}]),
    ]
    cases += [("garbage", "/v1/chat/completions", b) for b in chat_garbage]
    cases.append(("stop strings", "/v1/completions", body(prompt="Hi", stop=[f"s{i}" for i in range(1000)])))
    cases.append(("stop strings", "/v1/completions", body(prompt="Hi", stop=["x" * 100_000])))
    cases.append(("big bodies", "/v1/completions", body(prompt="abc" * 1_000_000)))  # a 3 MB prompt
    return cases


def sixty_mb() -> bytes:
    return b'{"model": "tiny", "max_tokens": 4, "prompt": "' + b"a" * 60_000_000 + b'"}'


def flood_hostile() -> list[bytes]:
    """Values that, before validation, reached the worker and broke the whole batch."""
    return [body(prompt="Hello", repetition_penalty=float("nan")),
            body(prompt="Hello", repetition_penalty=1e-40),
            body(prompt="Hello", temperature=1e-45),
            body(prompt="Hello", seed=10**30, temperature=1.0),
            body(prompt="Hello", top_k=10**30, temperature=1.0),
            body(prompt="Hello", temperature=1e30)]


def valid_prompts(count: int) -> list[str]:
    return [f"Request {i}: " + "abcdefghij"[i % 10] * (1 + i % 7) for i in range(count)]


# ---- sending and counting ----

class Tally:
    """Answers by category: status classes, dropped connections (no HTTP answer at all)."""

    def __init__(self):
        self.counts: dict[str, Counter] = {}
        self.lock = threading.Lock()

        self.failures: list[str] = []  # what got a 5xx or no answer, in short

    def add(self, category: str, outcome: str, what: bytes | str = b"") -> None:
        with self.lock:
            self.counts.setdefault(category, Counter())[outcome] += 1
            if outcome in ("5xx", "dropped"):
                what = what if isinstance(what, str) else what[:120].decode("utf-8", "replace")
                self.failures.append(f"{outcome}: {what}")


def outcome(status: int | None) -> str:
    return "dropped" if status is None else f"{status // 100}xx"


def post(client: httpx.Client, path: str, content, headers: dict | None = None) -> tuple[int | None, bytes]:
    try:
        response = client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})
        return response.status_code, response.content
    except httpx.TransportError:
        return None, b""


def stream_text(client: httpx.Client, prompt: str) -> tuple[int | None, str, bool]:
    """A streamed completion: (status, joined text, whether it ended with [DONE] and no error event)."""
    try:
        with client.stream("POST", "/v1/completions", json={**VALID, "prompt": prompt, "stream": True}) as response:
            if response.status_code != 200:
                response.read()
                return response.status_code, "", False
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    except httpx.TransportError:
        return None, "", False
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    clean = bool(events) and events[-1] == "[DONE]" and not any("error" in c for c in chunks)
    return 200, "".join(c["choices"][0]["text"] for c in chunks if "choices" in c), clean


class HealthPoller(threading.Thread):
    """Asks for /health every 50 ms and keeps the longest answer time (a failed poll counts its time)."""

    def __init__(self, base_url: str):
        super().__init__(daemon=True)
        self.base_url, self.stop, self.latencies, self.failures = base_url, threading.Event(), [], 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    client.get("/health")  # a 503 is an answer too: what matters here is that it comes
                except httpx.TransportError:
                    self.failures += 1
                self.latencies.append(time.perf_counter() - start)
                self.stop.wait(0.05)


def run_bench(base_url: str, flood: int) -> dict:
    tally = Tally()
    client = httpx.Client(base_url=base_url, timeout=300)
    prompts = valid_prompts(flood)
    expected = {}  # each valid prompt's text, alone (greedy: the text a batch must reproduce)
    for prompt in prompts:
        status, content = post(client, "/v1/completions", body(prompt=prompt))
        expected[prompt] = json.loads(content)["choices"][0]["text"] if status == 200 else None
    poller = HealthPoller(base_url)
    poller.start()
    started = time.perf_counter()
    valid = Counter()

    def send_valid(prompt: str, stream: bool) -> None:
        if stream:
            status, text, clean = stream_text(client, prompt)
        else:
            status, content = post(client, "/v1/completions", body(prompt=prompt))
            text, clean = (json.loads(content)["choices"][0]["text"], True) if status == 200 else ("", False)
        tally.add("valid (flood)", outcome(status), f"valid, stream={stream}")
        valid["sent"] += 1
        valid["right text" if status == 200 and clean and text == expected[prompt] else f"failed {status}"] += 1

    def send_hostile(category: str, path: str, content) -> None:
        status, _ = post(client, path, content)
        tally.add(category, outcome(status), content if isinstance(content, bytes) else "a chunked 60 MB body")

    with ThreadPoolExecutor(8) as pool:  # the hostile requests, a few at a time
        list(pool.map(lambda case: send_hostile(*case), hostile_requests()))
    big = sixty_mb()
    send_hostile("big bodies", "/v1/completions", big)  # with Content-Length
    send_hostile("big bodies", "/v1/completions", (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20)))
    hostile = flood_hostile()
    with ThreadPoolExecutor(flood) as pool:  # the flood: valid and hostile requests mixed, batched together
        jobs = []
        for i, prompt in enumerate(prompts[: flood // 2]):
            jobs.append(pool.submit(send_valid, prompt, stream=i % 2 == 1))
            jobs.append(pool.submit(send_hostile, "hostile (flood)", "/v1/completions", hostile[i % len(hostile)]))
        [job.result() for job in jobs]
    overload = Counter()
    with ThreadPoolExecutor(4 * flood) as pool:  # more valid requests at once than a server should queue
        def send_overload(prompt: str) -> None:
            response = None
            try:
                response = client.post("/v1/completions", json={**VALID, "prompt": prompt})
            except httpx.TransportError:
                pass
            status = response.status_code if response is not None else None
            tally.add("overload", outcome(status))
            overload[status] += 1
            if status == 429:
                overload["429 with Retry-After"] += "retry-after" in response.headers
        list(pool.map(send_overload, [prompts[i % len(prompts)] for i in range(4 * flood)]))
    poller.stop.set()
    poller.join()
    final_status, _ = post(client, "/v1/completions", body(prompt="Hello"))
    return {"counts": {k: dict(v) for k, v in tally.counts.items()}, "valid": dict(valid),
            "failures": sorted(set(tally.failures)),
            "overload": {str(k): v for k, v in overload.items()}, "seconds": time.perf_counter() - started,
            "health_max_s": max(poller.latencies), "health_polls": len(poller.latencies),
            "health_failures": poller.failures, "served_afterwards": final_status == 200}


def print_table(report: dict) -> None:
    columns = ["2xx", "4xx", "5xx", "dropped"]
    print(f"{'category':<18}{'sent':>6}" + "".join(f"{c:>9}" for c in columns))
    totals = Counter()
    for category, counts in report["counts"].items():
        totals.update(counts)
        print(f"{category:<18}{sum(counts.values()):>6}" + "".join(f"{counts.get(c, 0):>9}" for c in columns))
    print(f"{'all':<18}{sum(totals.values()):>6}" + "".join(f"{totals.get(c, 0):>9}" for c in columns))
    for failure in report["failures"][:12]:
        print(f"  {failure}")
    if len(report["failures"]) > 12:
        print(f"  ... {len(report['failures']) - 12} more kinds (see --out)")
    valid = report["valid"]
    print(f"valid flood requests with the right text: {valid.get('right text', 0)}/{valid.get('sent', 0)}")
    print(f"overload answers by status: {report['overload']}")
    print(f"/health: longest answer {report['health_max_s'] * 1000:.0f} ms over {report['health_polls']} polls, "
          f"{report['health_failures']} failed; a valid request served afterwards: {report['served_afterwards']}")


# ---- the server ----

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(base_url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"),
                        help="the lmforge source folder to serve with (default: this checkout's)")
    parser.add_argument("--flood", type=int, default=64, help="concurrent requests in the flood")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--build-checkpoint", help=argparse.SUPPRESS)  # internal: runs with PYTHONPATH=--src
    args = parser.parse_args()
    if args.build_checkpoint:
        build_checkpoint(args.build_checkpoint)
        return
    env = {**os.environ, "PYTHONPATH": args.src, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, __file__, "--build-checkpoint", tmp], env=env, check=True)
        port = free_port()
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(Path(tmp) / "best"), "--port",
                                   str(port), "--model-name", MODEL], env=env, stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(base_url, server)
            report = run_bench(base_url, args.flood)
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
        report["server_log_tail"] = (Path(tmp) / "server.log").read_text()[-2000:]
    report["src"] = args.src
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
