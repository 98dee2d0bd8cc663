"""Log-probabilities over the OpenAI API (`logprobs`, `echo`, chat `top_logprobs`), the tokenizer endpoints,
and lm-evaluation-harness's `local-completions` scoring against `lmforge serve`.

The reference for every number is the model itself: log_softmax of its logits over the same tokens.
"""

from __future__ import annotations

import httpx
import pytest
import torch

from lmforge.generate.chat import CHATML, chat_prompt_ids
from lmforge.generate.engine import Engine
from lmforge.generate.server import create_app, running_in_background
from lmforge.model.config import ModelConfig
from lmforge.train.checkpoint import save_checkpoint
from tests.export.gguf_models import GPT2_STYLE, bpe_tokenizer, random_gpt

MODEL = "tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tokenizer = bpe_tokenizer()
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=64, **GPT2_STYLE)
    model = random_gpt(cfg)
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("logprobs") / "run", "best", model, tokenizer, meta={})
    engine = Engine(model, tokenizer)
    with running_in_background(create_app(engine, MODEL, CHATML)) as url:
        yield url, engine, checkpoint


def reference_logprobs(engine, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(engine.model(torch.tensor([ids]))[0].float(), -1)  # row t predicts ids[t + 1]


def post(url, path, body) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def test_completion_logprobs_with_echo_of_a_token_id_prompt(served):
    url, engine, _ = served
    prompt = engine.tokenizer.encode("ROMEO: What light through yonder")
    body = post(url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 5, "temperature": 0,
                                         "logprobs": 3, "echo": True}).json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith(engine.tokenizer.decode(prompt))
    assert lp["tokens"][:len(prompt)] == [engine.tokenizer.decode([t]) for t in prompt]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    # The prompt's tokens against the model's own log-softmax; the generated ones (greedy: always the likeliest)
    # after them. Greedy text itself is not compared: on random weights near-ties flip with float rounding.
    reference = reference_logprobs(engine, prompt)
    for i in range(1, len(prompt)):
        assert lp["token_logprobs"][i] == pytest.approx(float(reference[i - 1, prompt[i]]), abs=1e-4)
        top = lp["top_logprobs"][i]
        # the 3 likeliest and the chosen token (fewer keys where byte tokens decode alike, to U+FFFD)
        assert 1 <= len(top) <= 4
        assert max(top.values()) == pytest.approx(float(reference[i - 1].max()), abs=1e-4)
        assert lp["token_logprobs"][i] in top.values() or lp["tokens"][i] in top
    first_new = len(prompt)
    assert lp["token_logprobs"][first_new] == pytest.approx(float(reference[-1].max()), abs=1e-4)
    for chosen, top in zip(lp["token_logprobs"][first_new:], lp["top_logprobs"][first_new:]):
        assert chosen == pytest.approx(max(top.values()))
    assert len(lp["tokens"]) == len(prompt) + body["usage"]["completion_tokens"] + \
        (choice["finish_reason"] == "stop")  # the end-of-text token that ended it is listed too
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])


def engine_params(max_tokens):
    from lmforge.generate.params import SamplingParams

    return SamplingParams(max_new_tokens=max_tokens, temperature=0)


def test_completion_logprobs_without_echo_cover_the_completion_only(served):
    url, engine, _ = served
    body = post(url, "/v1/completions", {"model": MODEL, "prompt": "Hello there", "max_tokens": 4,
                                         "temperature": 0, "logprobs": 0}).json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == body["usage"]["completion_tokens"] + (choice["finish_reason"] == "stop")
    assert all(len(top) == 1 for top in lp["top_logprobs"])  # logprobs 0: only the chosen token
    assert lp["text_offset"][0] == len("Hello there")
    reference = reference_logprobs(engine, engine.tokenizer.encode("Hello there"))
    assert lp["token_logprobs"][0] == pytest.approx(float(reference[-1].max()), abs=1e-4)


def test_chat_logprobs_and_top_logprobs(served):
    url, engine, _ = served
    messages = [{"role": "user", "content": "Say something"}]
    body = post(url, "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 4,
                                              "temperature": 0, "logprobs": True, "top_logprobs": 2}).json()
    content = body["choices"][0]["logprobs"]["content"]
    first = reference_logprobs(engine, chat_prompt_ids(messages, CHATML, engine.tokenizer))[-1]
    assert len(content) >= body["usage"]["completion_tokens"] >= 1
    assert [t["logprob"] for t in content[0]["top_logprobs"]] == pytest.approx(first.topk(2).values.tolist(),
                                                                                abs=1e-4)
    assert content[0]["logprob"] == pytest.approx(float(first.max()), abs=1e-4)
    for token in content:
        assert len(token["top_logprobs"]) == 2 and token["bytes"] == list(token["token"].encode())
        assert token["logprob"] == pytest.approx(token["top_logprobs"][0]["logprob"])  # greedy: the likeliest


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "logprobs": 1, "stream": True}, "stream"),
    ({"prompt": [5, 999_999]}, "prompt"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": [[1, 2], "text"]}, "prompt"),
])
def test_bad_logprob_and_token_requests_get_400(served, body, param):
    url, _, _ = served
    response = post(url, "/v1/completions", {"model": MODEL, "max_tokens": 2, **body})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_chat_top_logprobs_needs_logprobs(served):
    url, _, _ = served
    response = post(url, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                  "top_logprobs": 2})
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_logprobs"


def test_tokenizer_endpoints(served):
    url, engine, _ = served
    text = "Café Zürich 👍 def f(x):"
    tokens = post(url, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert tokens["tokens"] == engine.tokenizer.encode(text) and tokens["count"] == len(tokens["tokens"])
    assert post(url, "/detokenize", {"tokens": tokens["tokens"]}).json() == {"prompt": text}
    info = httpx.get(f"{url}/tokenizer_info").json()
    assert info["eos_token"] == engine.tokenizer.decode([engine.tokenizer.eot_id]) and info["max_model_len"] == 64
    assert post(url, "/detokenize", {"tokens": [10**6]}).status_code == 400


def test_harness_local_completions_against_the_server_matches_lmforge_lm(served, tmp_path):
    """The done-when of issue 16: the harness scoring through `lmforge serve` gets lmforge's own numbers."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from lmforge.eval.benchmarks import run_tasks
    from lmforge.eval.harness import LMForgeLM
    from tests.eval.test_eval_harness import write_tasks

    url, engine, _ = served
    write_tasks(tmp_path)
    api = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=MODEL, max_length=64, num_concurrent=1,
                              max_retries=1)
    assert api.tokenizer_backend == "remote"  # found /tokenizer_info and /tokenize: lmforge's tokenizer
    remote = simple_evaluate(model=api, tasks=["tiny_choice"], task_manager=TaskManager(include_path=str(tmp_path)),
                             log_samples=True, bootstrap_iters=0)
    _, local = run_tasks(LMForgeLM(engine), ["tiny_choice"], include_path=tmp_path)
    a = sorted(remote["samples"]["tiny_choice"], key=lambda s: int(s["doc_id"]))
    b = sorted(local["samples"]["tiny_choice"], key=lambda s: int(s["doc_id"]))
    assert len(a) == len(b) == 30
    for x, y in zip(a, b):
        for (ll_x, greedy_x), (ll_y, greedy_y) in zip(x["filtered_resps"], y["filtered_resps"]):
            assert ll_x == pytest.approx(ll_y, abs=1e-4) and greedy_x == greedy_y
    assert remote["results"]["tiny_choice"]["acc,none"] == local["results"]["tiny_choice"]["acc,none"]
