"""The server's continuous scheduler: a short request overtakes a long one (static scheduling makes it wait),
a broken request fails alone, a client that leaves frees its KV slot, the queue limit holds, the gauges count."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from lmforge.generate.chat import CHATML
from lmforge.generate.continuous import ContinuousBatcher
from lmforge.generate.engine import Engine
from lmforge.generate.limits import ServerLimits
from lmforge.generate.server import create_app, running_in_background
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer

from .test_generate_server_metrics import parse

MODEL = "tiny"
STEP_S = 0.004  # every decode step is slowed by this much, so that timings do not depend on the machine


class SlowEngine(Engine):
    """A real engine whose every step (static or continuous) takes at least STEP_S longer."""

    def token_steps(self, prompts, params, generators):
        for tokens in super().token_steps(prompts, params, generators):
            time.sleep(STEP_S)
            yield tokens

    def continuous_batcher(self, kv_cache_mb, prefill_chunk):
        batcher = super().continuous_batcher(kv_cache_mb, prefill_chunk)
        batcher.rounds = 0
        step = batcher.step

        def slow_step():
            time.sleep(STEP_S)
            batcher.rounds += 1
            return step()

        batcher.step = slow_step
        return batcher


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=512))
    return model, tokenizer


def post(url: str, **fields) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": MODEL, "temperature": 0, **fields}, timeout=120)


def long_then_short(url: str) -> tuple[float, float, dict]:
    """A 400-token request, then a 5-token one a moment later: when each finished (seconds from the start)."""
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        def timed(**fields):
            response = post(url, **fields)
            assert response.status_code == 200, response.text
            return time.monotonic() - started, response.json()

        long = pool.submit(timed, prompt="Hello", max_tokens=400, ignore_eos=True)
        deadline = time.monotonic() + 30
        while metric(url, "lmforge_running_rows") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(20 * STEP_S)  # the long one is generating by now
        short_done, short = timed(prompt="abc", max_tokens=5, ignore_eos=True)
        long_done, long_answer = long.result()
    assert long_answer["usage"]["completion_tokens"] == 400 and short["usage"]["completion_tokens"] == 5
    return long_done, short_done, short


def test_a_short_request_overtakes_a_long_one_under_continuous_scheduling(model_and_tokenizer):
    engine = SlowEngine(*model_and_tokenizer)
    app = create_app(engine, MODEL, CHATML, scheduler="continuous")
    batcher = app.state.worker.batcher
    added, removed = [], {}  # round counts when each sequence was added and removed
    add, remove = batcher.add, batcher.remove
    batcher.add = lambda key, prompt, params, *a: (added.append((params.max_new_tokens, key, batcher.rounds)),
                                                   add(key, prompt, params, *a))[1]
    batcher.remove = lambda key: (removed.setdefault(key, batcher.rounds), remove(key))[1]
    with running_in_background(app) as url:
        long_done, short_done, _ = long_then_short(url)
    assert short_done < 0.5 * long_done
    assert [n for n, _, _ in added] == [400, 5]
    (_, long_key, _), (_, short_key, short_added) = added
    assert removed[short_key] < removed[long_key]
    # Its prompt is read in the first round after it arrived (that round gives its first token too), then 4
    # decode rounds: 5 rounds, one more if it arrived while a round was running.
    assert 5 <= removed[short_key] - short_added <= 6


def test_under_static_scheduling_the_short_request_waits_for_the_long_one(model_and_tokenizer):
    engine = SlowEngine(*model_and_tokenizer)
    with running_in_background(create_app(engine, MODEL, CHATML, scheduler="static")) as url:
        long_done, short_done, _ = long_then_short(url)
    assert short_done > long_done


class PoisonEngine(Engine):
    """Any batch holding the poison prompt raises, in continuous rounds and alone (static path) alike."""

    poison: list[int] = []

    def continuous_batcher(self, kv_cache_mb, prefill_chunk):
        engine = self

        class Poisoned(ContinuousBatcher):
            def _forward(self, rows, chunks):
                if any(seq.tokens[:len(engine.poison)] == engine.poison for seq in rows):
                    raise RuntimeError("a row broke the round")
                return super()._forward(rows, chunks)

        return Poisoned(self.model, 4, prefill_chunk)

    def stream_batch(self, prompts, params, streams):
        if any(list(p) == self.poison for p in prompts):
            raise RuntimeError("a row broke the batch")
        yield from super().stream_batch(prompts, params, streams)


def test_a_request_that_breaks_a_round_fails_alone_and_the_others_get_their_text(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = PoisonEngine(model, tokenizer)
    engine.poison = tokenizer.encode("xyz")
    requests = [dict(prompt="Hello", max_tokens=60, ignore_eos=True),
                dict(prompt="world", max_tokens=40, temperature=0.9, seed=3, ignore_eos=True),
                dict(prompt="abc", max_tokens=50, ignore_eos=True)]
    alone = [engine.generate([r["prompt"]], request_params(r))[0].text for r in requests]
    app = create_app(engine, MODEL, CHATML, scheduler="continuous")
    with running_in_background(app) as url, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, url, **r) for r in requests]
        time.sleep(0.05)  # the others are running when the poisoned one joins
        poisoned = post(url, prompt="xyz", max_tokens=10)
        answers = [f.result() for f in futures]
        assert poisoned.status_code == 500
        assert [a.json()["choices"][0]["text"] for a in answers] == alone
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert post(url, prompt="Hello", max_tokens=60, ignore_eos=True).json()["choices"][0]["text"] == alone[0]


def request_params(request: dict):
    from lmforge.generate.params import SamplingParams

    return SamplingParams(max_new_tokens=request["max_tokens"], temperature=request.get("temperature", 0),
                          seed=request.get("seed"), ignore_eos=True)


def metric(url: str, name: str) -> float:
    return parse(httpx.get(f"{url}/metrics").text)[name]


def test_a_client_that_leaves_frees_its_slot_and_the_others_carry_on(model_and_tokenizer):
    engine = SlowEngine(*model_and_tokenizer)
    app = create_app(engine, MODEL, CHATML, scheduler="continuous")
    with running_in_background(app) as url, ThreadPoolExecutor(1) as pool:
        assert metric(url, "lmforge_kv_slots") == 16
        other = pool.submit(post, url, prompt="abc", max_tokens=200, ignore_eos=True)
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: {")
                if chunks == 10:
                    assert metric(url, "lmforge_kv_slots_in_use") == 2
                    break  # the client goes away mid-answer
        deadline = time.monotonic() + 10
        while metric(url, "lmforge_kv_slots_in_use") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metric(url, "lmforge_kv_slots_in_use") == 1  # only the other request holds a slot now
        assert other.result().json()["usage"]["completion_tokens"] == 200
        assert metric(url, "lmforge_kv_slots_in_use") == 0 and metric(url, "lmforge_running_rows") == 0


def test_requests_waiting_for_a_slot_count_toward_the_queue_limit(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = SlowEngine(model, tokenizer, max_batch_size=1)  # one KV slot: everyone else waits
    app = create_app(engine, MODEL, CHATML, ServerLimits(max_queued=2), scheduler="continuous")
    with running_in_background(app) as url, ThreadPoolExecutor(3) as pool:
        running = pool.submit(post, url, prompt="Hello", max_tokens=300, ignore_eos=True)
        time.sleep(20 * STEP_S)
        waiting = [pool.submit(post, url, prompt="abc", max_tokens=3) for _ in range(2)]
        deadline = time.monotonic() + 10
        while metric(url, "lmforge_queue_length") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post(url, prompt="abc", max_tokens=3)
        assert refused.status_code == 429 and "waiting already" in refused.json()["error"]["message"]
        assert all(f.result().status_code == 200 for f in [running, *waiting])


def test_logprobs_and_n_work_under_continuous_scheduling(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer)
    with running_in_background(create_app(engine, MODEL, CHATML, scheduler="continuous")) as url:
        answer = post(url, prompt="Hello", max_tokens=6, n=3, temperature=1.0, seed=5, logprobs=2).json()
        static_app = create_app(engine, MODEL, CHATML, scheduler="static")
        with running_in_background(static_app) as static_url:
            expected = post(static_url, prompt="Hello", max_tokens=6, n=3, temperature=1.0, seed=5, logprobs=2).json()
    assert json.dumps(answer["choices"]) == json.dumps(expected["choices"])
    assert len({c["text"] for c in answer["choices"]}) > 1


def test_continuous_scheduling_refuses_an_engine_that_cannot_and_a_budget_too_small(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="holds no sequence"):
        create_app(Engine(model, tokenizer), MODEL, CHATML, scheduler="continuous", kv_cache_mb=0.001)
    with pytest.raises(ValueError, match="scheduler must be"):
        create_app(Engine(model, tokenizer), MODEL, CHATML, scheduler="eager")
