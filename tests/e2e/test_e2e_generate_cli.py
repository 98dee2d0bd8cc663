"""`lmforge generate`, `chat` and `serve` run as a user would, in a subprocess, on a tiny random checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer
from lmforge.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow
LMFORGE = [sys.executable, "-m", "lmforge"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["<|im_start|>system user assistant\n<|im_end|> Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64))
    return save_checkpoint(tmp_path_factory.mktemp("run"), "best", model, tokenizer, meta={})


def lmforge(*args, stdin=None):
    proc = subprocess.run([*LMFORGE, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"lmforge {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_generate_json_and_streamed_output_agree(checkpoint):
    greedy = ["--prompt", "Hello", "--max-new-tokens", "12", "--temperature", "0"]
    lines = lmforge("generate", checkpoint, *greedy, "--json", "--num-samples", "2").splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 2 and samples[0] == samples[1]  # greedy: every sample is the same
    assert samples[0].keys() == {"prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens"}
    assert samples[0]["prompt_tokens"] == 5 and samples[0]["completion_tokens"] == 12
    assert samples[0]["finish_reason"] == "length"
    assert lmforge("generate", checkpoint, *greedy) == "Hello" + samples[0]["text"] + "\n"


def test_generate_compiled_prints_what_eager_prints(checkpoint):
    greedy = ["--prompt", "Hello", "--max-new-tokens", "20", "--temperature", "0", "--json"]
    # Without a C++ compiler --compile warns on stderr and runs eagerly: the output is the same either way.
    assert lmforge("generate", checkpoint, *greedy, "--compile") == lmforge("generate", checkpoint, *greedy)


def test_generate_stops_at_a_stop_string(checkpoint, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Hello")
    request = ["--prompt-file", prompt_file, "--max-new-tokens", "12", "--temperature", "0", "--json"]
    text = json.loads(lmforge("generate", checkpoint, *request))["text"]
    stopped = json.loads(lmforge("generate", checkpoint, *request, "--stop", text[2], "--stop", "never"))
    assert stopped["text"] == text[: text.index(text[2])]
    assert stopped["finish_reason"] == "stop"


def test_chat_reads_turns_from_stdin(checkpoint):
    out = lmforge("chat", checkpoint, "--max-new-tokens", "5", "--system", "Be brief.", stdin="hello\n/reset\n/exit\n")
    assert out.count(">>> ") == 3
    assert "(conversation forgotten)" in out
    assert lmforge("chat", checkpoint, "--template", "plain", stdin="hello\n").endswith(">>> \n")  # EOF ends it


def test_serve_answers_until_interrupted(checkpoint):
    with socket.socket() as sock:  # ask the OS for a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([*LMFORGE, "serve", checkpoint, "--port", str(port), "--model-name", "tiny",
                               "--max-body-bytes", "1000"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "LMFORGE_API_KEY": "s3cret"})
    key = {"Authorization": "Bearer s3cret"}
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait_for(f"{url}/health", server)["status"] == "ok"  # open without the key
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={**key, "Host": "attacker.example"}).status_code == 421
        models = httpx.get(f"{url}/v1/models", headers=key).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0}
        too_big = httpx.post(f"{url}/v1/completions", json={**body, "prompt": "a" * 2000}, headers=key)
        assert too_big.status_code == 413
        reply = httpx.post(f"{url}/v1/completions", json=body, headers=key).json()
        # A random-weight model may pick end-of-text early; otherwise it runs to max_tokens.
        finished = reply["choices"][0]["finish_reason"]
        tokens = reply["usage"]["completion_tokens"]
        assert (finished == "length" and tokens == 3) or (finished == "stop" and tokens < 3)
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0
    assert "serving model 'tiny' at http://127.0.0.1:" in output and "WARNING" not in output
    assert "scheduler: continuous, KV cache for 16 sequences at once" in output


@pytest.mark.parametrize("flags, message", [
    (["--scheduler", "continuous", "--backend", "llamacpp"], "--scheduler continuous needs --backend torch"),
    (["--batch-window-ms", "5"], "--batch-window-ms applies to --scheduler static only"),
    (["--kv-cache-mb", "0"], "--kv-cache-mb must be > 0"),
])
def test_serve_refuses_scheduler_flags_that_do_not_go_together(checkpoint, flags, message):
    proc = subprocess.run([*LMFORGE, "serve", checkpoint, *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr


def test_serve_warns_before_binding_a_public_address(checkpoint):
    # 192.0.2.1 is a documentation-only address (RFC 5737): not this machine's, so the bind fails harmlessly.
    proc = subprocess.run([*LMFORGE, "serve", checkpoint, "--host", "192.0.2.1", "--port", "8000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "WARNING: binding 192.0.2.1 lets other machines use this server" in proc.stderr


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0]
        try:
            return httpx.get(url).json()
        except httpx.ConnectError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url} within {timeout} s")
