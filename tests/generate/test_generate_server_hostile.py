"""The server against hostile or careless clients: bad fields, big bodies, floods, no key, a wrong Host,
a broken model. Each bad request fails alone with a 4xx (or its own 500), the others are served."""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from lmforge.cli.generate_cmds import allowed_hosts
from lmforge.generate import guards
from lmforge.generate.chat import CHATML
from lmforge.generate.engine import Engine
from lmforge.generate.limits import ServerLimits
from lmforge.generate.server import create_app, running_in_background
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer

# GatedEngine holds and breaks batches in stream_batch, which only the static scheduler calls; the continuous
# scheduler's own failures and limits are tested in test_generate_server_continuous.py.
static_app = partial(create_app, scheduler="static")

MODEL = "tiny"
VALID = {"model": MODEL, "prompt": "Hello", "max_tokens": 6, "temperature": 0}


class GatedEngine(Engine):
    """A real engine whose next batch can be held at a gate, and that can be told to fail.

    poison: a prompt (token ids) that breaks any batch holding it, alone too: the batch raises as soon as
    `may_fail` is set (at once unless a test clears it), or at its end.
    """

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.gate: threading.Event | None = None
        self.waiting = threading.Event()
        self.poison: list[int] | None = None
        self.may_fail = threading.Event()
        self.may_fail.set()
        self.batches: list[int] = []

    def stream_batch(self, prompts, params, streams):
        self.batches.append(len(prompts))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.waiting.set()
            gate.wait(timeout=30)
        poisoned = self.poison is not None and any(list(p) == self.poison for p in prompts)
        for event in super().stream_batch(prompts, params, streams):
            if poisoned and self.may_fail.is_set():
                raise RuntimeError("a row broke the batch")
            yield event
        if poisoned:
            raise RuntimeError("a row broke the batch")


def tiny_model():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["<|im_start|>system user assistant\n<|im_end|> Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64))
    return model, tokenizer


@pytest.fixture(scope="module")
def engine():
    return GatedEngine(*tiny_model())


@pytest.fixture(scope="module")
def http(engine):
    with TestClient(static_app(engine, MODEL, CHATML)) as client:
        yield client


def post_raw(http, body: dict, path: str = "/v1/completions"):
    """Send JSON as a careless client may write it: json.dumps writes NaN and Infinity as bare literals."""
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- every field checked ----

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field, value", [
    *[(field, bad) for field in ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                                 "frequency_penalty"] for bad in (NAN, INF, -INF)],
    ("temperature", 1e30), ("temperature", -1e-45), ("repetition_penalty", 1e-40), ("repetition_penalty", 0),
    ("repetition_penalty", 11), ("top_p", 0), ("top_p", 1.5), ("min_p", 1.01), ("min_p", -0.1),
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("top_k", -1), ("top_k", 10**30),
    ("seed", 10**30), ("seed", 2**63), ("seed", -2**63 - 1), ("n", 0), ("n", 17), ("n", 10**30),
    ("max_tokens", 0), ("max_tokens", 10**30), ("max_tokens", 1025), ("truncate_prompt_tokens", 0),
    ("stop", ["s"] * 17), ("stop", "x" * 257), ("stop", ["ok", "x" * 257]),
    ("logit_bias", {"5": 101}), ("logit_bias", {"5": NAN}), ("logit_bias", {"abc": 1}), ("logit_bias", {"-1": 1}),
    ("logit_bias", {"100000": 1}), ("logit_bias", {"9" * 5000: 1}), ("logit_bias", {str(i): 1 for i in range(301)}),
])
def test_an_out_of_range_field_is_a_400_naming_it(http, field, value):
    response = post_raw(http, {**VALID, field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field, value", [
    ("temperature", "0.5"), ("temperature", True), ("temperature", None), ("top_k", 2.0), ("top_k", "3"),
    ("n", True), ("seed", 1.5), ("stream", "yes"), ("stream", 1), ("model", ["tiny"]), ("prompt", 123),
    ("prompt", {"a": [1, {"b": None}]}), ("prompt", [[["x"]]]), ("prompt", []), ("prompt", ["a"] * 17),
    ("prompt", "\ud800"), ("stop", {"a": 1}), ("stop", [None]), ("logit_bias", [1, 2]), ("max_tokens", [8]),
])
def test_a_wrong_type_or_nested_garbage_is_a_400_naming_the_field(http, field, value):
    response = post_raw(http, {**VALID, field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's JSON parser goes
    b"{" * 1000, b"null", b"\xff\xfe not UTF-8", b'{"model": "tiny", "prompt": "Hi", "max_tokens": 1e999}',
])
def test_unparseable_bodies_are_400(http, body):
    response = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("messages", [
    "Hi", [], [{"role": "user"}], [{"role": "user", "content": {"nested": [1, 2]}}],
    [{"role": "robot", "content": "Hi"}], [{"role": "user", "content": "\udfff"}],
])
def test_chat_messages_garbage_is_a_400(http, messages):
    response = post_raw(http, {**VALID, "messages": messages}, "/v1/chat/completions")
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_a_tiny_temperature_is_greedy(http):
    greedy = post_raw(http, VALID).json()["choices"][0]["text"]
    for temperature in (1e-45, 1e-3, 0.0099):
        assert post_raw(http, {**VALID, "temperature": temperature, "seed": 1}).json()["choices"][0]["text"] == greedy


