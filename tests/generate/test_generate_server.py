"""The OpenAI-compatible server, driven by the real `openai` client against uvicorn on a free local port."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient

from lmforge.generate.chat import CHATML, chat_prompt_ids
from lmforge.generate.engine import Engine
from lmforge.generate.limits import ServerLimits
from lmforge.generate.params import SamplingParams
from lmforge.generate.server import create_app, running_in_background
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer

MODEL = "tiny"
GREEDY = dict(model=MODEL, max_tokens=12, temperature=0)


class RecordingEngine(Engine):
    """A real engine that notes which threads ran the model, and can hold its next batch at a gate."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.threads: set[str] = set()
        self.gate: threading.Event | None = None  # set: the next batch waits until the test opens it
        self.waiting = threading.Event()

    def stream_batch(self, prompts, params, streams):
        self.threads.add(threading.current_thread().name)
        self.last_batch = list(zip(params, streams))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.waiting.set()
            gate.wait(timeout=30)
        yield from super().stream_batch(prompts, params, streams)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["<|im_start|>system user assistant\n<|im_end|> Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64))
    return RecordingEngine(model, tokenizer)


@pytest.fixture(scope="module")
def app(engine):
    # A context of 64 tokens; prompt + max_tokens may reach 128 (the engine slides past the context).
    # Static: RecordingEngine watches and gates batches in stream_batch, which only that scheduler calls.
    return create_app(engine, MODEL, CHATML, ServerLimits(max_tokens=64, max_model_len=128), scheduler="static")


@pytest.fixture(scope="module")
def base_url(app):
    """uvicorn serving the app in a background thread, on a port the OS picked; stopped after the tests."""
    with running_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)


