"""/metrics: Prometheus text format, checked against the requests the test itself sent."""

import re

import httpx
import pytest
import torch

from lmforge.generate.chat import CHATML
from lmforge.generate.engine import Engine
from lmforge.generate.server import create_app, running_in_background
from lmforge.generate.server_metrics import Histogram
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer


def parse(text: str) -> dict[str, float]:
    """name{labels} -> value, for every sample line of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="module")
def url():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64))
    with running_in_background(create_app(Engine(model, tokenizer), "tiny", CHATML)) as base:
        yield base


def test_counts_tokens_latencies_and_statuses(url):
    usage = [httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": n,
                                                      "temperature": 0}).json()["usage"] for n in (3, 7)]
    assert httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "top_p": 5}).status_code == 400
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    m = parse(response.text)
    assert m['lmforge_requests_total{path="/v1/completions",status="200"}'] == 2
    assert m['lmforge_requests_total{path="/v1/completions",status="400"}'] == 1
    assert m["lmforge_prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usage)
    assert m["lmforge_generation_tokens_total"] == sum(u["completion_tokens"] for u in usage)
    assert m["lmforge_time_to_first_token_seconds_count"] == 2
    assert m['lmforge_time_to_first_token_seconds_bucket{le="+Inf"}'] == 2
    assert m["lmforge_queue_length"] == 0 and m["lmforge_running_rows"] == 0
    buckets = [v for k, v in m.items() if k.startswith("lmforge_time_per_output_token_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == m["lmforge_time_per_output_token_seconds_count"]


def test_histogram_buckets_are_cumulative_with_le_bounds():
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    lines = h.lines("x")
    assert lines[:3] == ['x_bucket{le="0.1"} 2', 'x_bucket{le="1.0"} 3', 'x_bucket{le="+Inf"} 4']
    assert re.fullmatch(r"x_sum 3\.65\d*", lines[3]) and lines[4] == "x_count 4"
