"""What batching in `lmforge serve` buys: 8 clients at once vs the same 8 requests one after another.

    python bench/serve_batching.py [--clients 8] [--max-tokens 64] [--threads 2] [--scheduler static] [--out FILE.json]

A random-weight GPT-2 124M (fp32) is served by the real app (`generate.server.create_app` under
uvicorn, on a free local port). The same requests (greedy, 16-token prompts that differ per client,
`max_tokens` new tokens each) are sent twice over HTTP: one after another, then all at once from
concurrent clients, which the server's worker runs as one batch. Reports wall time, total tokens/s
and the batch sizes the worker used, and checks that each request got the same text both ways.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from lmforge.generate.chat import CHATML
from lmforge.generate.engine import Engine
from lmforge.generate.server import create_app, running_in_background
from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.tokenizer import GPT2Tokenizer

MODEL = "gpt2-124m-random"


def prompts(tokenizer, clients: int) -> list[str]:
    """16-token prompts, a different one per client (random token ids, decoded)."""
    generator = torch.Generator().manual_seed(0)
    return [tokenizer.decode(torch.randint(tokenizer.vocab_size - 1, (16,), generator=generator).tolist())
            for _ in range(clients)]


def complete(base_url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


def timed(run) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    answers = run()
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scheduler", choices=["static", "continuous"], default="static",
                        help="the server's scheduler (batch_sizes are counted by the static one only)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_batching.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = GPT2Tokenizer()
    model = GPT(preset_config("gpt2-124m", vocab_size=tokenizer.vocab_size)).eval()
    app = create_app(Engine(model, tokenizer), MODEL, CHATML, scheduler=args.scheduler)
    texts = prompts(tokenizer, args.clients)
    with running_in_background(app) as base_url:
        complete(base_url, texts[0], 8)  # warm-up: first calls pick kernels
        with ThreadPoolExecutor(args.clients) as pool:  # warm-up of the batched path (its layouts and packing)
            list(pool.map(lambda p: complete(base_url, p, 8), texts))
        worker = app.state.worker
        first_batch = len(worker.batch_sizes)
        one_by_one_s, one_by_one = timed(lambda: [complete(base_url, p, args.max_tokens) for p in texts])
        middle = len(worker.batch_sizes)
        with ThreadPoolExecutor(args.clients) as pool:
            together_s, together = timed(lambda: list(pool.map(lambda p: complete(base_url, p, args.max_tokens),
                                                               texts)))
        batches = worker.batch_sizes[middle:]
    tokens = sum(a["usage"]["completion_tokens"] for a in together)
    same = sum(a["choices"][0]["text"] == b["choices"][0]["text"] for a, b in zip(one_by_one, together))
    report = {"clients": args.clients, "max_tokens": args.max_tokens, "threads": args.threads,
              "one_by_one_s": one_by_one_s, "together_s": together_s,
              "one_by_one_tokens_per_s": sum(a["usage"]["completion_tokens"] for a in one_by_one) / one_by_one_s,
              "together_tokens_per_s": tokens / together_s, "speedup": one_by_one_s / together_s,
              "batch_sizes_one_by_one": worker.batch_sizes[first_batch:middle], "batch_sizes_together": batches,
              "same_text": f"{same}/{args.clients}", "torch": torch.__version__}
    print(f"{args.clients} requests x {args.max_tokens} tokens: one after another {one_by_one_s:.1f} s "
          f"({report['one_by_one_tokens_per_s']:.1f} tokens/s), all at once {together_s:.1f} s "
          f"({report['together_tokens_per_s']:.1f} tokens/s, batches {batches}): {report['speedup']:.2f}x; "
          f"same text {report['same_text']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