def test_extreme_but_allowed_values_are_served(http):
    for change in [dict(seed=2**63 - 1, n=16, temperature=1.0), dict(seed=-2**63, temperature=1.0),
                   dict(repetition_penalty=0.01), dict(repetition_penalty=10), dict(temperature=100, top_k=10**6),
                   dict(min_p=1.0, temperature=1.0), dict(logit_bias={"0": -100, "3": 100})]:
        response = post_raw(http, {**VALID, **change})
        assert response.status_code == 200, (change, response.text)


# ---- the context ----

def test_prompt_plus_max_tokens_beyond_the_context_is_a_400(http):
    response = post_raw(http, {**VALID, "prompt": "a" * 60, "max_tokens": 5})  # 65 > 64
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
    assert "maximum context length is 64 tokens" in response.json()["error"]["message"]
    chat = post_raw(http, {**VALID, "messages": [{"role": "user", "content": "a" * 100}]}, "/v1/chat/completions")
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"


def test_without_max_tokens_the_answer_takes_the_room_left(http):
    body = {k: v for k, v in VALID.items() if k != "max_tokens"}
    response = post_raw(http, {**body, "prompt": "a" * 60})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 4


def test_truncation_keeps_the_prompts_last_tokens(http, engine):
    prompt = "abcdefxyz" * 10
    response = post_raw(http, {**VALID, "prompt": prompt, "truncate_prompt_tokens": 20})
    alone = post_raw(http, {**VALID, "prompt": prompt[-20:]})
    assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 20
    assert response.json()["choices"][0]["text"] == alone.json()["choices"][0]["text"]


# ---- one bad row never fails the others ----

def test_a_valid_request_sent_with_hostile_ones_is_served():
    """Before the checks, a NaN repetition_penalty reached the model and every request of its batch got a 500."""
    engine = GatedEngine(*tiny_model())
    with running_in_background(static_app(engine, MODEL, CHATML, batch_window_s=0.2)) as url:
        hostile = [{"repetition_penalty": NAN}, {"repetition_penalty": 1e-40}, {"temperature": 1e-45},
                   {"seed": 10**30}]
        alone = httpx.post(f"{url}/v1/completions", json=VALID).json()["choices"][0]["text"]
        with ThreadPoolExecutor(8) as pool:
            bad = [pool.submit(httpx.post, f"{url}/v1/completions", content=json.dumps({**VALID, **h}),
                               headers={"content-type": "application/json"}) for h in hostile]
            good = [pool.submit(httpx.post, f"{url}/v1/completions", json=VALID) for _ in range(4)]
            assert [f.result().status_code for f in bad] == [400, 400, 200, 400]  # 1e-45 is greedy
            assert [f.result().json()["choices"][0]["text"] for f in good] == [alone] * 4


@pytest.mark.parametrize("midway", [False, True])
def test_a_row_that_breaks_its_batch_fails_alone_and_the_others_get_their_text(midway):
    """A row that passes the checks but breaks the model: its batch is run again row by row; only it fails,
    and a streamed row that had sent part of its text (midway) goes on without repeating it."""
    engine = GatedEngine(*tiny_model())
    app = static_app(engine, MODEL, CHATML)
    requests = [dict(prompt="Hello", max_tokens=12, temperature=0), dict(prompt="abc", max_tokens=10, temperature=1.0,
                                                                           seed=4, top_k=5, stop=["zz"])]
    with running_in_background(app) as url:
        alone = [httpx.post(f"{url}/v1/completions", json={**r, "model": MODEL}).json() for r in requests]
        engine.poison = engine.encode("xyz?")
        if midway:
            engine.may_fail.clear()  # the batch fails once the streamed row has sent some text
        gate = engine.gate = threading.Event()
        engine.waiting.clear()
        with ThreadPoolExecutor(4) as pool:
            blocker = pool.submit(httpx.post, f"{url}/v1/completions", json={**VALID, "max_tokens": 2})
            assert engine.waiting.wait(timeout=30)
            before = len(app.state.worker.batch_sizes)
            whole = pool.submit(httpx.post, f"{url}/v1/completions", json={**requests[0], "model": MODEL},
                                timeout=60)
            streamed = pool.submit(_streamed_text, url, {**requests[1], "model": MODEL}, engine.may_fail)
            broken = pool.submit(httpx.post, f"{url}/v1/completions", json={**VALID, "prompt": "xyz?"}, timeout=60)
            wait_until(lambda: app.state.worker.queued() == 3)
            gate.set()
            assert broken.result().status_code == 500
            assert whole.result().json()["choices"][0]["text"] == alone[0]["choices"][0]["text"]
            assert streamed.result() == (alone[1]["choices"][0]["text"], None)
            assert blocker.result().status_code == 200
        assert app.state.worker.batch_sizes[before:] == [3]  # one batch of three, then its rows alone
        assert engine.batches[-3:] == [1, 1, 1]
        assert httpx.get(f"{url}/health").status_code == 200  # two of three rows were served: healthy


