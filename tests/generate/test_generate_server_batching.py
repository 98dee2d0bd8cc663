"""Requests with different per-request fields (top_k, min_p, top_p, repetition_penalty, stop, seeds, n) and
prompt lengths, served as one batched, left-padded run, get exactly what each gets alone, and what an
independent reference gives: a plain loop that re-reads the whole sequence every step, with no KV cache,
no padding and no batch."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from lmforge.generate.chat import CHATML
from lmforge.generate.engine import Engine
from lmforge.generate.params import SamplingParams
from lmforge.generate.sampling import sample_next
from lmforge.generate.server import create_app, running_in_background
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer

MODEL = "tiny"

REQUESTS = [  # prompts of 1 to 40 characters: the batch pads them on the left
    dict(prompt="H", max_tokens=14, temperature=0),
    dict(prompt="Hello, world! abc", max_tokens=10, temperature=1.0, seed=1, top_k=3),
    dict(prompt="xyz? " * 8, max_tokens=12, temperature=0.8, seed=2, min_p=0.2),
    dict(prompt="abcdef", max_tokens=16, temperature=0, repetition_penalty=1.5),
    dict(prompt="world", max_tokens=12, temperature=1.2, seed=3, top_p=0.8, repetition_penalty=0.7),
    dict(prompt="Hello", max_tokens=12, temperature=1.0, seed=5, n=2, top_k=6, min_p=0.05),
    dict(prompt="fed", max_tokens=20, temperature=0.9, seed=-7, stop="PICK"),  # a stop string from its own text
]


class GatedEngine(Engine):
    """Holds its next batch at a gate, so that the requests sent meanwhile queue up and form one batch."""

    gate: threading.Event | None = None
    waiting = threading.Event()

    def stream_batch(self, prompts, params, streams):
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.waiting.set()
            gate.wait(timeout=30)
        yield from super().stream_batch(prompts, params, streams)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=64))
    return GatedEngine(model, tokenizer)


@torch.no_grad()
def reference(model: GPT, tokenizer, prompt: str, params: SamplingParams) -> tuple[str, str]:
    """(text, finish_reason) by the book: the whole sequence through the model at every step."""
    model.eval()
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    tokens, new = tokenizer.encode(prompt), []
    for _ in range(params.max_new_tokens):
        logits = model(torch.tensor([tokens]))[0, -1]
        context = torch.tensor(tokens) if params.repetition_penalty != 1.0 else None
        token = int(sample_next(logits, params, generator, context))
        if token == tokenizer.eot_id:
            return tokenizer.decode(new), "stop"
        tokens.append(token)
        new.append(token)
        text = tokenizer.decode(new)
        found = [text.index(s) for s in params.stop if s in text]
        if found:
            return text[:min(found)], "stop"
    return tokenizer.decode(new), "length"


def request_params(request: dict, sample: int) -> SamplingParams:
    seed = request.get("seed")
    stop = request.get("stop")
    return SamplingParams(max_new_tokens=request["max_tokens"], temperature=request["temperature"],
                          top_k=request.get("top_k", 0), top_p=request.get("top_p", 1.0),
                          min_p=request.get("min_p", 0.0), repetition_penalty=request.get("repetition_penalty", 1.0),
                          seed=None if seed is None else seed + sample, stop=[stop] if stop else [])


@pytest.fixture(scope="module")
def requests_and_expected(engine):
    """The requests (the stop string picked from the text the reference gives without it), and for each the
    reference's (text, finish_reason) of every sample."""
    requests = []
    for request in REQUESTS:
        if request.get("stop") == "PICK":
            text, _ = reference(engine.model, engine.tokenizer, request["prompt"],
                                request_params({**request, "stop": None}, 0))
            assert len(text) >= 8, "the model ended too soon to pick a stop string"
            request = {**request, "stop": text[5:7]}
        requests.append(request)
    expected = [[reference(engine.model, engine.tokenizer, r["prompt"], request_params(r, j))
                 for j in range(r.get("n", 1))] for r in requests]
    assert expected[-1][0][1] == "stop"
    return requests, expected


def served(url: str, request: dict) -> list[tuple[str, str]]:
    response = httpx.post(f"{url}/v1/completions", json={**request, "model": MODEL}, timeout=120)
    assert response.status_code == 200, response.text
    return [(c["text"], c["finish_reason"]) for c in response.json()["choices"]]


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
def test_each_request_alone_matches_the_reference(engine, requests_and_expected, scheduler):
    requests, expected = requests_and_expected
    with running_in_background(create_app(engine, MODEL, CHATML, batch_window_s=0, scheduler=scheduler)) as url:
        assert [served(url, r) for r in requests] == expected


def test_requests_batched_together_match_the_reference(engine, requests_and_expected):
    requests, expected = requests_and_expected
    app = create_app(engine, MODEL, CHATML, scheduler="static")
    worker = app.state.worker
    with running_in_background(app) as url, ThreadPoolExecutor(len(requests) + 1) as pool:
        gate = engine.gate = threading.Event()
        engine.waiting.clear()
        blocker = pool.submit(served, url, dict(prompt="Hi", max_tokens=2, temperature=0))
        assert engine.waiting.wait(timeout=30)
        futures = [pool.submit(served, url, r) for r in requests]
        rows = sum(r.get("n", 1) for r in requests)
        deadline = time.monotonic() + 30
        while worker.queued() < rows and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        together = [f.result() for f in futures]
        blocker.result()
    assert worker.batch_sizes == [1, rows]  # the blocker, then every row of every request in one batch
    assert together == expected


def test_requests_joining_and_leaving_a_continuous_batch_match_the_reference(engine, requests_and_expected):
    """Continuous scheduling with 3 KV slots and prefill chunks of 4 tokens: the requests arrive while
    others run, wait for a slot, read their prompts in pieces beside rows that are decoding, take over
    slots others left, and still each get the reference's text."""
    requests, expected = requests_and_expected
    slot_mb = 2 * 2 * 64 * 32 * 4 / 2**20  # 2 layers x (keys, values) x 64 positions x 32 numbers x 4 bytes
    app = create_app(engine, MODEL, CHATML, scheduler="continuous", kv_cache_mb=3.5 * slot_mb, prefill_chunk=4)
    batcher = app.state.worker.batcher
    assert batcher.pool.n_slots == 3
    rows_seen = []
    step = batcher.step

    def counting_step():
        rows_seen.append((len(batcher.decoding), len(batcher.prefilling), len(batcher.waiting)))
        return step()

    batcher.step = counting_step
    with running_in_background(app) as url, ThreadPoolExecutor(len(requests)) as pool:
        futures = []
        for request in requests:
            futures.append(pool.submit(served, url, request))
            time.sleep(0.02)  # arrivals spread over the first rounds
        together = [f.result() for f in futures]
    assert together == expected
    assert max(decoding for decoding, _, _ in rows_seen) == 3  # every slot decoding at once at some point
    assert any(decoding and prefilling for decoding, prefilling, _ in rows_seen)  # prompts read beside decoding
    assert any(waiting for _, _, waiting in rows_seen)  # requests waited for a free slot
