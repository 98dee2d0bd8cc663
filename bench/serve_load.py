"""A server under load: clients arriving at random, static vs continuous scheduling (and llama.cpp's server).

    python bench/serve_load.py [--rates 0.2 0.4 0.8] [--requests 40] [--servers static continuous llama.cpp]
                               [--llama-server PATH] [--threads 2] [--out bench/results/serve_load.json]

One random-weight GPT-2 124M (fp32, GPT-2's BPE vocabulary), saved as an lmforge checkpoint and served
by `lmforge serve` in its own process, once per scheduler; "llama.cpp" is llama.cpp's own HTTP server
(`llama-server --parallel N`, continuous batching) on the same weights exported to GGUF f32 by
`lmforge export`'s writer (that row needs a llama-server binary: --llama-server or $LLAMA_SERVER).

The load (the same for every server): requests arrive as a Poisson process (exponential gaps) at each
rate in turn; each has a prompt of 16, 64, 128 or 256 random tokens (sent as token ids, so no
tokenizer differs) and asks for 16, 64 or 128 new tokens (greedy, ignore_eos: exactly that many). The
client streams every answer and notes the time to the first piece of text and to the end. Reported per
server and rate: throughput (tokens generated / wall time from the first request to the last answer),
time to first token and end-to-end latency at p50/p95/p99, mean time per output token. Each rate has
its own random prompts (the same for every server), so no server meets a prompt it has cached before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

MODEL = "gpt2-124m-random"
PROMPT_LENGTHS = (16, 64, 128, 256)
ANSWER_LENGTHS = (16, 64, 128)
VOCAB_SIZE = 50257


# ---- the load ---------------------------------------------------------------------------------------------
def workload(n: int, rate: float, seed: int) -> list[tuple[float, list[int], int]]:
    """n requests: (arrival time in seconds from the start, prompt token ids, max_tokens)."""
    rng = random.Random(seed)
    arrival, requests = 0.0, []
    for _ in range(n):
        prompt = [rng.randrange(VOCAB_SIZE - 1) for _ in range(rng.choice(PROMPT_LENGTHS))]  # never end-of-text
        requests.append((arrival, prompt, rng.choice(ANSWER_LENGTHS)))
        arrival += rng.expovariate(rate)
    return requests


async def one_request(client: httpx.AsyncClient, url: str, prompt: list[int], max_tokens: int) -> dict:
    """Stream one completion; seconds to its first text and to its end."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    sent = time.perf_counter()
    first = None
    async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=1800) as response:
        if response.status_code != 200:
            return {"error": f"{response.status_code} {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("text"):
                    first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_s": (first or end) - sent, "e2e_s": end - sent, "tokens": max_tokens,
            "tpot_s": (end - (first or end)) / max(1, max_tokens - 1)}