def _streamed_text(url: str, body: dict, first_text: threading.Event | None = None) -> tuple[str, dict | None]:
    """The text of a streamed completion, and its error event (None if none); sets first_text on the first text."""
    events, chunks = [], []
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            events += [line[6:]] if line.startswith("data: ") else []
            if events and line.startswith("data: {"):
                chunks.append(json.loads(events[-1]))
                if first_text is not None and chunks[-1].get("choices", [{}])[0].get("text"):
                    first_text.set()
    assert events[-1] == "[DONE]"
    error = next((c["error"] for c in chunks if "error" in c), None)
    return "".join(c["choices"][0]["text"] for c in chunks if "choices" in c), error


def test_a_stream_that_fails_midway_ends_with_an_error_event_then_done():
    engine = GatedEngine(*tiny_model())
    engine.poison = engine.encode("Hello")
    engine.may_fail.clear()
    with running_in_background(static_app(engine, MODEL, CHATML)) as url:
        text, error = _streamed_text(url, {**VALID, "max_tokens": 20}, engine.may_fail)
    assert error == {"message": "internal error: RuntimeError", "type": "server_error", "param": None, "code": None}
    assert text  # what came before the failure


# ---- limits ----

def test_a_body_over_the_limit_is_413_by_its_length_or_while_read():
    engine = Engine(*tiny_model())
    app = static_app(engine, MODEL, CHATML, ServerLimits(max_body_bytes=2000))
    big = json.dumps({**VALID, "prompt": "a" * 100_000}).encode()
    with running_in_background(app) as url:
        declared = httpx.post(f"{url}/v1/completions", content=big, headers={"content-type": "application/json"})
        chunked = httpx.post(f"{url}/v1/completions", content=iter([big[i:i + 1000] for i in range(0, len(big), 1000)]),
                             headers={"content-type": "application/json"})
        small = httpx.post(f"{url}/v1/completions", json=VALID)
    assert declared.status_code == chunked.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"
    assert small.status_code == 200


def test_chunked_bodies_are_refused_without_reading_them_whole(engine):
    sent = []

    def chunks():
        for _ in range(10_000):
            sent.append(1)
            yield b"x" * 1000

    with running_in_background(static_app(engine, MODEL, CHATML, ServerLimits(max_body_bytes=5000))) as url:
        try:
            response = httpx.post(f"{url}/v1/completions", content=chunks(),
                                  headers={"content-type": "application/json"})
            assert response.status_code == 413
        except httpx.TransportError:  # the server may close before the client has written everything
            pass
    assert len(sent) < 10_000  # not all 10 MB went: the server stopped reading soon after 5,000 bytes


def test_too_many_requests_at_once_get_429_with_retry_after():
    engine = GatedEngine(*tiny_model())
    app = static_app(engine, MODEL, CHATML, ServerLimits(max_concurrent_requests=2))
    gate = engine.gate = threading.Event()
    with running_in_background(app) as url, ThreadPoolExecutor(2) as pool:
        running = [pool.submit(httpx.post, f"{url}/v1/completions", json=VALID, timeout=60) for _ in range(2)]
        wait_until(lambda: app.state.in_flight.count == 2)
        refused = httpx.post(f"{url}/v1/completions", json=VALID)
        health = httpx.get(f"{url}/health")
        gate.set()
        assert [f.result().status_code for f in running] == [200, 200]
        served_later = httpx.post(f"{url}/v1/completions", json=VALID)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert health.status_code == 200 and health.json()["requests"] == 2
    assert served_later.status_code == 200