def test_health_and_models(base_url, client):
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok", "queued": 0, "running": 0, "requests": 0}
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_with_usage(client, engine):
    out = client.completions.create(prompt="Hello", **GREEDY)
    expected = engine.generate(["Hello"], _params(12))[0]
    assert out.object == "text_completion" and out.model == MODEL
    assert out.choices[0].text == expected.text
    assert out.choices[0].finish_reason == expected.finish_reason
    assert out.usage.prompt_tokens == 5
    assert out.usage.completion_tokens == len(expected.token_ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_completion_of_a_list_of_prompts_with_n(client):
    out = client.completions.create(prompt=["Hello", "world"], n=2, seed=3, **{**GREEDY, "temperature": 1.0})
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.usage.prompt_tokens == 10  # each prompt counted once, not once per sample


def test_stop_string_ends_the_text_streamed_or_not(client):
    full = client.completions.create(prompt="Hello", **GREEDY).choices[0].text
    stop = full[3:5]
    out = client.completions.create(prompt="Hello", stop=[stop], **GREEDY)
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(prompt="Hello", stop=stop, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_completion(client, engine):
    out = client.chat.completions.create(messages=[{"role": "user", "content": "Hi?"}], **GREEDY)
    prompt = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == engine.generate([prompt], _params(12, stop=["<|im_end|>"]))[0].text
    assert out.usage.prompt_tokens == len(prompt)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streamed_chunks_join_to_the_whole_text(client, endpoint):
    if endpoint == "chat":
        create, request = client.chat.completions.create, dict(messages=[{"role": "user", "content": "Hello"}])
    else:
        create, request = client.completions.create, dict(prompt="Hello")
    whole = create(**request, **GREEDY).choices[0]
    chunks = list(create(**request, **GREEDY, stream=True))
    if endpoint == "chat":
        assert {c.object for c in chunks} == {"chat.completion.chunk"}
        assert chunks[0].choices[0].delta.role == "assistant"
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed == whole.message.content
    else:
        assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert len(chunks) > 2 and len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_streamed_finish_reason_is_the_engines_not_a_recount(client, engine):
    # max_tokens 12 from a 64-token context: the engine stops on "length" (or "stop" at end-of-text); the
    # last chunk must say what the engine says, whatever re-encoding the text would count.
    expected = engine.generate(["Hello"], _params(12))[0]
    chunks = list(client.completions.create(prompt="Hello", stream=True, **GREEDY))
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_refused_unless_truncation_is_asked(base_url, stream):
    body = {**GREEDY, "prompt": "abc" * 30, "stream": stream}  # 90 characters, context 64
    refused = httpx.post(f"{base_url}/v1/completions", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"
    assert "prompt 0 is 90 tokens, longer than the model's context of 64" in refused.json()["error"]["message"]
    with httpx.stream("POST", f"{base_url}/v1/completions", json={**body, "truncate_prompt_tokens": 50}) as response:
        warning = response.headers.get("x-lmforge-warning", "")
        response.read()
    assert response.status_code == 200
    assert warning == "prompt 0 is 90 tokens: truncate_prompt_tokens kept its last 50"
    if not stream:
        assert response.json()["warnings"] == [warning]
        assert response.json()["usage"]["prompt_tokens"] == 50


def test_a_prompt_that_fits_gets_no_warning(base_url):
    response = httpx.post(f"{base_url}/v1/completions", json={**GREEDY, "prompt": "Hello"})
    assert "x-lmforge-warning" not in response.headers and "warnings" not in response.json()


def test_raw_event_stream_ends_with_done(base_url):
    body = {**GREEDY, "prompt": "Hello", "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(prompt="Hello", **{**GREEDY, "model": "gpt-5"})
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


@pytest.mark.parametrize("change, param", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=65), "max_tokens"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(n=0), "n"),
])
def test_out_of_range_values_are_400(client, change, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **{**GREEDY, **change})
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("content, body", [
    ("application/json", b'{"model": "tiny", "prompt": '),                    # cut-off JSON
    ("application/json", b'{"model": "tiny"}'),                               # prompt missing
    ("application/json", b'{"model": "tiny", "messages": [{"role": "robot", "content": "Hi"}]}'),
    ("application/json", b'["not", "an", "object"]'),
    ("text/plain", b"hello"),
])
def test_malformed_bodies_get_an_error_body(base_url, content, body):
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    response = httpx.post(f"{base_url}{path}", content=body, headers={"content-type": content})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_unknown_path_is_404_with_an_error_body(base_url):
    response = httpx.get(f"{base_url}/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


def test_requests_that_wait_are_served_together_as_one_batch(app, client, engine):
    """While the model is busy, three requests with different settings queue up; they run as the next
    batch, and each gets exactly what it would have got alone."""
    requests = [dict(prompt="Hello", max_tokens=5, temperature=0),
                dict(prompt="abc", max_tokens=12, temperature=1.0, seed=7),
                dict(prompt="xyz?", max_tokens=9, temperature=0.7, top_p=0.9, seed=3, stop=["d"])]
    alone = [client.completions.create(model=MODEL, **request).choices[0] for request in requests]
    worker = app.state.worker
    before = len(worker.batch_sizes)
    gate = engine.gate = threading.Event()
    engine.waiting.clear()
    with ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(client.completions.create, model=MODEL, prompt="Hi", max_tokens=3)
        assert engine.waiting.wait(timeout=30)  # that request's batch now holds the model
        futures = [pool.submit(client.completions.create, model=MODEL, **request) for request in requests]
        deadline = time.monotonic() + 30
        while worker.queued() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        together = [future.result().choices[0] for future in futures]
        blocker.result()
    assert worker.batch_sizes[before:] == [1, 3]
    assert [(c.text, c.finish_reason) for c in together] == [(c.text, c.finish_reason) for c in alone]


def test_a_client_that_goes_away_stops_its_row_while_the_batch_goes_on(app, client, engine):
    long_stream = dict(prompt="Hello", max_tokens=60, temperature=1.0, seed=1, stream=True)
    gate = engine.gate = threading.Event()
    engine.waiting.clear()
    with ThreadPoolExecutor(2) as pool:
        blocker = pool.submit(client.completions.create, model=MODEL, prompt="Hi", max_tokens=3)
        assert engine.waiting.wait(timeout=30)
        stream = client.completions.create(model=MODEL, **long_stream)  # queued behind the blocker
        short = pool.submit(client.completions.create, model=MODEL, prompt="abc", max_tokens=40, temperature=0)
        deadline = time.monotonic() + 30
        while app.state.worker.queued() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        next(iter(stream))  # the first piece arrives ...
        stream.close()  # ... and the client hangs up
        assert short.result().choices[0].finish_reason == "length"  # the other request is served in full
        blocker.result()
    abandoned = next(stream for params, stream in engine.last_batch if params.max_new_tokens == 60)
    assert abandoned.finish_reason == "cancelled" and len(abandoned.token_ids) < 60


def test_concurrent_requests_are_served_in_turn_on_one_thread(client, engine):
    def chat(stream):
        request = dict(messages=[{"role": "user", "content": "Hello"}], **GREEDY, stream=stream)
        out = client.chat.completions.create(**request)
        return "".join(c.choices[0].delta.content or "" for c in out) if stream else out.choices[0].message.content

    engine.threads.clear()
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(chat, [True, False, True, False]))
    assert len(set(texts)) == 1 and texts[0]
    assert len(engine.threads) == 1 and engine.threads.pop().startswith("lmforge-generate")


def _params(max_tokens, stop=()):
    return SamplingParams(max_new_tokens=max_tokens, temperature=0, stop=list(stop))


def test_chat_prompts_of_an_instruction_tuned_model_carry_end_of_text_after_earlier_answers(engine):
    tuned = replace(CHATML, eot_after_answer=True)  # as stored by lmforge's instruction tuning
    seen = []

    class PromptRecorder(Engine):
        def stream_batch(self, prompts, params, streams):
            seen.extend(prompts)
            yield from super().stream_batch(prompts, params, streams)

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=engine.tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=256))
    recorder = PromptRecorder(model, engine.tokenizer)
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "abc?"}]
    with TestClient(create_app(recorder, MODEL, tuned, scheduler="static")) as http:
        answer = http.post("/v1/chat/completions", json={**GREEDY, "messages": messages})
    assert answer.status_code == 200
    assert seen == [chat_prompt_ids(messages, tuned, engine.tokenizer)]
    assert seen[0].count(engine.tokenizer.eot_id) == 1
    assert answer.json()["usage"]["prompt_tokens"] == len(seen[0])