async def run_load(url: str, requests: list[tuple[float, list[int], int]]) -> dict:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as client:
        start = time.perf_counter()

        async def arrive(at: float, prompt: list[int], max_tokens: int) -> dict:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            return await one_request(client, url, prompt, max_tokens)

        results = await asyncio.gather(*(arrive(*r) for r in requests))
        wall = time.perf_counter() - start
    errors = [r["error"] for r in results if "error" in r]
    done = [r for r in results if "error" not in r]
    summary = {"requests": len(requests), "errors": len(errors), "wall_s": wall,
               "throughput_tokens_per_s": sum(r["tokens"] for r in done) / wall,
               "mean_tpot_ms": 1000 * sum(r["tpot_s"] for r in done) / max(1, len(done))}
    for key in ("ttft_s", "e2e_s"):
        values = sorted(r[key] for r in done)
        for q in (50, 95, 99):
            summary[f"{key[:-2]}_p{q}_s"] = percentile(values, q)
    if errors:
        summary["first_error"] = errors[0]
    return summary


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    rank = (len(sorted_values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


# ---- the servers ------------------------------------------------------------------------------------------
def write_model(folder: Path, want_gguf: bool) -> tuple[Path, Path | None]:
    from lmforge.model.config import preset_config
    from lmforge.model.gpt import GPT
    from lmforge.tokenizer import GPT2Tokenizer
    from lmforge.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = GPT(preset_config("gpt2-124m", vocab_size=VOCAB_SIZE)).eval()
    checkpoint = save_checkpoint(folder / "run", "best", model, GPT2Tokenizer(), meta={})
    gguf = None
    if want_gguf:
        from lmforge.export.gguf_writer import write_gguf

        gguf = folder / "gpt2-124m-f32.gguf"
        write_gguf(checkpoint, gguf, "f32")
    return Path(checkpoint), gguf


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(name: str, checkpoint: Path, gguf: Path | None, port: int, args: argparse.Namespace) -> list[str]:
    if name == "llama.cpp":
        return [args.llama_server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--parallel", str(args.parallel), "--ctx-size", str(args.parallel * 1024),
                "--threads", str(args.threads), "--threads-batch", str(args.threads), "--alias", MODEL,
                "--no-webui"]
    lmforge = [sys.executable, "-m", "lmforge.cli.main"] if shutil.which("lmforge") is None else ["lmforge"]
    return [*lmforge, "serve", str(checkpoint), "--port", str(port), "--model-name", MODEL, "--scheduler", name,
            "--max-queued", "1000", "--max-concurrent-requests", "1000"]


def start_server(command: list[str], threads: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log, "w") as out:  # a file, not a pipe: a pipe nobody reads would block a chatty server
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def measure_server(name: str, checkpoint: Path, gguf: Path | None, args: argparse.Namespace) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = checkpoint.parent.parent / f"{name}.log"
    process = start_server(server_command(name, checkpoint, gguf, port, args), args.threads, log)
    try:
        wait_ready(url, process, log)
        asyncio.run(run_load(url, workload(4, 100.0, seed=99)))  # warm-up: kernels, layouts, first allocations
        rows = []
        for i, rate in enumerate(args.rates):
            # Other prompts at every rate: a server that caches prompts (llama.cpp does) must not meet them again.
            result = asyncio.run(run_load(url, workload(args.requests, rate, seed=args.seed + i)))
            rows.append({"server": name, "rate_per_s": rate, **result})
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---- the report -------------------------------------------------------------------------------------------
def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = cpuinfo.splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    wanted = sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
    return {"cpu": cpu, "cores": os.cpu_count(), "flags": wanted, "torch": torch.__version__,
            "python": platform.python_version()}


def markdown(rows: list[dict], info: dict, args: argparse.Namespace) -> str:
    lines = [f"GPT-2 124M random weights, fp32; {args.requests} requests per rate; prompts {PROMPT_LENGTHS} tokens, "
             f"answers {ANSWER_LENGTHS} tokens; {info['cpu']} ({info['cores']} cores, {' '.join(info['flags'])})",
             "", "| server | rate (req/s) | throughput (tok/s) | TTFT p50 / p95 / p99 (s) | "
             "end-to-end p50 / p95 / p99 (s) | time per token (ms) | errors |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['rate_per_s']} | {r['throughput_tokens_per_s']:.1f} | "
                     f"{r['ttft_p50_s']:.2f} / {r['ttft_p95_s']:.2f} / {r['ttft_p99_s']:.2f} | "
                     f"{r['e2e_p50_s']:.2f} / {r['e2e_p95_s']:.2f} / {r['e2e_p99_s']:.2f} | "
                     f"{r['mean_tpot_ms']:.0f} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.4, 0.8], help="requests per second")
    parser.add_argument("--requests", type=int, default=40, help="requests per rate")
    parser.add_argument("--servers", nargs="+", default=["static", "continuous", "llama.cpp"])
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER") or shutil.which("llama-server"))
    parser.add_argument("--parallel", type=int, default=14,
                        help="llama.cpp's sequences at once (default: the 14 that lmforge's 1 GiB KV budget holds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = parser.parse_args()
    servers = list(args.servers)
    if "llama.cpp" in servers and not (args.llama_server and Path(args.llama_server).exists()):
        print("llama.cpp: no llama-server binary (--llama-server or $LLAMA_SERVER); skipping it", file=sys.stderr)
        servers.remove("llama.cpp")
    info, rows = machine(), []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, gguf = write_model(Path(tmp), want_gguf="llama.cpp" in servers)
        for name in servers:
            rows += measure_server(name, checkpoint, gguf, args)
    table = markdown(rows, info, args)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": {k: v for k, v in vars(args).items() if k != "out"},
                               "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