def test_a_request_that_would_overfill_the_queue_gets_429():
    engine = GatedEngine(*tiny_model())
    app = static_app(engine, MODEL, CHATML, ServerLimits(max_queued=4))
    gate = engine.gate = threading.Event()
    with TestClient(app) as http, ThreadPoolExecutor(2) as pool:
        blocker = pool.submit(http.post, "/v1/completions", json=VALID)
        assert engine.waiting.wait(timeout=30)
        waiting = pool.submit(http.post, "/v1/completions", json={**VALID, "n": 3})
        wait_until(lambda: app.state.worker.queued() == 3)
        refused = http.post("/v1/completions", json={**VALID, "n": 2})  # 3 + 2 > 4
        gate.set()
        assert blocker.result().status_code == waiting.result().status_code == 200
        fits = http.post("/v1/completions", json={**VALID, "n": 4})
    assert refused.status_code == 429 and "retry-after" in refused.headers
    assert fits.status_code == 200


def test_prompts_are_tokenized_once_and_off_the_event_loop():
    model, tokenizer = tiny_model()
    calls = []

    class Recording(CharTokenizer):
        def encode(self, text):
            try:
                asyncio.get_running_loop()
                calls.append("event loop")
            except RuntimeError:
                calls.append("elsewhere")
            return super().encode(text)

    recording = Recording(tokenizer._chars)
    with TestClient(create_app(Engine(model, recording), MODEL, CHATML)) as http:
        assert http.post("/v1/completions", json={**VALID, "n": 3}).status_code == 200
    assert calls == ["elsewhere"]


# ---- who may ask ----

def test_an_api_key_is_asked_for_everywhere_but_health(engine, monkeypatch):
    compared = []
    real_compare = guards.hmac.compare_digest
    monkeypatch.setattr(guards.hmac, "compare_digest", lambda a, b: compared.append(1) or real_compare(a, b))
    with TestClient(static_app(engine, MODEL, CHATML, api_key="s3cret")) as http:
        missing = http.post("/v1/completions", json=VALID)
        wrong = http.post("/v1/completions", json=VALID, headers={"Authorization": "Bearer s3cre"})
        other_scheme = http.get("/v1/models", headers={"Authorization": "Basic s3cret"})
        right = http.post("/v1/completions", json=VALID, headers={"Authorization": "Bearer s3cret"})
        models = http.get("/v1/models", headers={"Authorization": "bearer s3cret"})
        health = http.get("/health")
    for refused in (missing, wrong, other_scheme):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == models.status_code == health.status_code == 200
    assert compared  # the key is compared in constant time


@pytest.mark.parametrize("host, status", [
    ("localhost:8000", 200), ("127.0.0.1", 200), ("[::1]:9", 200), ("LOCALHOST.", 200), ("box.lan:80", 200),
    ("evil.example", 421), ("localhost.evil.example", 421), ("127.0.0.1.nip.io:8000", 421), ("", 421),
])
def test_only_our_host_names_are_answered_when_bound_to_loopback(engine, host, status):
    app = static_app(engine, MODEL, CHATML, allowed_hosts=allowed_hosts("127.0.0.1", ["box.lan"]))
    with TestClient(app) as http:
        response = http.get("/v1/models", headers={"host": host})
    assert response.status_code == status
    if status == 421:
        assert response.json()["error"]["code"] == "invalid_host"


def test_which_hosts_are_allowed_depends_on_the_bound_address():
    assert allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("::1", ["a.lan"]) == ["localhost", "127.0.0.1", "[::1]", "a.lan"]
    assert allowed_hosts("0.0.0.0", []) is None  # the names clients use are unknown: no check
    assert allowed_hosts("0.0.0.0", ["model.example"]) == ["model.example"]
    assert allowed_hosts("127.0.0.1", ["*"]) is None


# ---- health ----

def test_health_is_503_when_the_worker_thread_is_dead(engine):
    app = static_app(engine, MODEL, CHATML)
    with TestClient(app) as http:
        assert http.get("/health").status_code == 200
        worker = app.state.worker
        worker.close()
        worker._thread.join(timeout=30)
        health = http.get("/health")
        refused = http.post("/v1/completions", json=VALID)
    assert health.status_code == 503 and health.json()["problem"] == "the generation thread is not running"
    assert refused.status_code == 503


def test_health_is_503_after_batches_that_all_failed_and_ok_again_after_one_served():
    engine = GatedEngine(*tiny_model())
    engine.poison = engine.encode("xyz?")
    with TestClient(static_app(engine, MODEL, CHATML), raise_server_exceptions=False) as http:
        for _ in range(3):
            assert http.post("/v1/completions", json={**VALID, "prompt": "xyz?"}).status_code == 500
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["problem"] == "the last 3 batches failed"
        assert http.post("/v1/completions", json=VALID).status_code == 200
        assert http.get("/health").status_code == 200
