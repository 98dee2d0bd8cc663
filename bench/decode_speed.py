"""Batch-1 decoding speed per weight format: lmforge (fp32, bf16, int8 with each kernel, its llama.cpp backend),
transformers, llama.cpp.

    python bench/decode_speed.py [--new-tokens 256] [--threads 2] [--skip NAME ...] [--out FILE.json]

One random-weight GPT-2 124M (`preset_config("gpt2-124m", vocab_size=50257)`), the same weights
everywhere: copied into a transformers GPT2LMHeadModel (logits checked against lmforge's first) and
written as GGUF files by `lmforge export --format gguf`'s writer for llama.cpp (through
llama-cpp-python; those rows say "not installed" when it is missing, and so does torchao's).
"lmforge llamacpp QUANT" is lmforge's `--backend llamacpp` engine (its sampler and text engine around
llama.cpp, on the same GGUF file as the "llama.cpp QUANT" row, which calls llama-cpp-python directly).
Every configuration runs in a fresh subprocess: build or load, warm up, greedy generations of
256 new tokens after a 16-token prompt, batch 1, 2 threads, timed twice (--repeats): the faster counts.

A batch-1 decode step multiplies one row by every weight, so it has to read every weight once: the
ceiling is memory read bandwidth / bytes read per step. The bench measures the read bandwidth (a
sum over a 1 GB tensor) and gives each row's share of that ceiling, from the bytes per weight the
format makes a step read (int8 `dequantize` also writes and re-reads a float copy, counted).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

# The helpers of the fp32/bf16 generation bench: the same model, the same HF copy, the same machine report.
from generate_speed import (PROMPT_TOKENS, SEED, VOCAB_SIZE, hf_generate, hf_model_like, lmforge_cached,
                            lmforge_config, lmforge_model, machine, max_logits_difference, memory_bandwidth,
                            peak_memory_mb, reset_peak_memory)

from lmforge.model.quant import quantize_model

# (name, bytes read per weight in a decode step). int8 formats carry a 4-byte scale per row of 768 or
# 3072 weights (+0.5%); llama.cpp's q8_0 a 2-byte scale per 32 weights (34 / 32 bytes).
CONFIGS = {
    "lmforge fp32": 4, "lmforge bf16": 2,
    "lmforge int8 int8-mm": 1, "lmforge int8 dequantize": 1 + 4 + 4,  # read int8, write fp32, read fp32
    "lmforge int8 bf16-copy": 2, "lmforge int8 compiled": 1, "lmforge int8 auto": None,  # auto: whichever it picks
    "torchao int8-weight-only": 1,
    "transformers fp32": 4,
    "llama.cpp f32": 4, "llama.cpp f16": 2, "llama.cpp q8_0": 34 / 32,
    "lmforge llamacpp f32": 4, "lmforge llamacpp f16": 2, "lmforge llamacpp q8_0": 34 / 32,
}
GGUF_QUANTS = ("f32", "f16", "q8_0")


# ---- one configuration, in its own process --------------------------------------------------------------
def measure(name: str, new_tokens: int, threads: int, files: dict[str, str], repeats: int) -> dict:
    prompt = torch.randint(VOCAB_SIZE, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(SEED))
    if name.startswith("llama.cpp"):
        generate, info = llamacpp_runner(files[name.split()[1]], threads, prompt.size(1) + new_tokens)
    elif name.startswith("lmforge llamacpp"):
        generate, info = lmforge_llamacpp_runner(files[name.split()[2]], threads)
    else:
        generate, info = torch_runner(name, files["weights"])
    generate(prompt, 4)  # warm-up: first calls allocate, pick kernels, compile
    if name.endswith("compiled"):
        generate(prompt, new_tokens)  # compiled graphs are made per shape: warm up at full length
    reset_peak_memory()
    seconds = float("inf")
    for _ in range(repeats):  # the fastest of a few: the run least disturbed by whatever else shares the CPU
        start = time.perf_counter()
        ids = generate(prompt, new_tokens)
        seconds = min(seconds, time.perf_counter() - start)
    if len(ids) != new_tokens:
        raise RuntimeError(f"{name}: {len(ids)} new tokens instead of {new_tokens}")
    return {"name": name, "tokens_per_s": new_tokens / seconds, "seconds": seconds, "peak_rss_mb": peak_memory_mb(),
            "load_average": os.getloadavg()[0], "ids": ids, **info}


def torch_runner(name: str, weights: str):
    model = lmforge_model()
    load_model(model, weights)
    info = {}
    if name == "lmforge bf16":
        model = model.to(torch.bfloat16)
    elif name.startswith("lmforge int8"):
        kernel = name.split()[-1]
        start = time.perf_counter()
        report = quantize_model(model, kernel=kernel)
        info = {"kernel": report.kernel, "quantize_s": time.perf_counter() - start, "probe_ms": report.times_ms}
    elif name.startswith("torchao"):
        torchao_int8(model)
    if name.startswith("transformers"):
        hf = hf_model_like(model)
        return (lambda prompt, n: hf_generate(hf, prompt, n)[0].tolist()), info
    return (lambda prompt, n: lmforge_cached(model, prompt, n)[0].tolist()), info


def torchao_int8(model) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from lmforge.model.linear import Linear

    # torchao swaps nn.Linear weights for its own tensor type; lmforge's Linear has decode paths of its
    # own (weight-major, MKL-packed) that would bypass it, so make its layers plain nn.Linear again.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie: keep a float embedding
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = torch.nn.Linear
    quantize_(model, Int8WeightOnlyConfig())


def llamacpp_runner(gguf: str, threads: int, context: int):
    from lmforge.export.llamacpp_eval import load_llama  # llama.cpp's defaults, minus its AMX buffers on AMX CPUs

    # logits_all: scores[n_tokens - 1] then holds the last logits
    llm = load_llama(gguf, n_ctx=context, logits_all=True, exact=False, threads=threads)

    def generate(prompt: torch.Tensor, n: int) -> list[int]:
        llm.reset()
        llm.eval(prompt[0].tolist())
        out = []
        for _ in range(n):
            token = int(llm.scores[llm.n_tokens - 1].argmax())  # greedy, as the other rows
            out.append(token)
            llm.eval([token])
        return out

    import llama_cpp
    return generate, {"llama_cpp_python": llama_cpp.__version__}


def lmforge_llamacpp_runner(gguf: str, threads: int):
    from lmforge.export.llamacpp_backend import LlamaCppEngine
    from lmforge.generate.params import SamplingParams
    from lmforge.tokenizer import GPT2Tokenizer

    engine = LlamaCppEngine(gguf, GPT2Tokenizer(), context_size=lmforge_config().block_size, threads=threads)

    def generate(prompt: torch.Tensor, n: int) -> list[int]:
        steps = engine.token_steps(prompt.tolist(), [SamplingParams(max_new_tokens=n, temperature=0.0)], [None])
        return [row[0] for row in steps]

    return generate, {}


def run_child(name: str, args: argparse.Namespace, files: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--one", name, "--files", json.dumps(files),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# ---- what is installed, and the files ---------------------------------------------------------------------
def missing(name: str) -> str | None:
    """Why a configuration cannot run here, or None."""
    first = "llama.cpp" if name.startswith("lmforge llamacpp") else name.split()[0]
    module = {"llama.cpp": "llama_cpp", "torchao": "torchao", "transformers": "transformers"}.get(first)
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - an installed but broken package counts as missing too
        return f"{module} not installed ({type(exc).__name__})"
    return None


def write_files(model, folder: Path, want_gguf: bool) -> dict[str, str]:
    """The weights for the torch rows, and (for llama.cpp) a checkpoint of them exported as GGUF files."""
    files = {"weights": str(folder / "gpt2-124m-random.safetensors")}
    save_model(model, files["weights"])
    if want_gguf:
        from lmforge.export.gguf_writer import write_gguf
        from lmforge.tokenizer import GPT2Tokenizer
        from lmforge.train.checkpoint import save_checkpoint

        checkpoint = save_checkpoint(folder / "run", "best", model, GPT2Tokenizer(), meta={})
        for quant in GGUF_QUANTS:
            files[quant] = str(folder / f"gpt2-124m-{quant}.gguf")
            write_gguf(checkpoint, files[quant], quant)
    return files


# ---- the report --------------------------------------------------------------------------------------------
def add_derived(results: list[dict], weights: int, bandwidth: float) -> None:
    reference = next(r["ids"] for r in results if r["name"] == "lmforge fp32")
    for r in results:
        per_weight = CONFIGS[r["name"]] or CONFIGS[f"lmforge int8 {r['kernel']}"]
        r["bytes_per_weight"] = per_weight
        r["bandwidth_share"] = per_weight * weights * r["tokens_per_s"] / (bandwidth * 1e9)
        ids = r.pop("ids")
        r["same_tokens_as_fp32"] = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), len(ids))


def markdown(results: list[dict], skipped: dict[str, str], bandwidth: dict, weights: int, new_tokens: int) -> str:
    lines = ["| configuration | tokens/s | bytes/weight read | share of read bandwidth | peak RSS (MB) "
             "| tokens equal to lmforge fp32 |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        name = r["name"] + (f" (picked {r['kernel']})" if r["name"].endswith("auto") else "")
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['bytes_per_weight']:.2f} | {r['bandwidth_share']:.0%} "
                     f"| {r['peak_rss_mb']:.0f} | {r['same_tokens_as_fp32']}/{new_tokens} |")
    lines += [f"| {name} | {why} | | | | |" for name, why in skipped.items()]
    lines += ["", f"memory read bandwidth {bandwidth['read_gb_s']:.1f} GB/s (copy {bandwidth['copy_gb_s']:.1f} GB/s); "
              f"{weights / 1e6:.1f}M weights read per step"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="generations per configuration; the fastest counts")
    parser.add_argument("--skip", nargs="*", default=[], metavar="NAME",
                        help="leave out configurations whose name contains NAME (e.g. dequantize)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_speed.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:  # a child process: one configuration, one JSON line
        print(json.dumps(measure(args.one, args.new_tokens, args.threads, json.loads(args.files), args.repeats)))
        return

    start, load_before = time.perf_counter(), os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.1f}: other processes share the CPU", file=sys.stderr)
    names = [n for n in CONFIGS if not any(s in n for s in args.skip)]
    skipped = {n: why for n in names if (why := missing(n))}
    model = lmforge_model()
    if "transformers fp32" not in skipped:
        difference = max_logits_difference(model, hf_model_like(model))
        print(f"lmforge and transformers: max |logits difference| = {difference:.1e}", file=sys.stderr)
    weights = model.num_params() - model.pos_emb.weight.numel()  # what a step reads (one position row: ignored)
    bandwidth = memory_bandwidth()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(model, Path(tmp), want_gguf=not all(n in skipped for n in names if "llama" in n))
        del model
        for name in names:
            if name in skipped:
                continue
            results.append(run_child(name, args, files))
            print(f"{name}: {results[-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    add_derived(results, weights, bandwidth["read_gb_s"])
    print(markdown(results, skipped, bandwidth, weights, args.new_tokens))
    report = {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "prompt_tokens": PROMPT_TOKENS,
              "new_tokens": args.new_tokens, "memory_bandwidth": bandwidth, "weights_per_step": weights,
              "results": results, "not_run": skipped, "load_average_before_after": [load_before, os.getloadavg()[0]],
              "wall_seconds": time.perf_counter() - start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten to {args.out} in {report['wall_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