def test_streamed_samples_of_one_request_share_a_batch_and_interleave(app, client):
    worker = app.state.worker
    before = len(worker.batch_sizes)
    request = dict(model=MODEL, prompt="Hello", max_tokens=10, temperature=1.0, seed=11, n=3)
    chunks = list(client.completions.create(**request, stream=True))
    whole = client.completions.create(**request)
    streamed = {i: "".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in range(3)}
    assert streamed == {c.index: c.text for c in whole.choices}  # the same samples, streamed or not
    assert worker.batch_sizes[before:] == [3, 3]  # each response's 3 samples ran as one batch
    assert sum(c.choices[0].finish_reason is not None for c in chunks) == 3


def test_an_error_in_the_model_answers_500_and_the_worker_carries_on(engine):
    class FailingOnce(Engine):
        failed = False

        def stream_batch(self, prompts, params, streams):
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise RuntimeError("out of memory, say")
            yield from super().stream_batch(prompts, params, streams)

    app = create_app(FailingOnce(engine.model, engine.tokenizer), MODEL, CHATML, scheduler="static")
    with TestClient(app, raise_server_exceptions=False) as http:
        request = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        failed = http.post("/v1/completions", json=request)
        assert failed.status_code == 500 and failed.json()["error"]["message"] == "internal error: RuntimeError"
        assert http.post("/v1/completions", json=request).status_code == 200
