"""Greedy generation speed: lmforge vs Hugging Face transformers on the same GPT-2 124M, on CPU.

    python bench/generate_speed.py [--new-tokens 256] [--threads 2] [--repeats 1] [--no-compiled] [--out FILE.json]

Both libraries run one random-weight GPT-2 124M: lmforge's weights are copied into a
`transformers.GPT2LMHeadModel` and the logits are checked to agree before anything is timed. For each
engine, dtype (fp32, bf16) and batch size (1, 8) one fresh subprocess builds the model, warms up, times
the first new token (prefill + one step) and the whole generation, and reports its peak memory. The
memory bandwidth is measured in the same run, and each batch-1 result is given as a share of the
weight-streaming limit: a batch-1 step must read every weight once, so tokens/s <= bandwidth / weight bytes.

Both libraries can also compile their decode step; those two configurations (fp32, batch 1) are measured
after the others and reported beside the targets, which compare the default, eager paths (--no-compiled
skips them).

Prints a markdown table and the ratios the issue asks for; writes everything to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from lmforge.generate.engine import generate_tokens
from lmforge.generate.params import SamplingParams
from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT

VOCAB_SIZE = 50257
PROMPT_TOKENS = 16
SEED = 0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGITS_TOLERANCE = 1e-4
# (engine, dtype, batch): lmforge's cached Engine path and HF at every shape; lmforge without a cache once,
# since re-running the whole context every step is slow (it is the baseline the cache is measured against).
CONFIGS = [(engine, dtype, batch) for dtype in DTYPES for batch in (1, 8) for engine in ("lmforge", "hf")]
CONFIGS.append(("lmforge-no-cache", "fp32", 1))
# Both libraries can compile their decode step (lmforge: Engine(compile=True) / --compile; HF: a static cache and
# torch.compile(model.forward), its documented recipe). Measured at fp32 batch 1, where per-step overhead matters
# most; reported beside the targets, which compare the default (eager) paths.
COMPILED = [("lmforge-compiled", "fp32", 1), ("hf-compiled", "fp32", 1)]
# Targets stated in the issue: (name, numerator config, denominator config, target ratio).
TARGETS = [
    ("lmforge / HF, fp32, batch 1", ("lmforge", "fp32", 1), ("hf", "fp32", 1), 1.2),
    ("lmforge / HF, bf16, batch 1", ("lmforge", "bf16", 1), ("hf", "bf16", 1), 1.2),
    ("lmforge / HF, fp32, batch 8", ("lmforge", "fp32", 8), ("hf", "fp32", 8), 1.5),
    ("lmforge / HF, bf16, batch 8", ("lmforge", "bf16", 8), ("hf", "bf16", 8), 1.5),
    ("lmforge cached / no cache, fp32, batch 1", ("lmforge", "fp32", 1), ("lmforge-no-cache", "fp32", 1), 5.0),
]


# ---- the two models ----------------------------------------------------------------------------------
def lmforge_config():
    return preset_config("gpt2-124m", vocab_size=VOCAB_SIZE)


def lmforge_model() -> GPT:
    torch.manual_seed(SEED)
    return GPT(lmforge_config()).eval()


def hf_model_like(model: GPT):
    """A transformers GPT2LMHeadModel of the same shape, holding `model`'s weights."""
    # Imported here, not at the top: lmforge's subprocesses never load transformers, which would add
    # its memory to their peak.
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, layer_norm_epsilon=cfg.norm_eps,
                        activation_function="gelu_new",  # the tanh approximation of GELU, as in lmforge
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the token embedding
        raise RuntimeError(f"weights do not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    return hf


# lmforge block parameter -> HF GPT-2 block parameter, and whether it is a Linear weight that HF stores
# transposed (HF GPT-2 uses Conv1D, whose weight is (in, out); nn.Linear's is (out, in)).
BLOCK_NAMES = [("attn_norm", "ln_1", False), ("attn.o", "attn.c_proj", True), ("mlp_norm", "ln_2", False),
               ("mlp.up", "mlp.c_fc", True), ("mlp.down", "mlp.c_proj", True)]


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """lmforge's weights under Hugging Face GPT-2's names and layouts."""
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"]}
    for i in range(model.config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for name, hf_name, transposed in BLOCK_NAMES:
            weight = sd[f"{ours}{name}.weight"]
            out[f"{theirs}{hf_name}.weight"] = weight.t().contiguous() if transposed else weight
            out[f"{theirs}{hf_name}.bias"] = sd[f"{ours}{name}.bias"]
        # lmforge has separate q, k, v projections; HF one fused c_attn whose output is [q | k | v].
        qkv = [f"{ours}attn.{p}" for p in "qkv"]
        out[f"{theirs}attn.c_attn.weight"] = torch.cat([sd[f"{p}.weight"] for p in qkv]).t().contiguous()
        out[f"{theirs}attn.c_attn.bias"] = torch.cat([sd[f"{p}.bias"] for p in qkv])
    return out


@torch.no_grad()
def max_logits_difference(model: GPT, hf) -> float:
    ids = torch.randint(VOCAB_SIZE, (2, 64), generator=torch.Generator().manual_seed(SEED))
    return (model(ids) - hf(ids).logits).abs().max().item()


def weight_bytes(model: GPT, dtype: torch.dtype) -> int:
    """Bytes a batch-1 step reads: every weight once, except the position table (one row is read).

    The token embedding counts in full although a step looks up one row: it is tied to the output
    head, which multiplies by all of it.
    """
    params = model.num_params() - model.pos_emb.weight.numel()
    return params * torch.empty((), dtype=dtype).element_size()


# ---- greedy generation, three ways (adapt here when the engine's API changes) -------------------------
def lmforge_cached(model: GPT, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The token level of lmforge's Engine (KV cache, whole batch in lockstep): ids (B, new_tokens)."""
    steps = generate_tokens(model, prompts.tolist(), SamplingParams(max_new_tokens=new_tokens, temperature=0.0))
    return torch.tensor(list(steps)).t()  # one list of B tokens per step -> (B, new_tokens)


@torch.no_grad()
def lmforge_no_cache(model: GPT, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The model re-run on the whole context at every step, as generation worked before the KV cache."""
    ids = prompts
    for _ in range(new_tokens):
        next_ids = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_ids], dim=1)
    return ids[:, prompts.size(1):]


@torch.no_grad()
def hf_generate(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, use_cache=True,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,  # never stop early at <eot>
                         pad_token_id=model.config.eos_token_id)
    return out[:, prompts.size(1):]


def lmforge_compiled(model: GPT, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    steps = generate_tokens(model, prompts.tolist(), SamplingParams(max_new_tokens=new_tokens, temperature=0.0),
                            compile=True)
    return torch.tensor(list(steps)).t()


def compile_hf(model):
    """HF's recipe for compiled generation: a static cache, and torch.compile on the forward."""
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward)
    return model


RUNNERS = {"lmforge": lmforge_cached, "lmforge-no-cache": lmforge_no_cache, "hf": hf_generate,
           "lmforge-compiled": lmforge_compiled, "hf-compiled": hf_generate}


# ---- one configuration, in its own process --------------------------------------------------------------
def measure_config(engine: str, dtype: str, batch: int, new_tokens: int, repeats: int, weights: Path) -> dict:
    """Build the model, warm up, then time the first token and the whole generation."""
    model = lmforge_model()
    load_model(model, str(weights))
    if engine.startswith("hf"):
        model = hf_model_like(model)
    model = model.to(DTYPES[dtype])
    if engine == "hf-compiled":
        model = compile_hf(model)
    prompts = torch.randint(VOCAB_SIZE, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(SEED))
    generate = RUNNERS[engine]
    generate(model, prompts, 4)  # warm-up: first calls allocate buffers and pick kernels
    if engine.endswith("compiled"):  # the compilers' graphs depend on the generation's length: warm up at full length
        generate(model, prompts, new_tokens)
    reset_peak_memory()
    first_token = statistics.median(timed(generate, model, prompts, 1)[0] for _ in range(3))
    runs = [timed(generate, model, prompts, new_tokens) for _ in range(repeats)]
    seconds, ids = min(runs, key=lambda run: run[0])
    return {"engine": engine, "dtype": dtype, "batch": batch, "new_tokens": new_tokens, "seconds": seconds,
            "tokens_per_s": batch * new_tokens / seconds, "first_token_s": first_token,
            "peak_rss_mb": peak_memory_mb(), "load_average": os.getloadavg()[0], "ids": ids.tolist()}


def timed(generate, model, prompts: torch.Tensor, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    ids = generate(model, prompts, new_tokens)
    seconds = time.perf_counter() - start
    if ids.shape != (prompts.size(0), new_tokens):
        raise RuntimeError(f"expected {new_tokens} new tokens per row, got shape {tuple(ids.shape)}")
    return seconds, ids


def reset_peak_memory() -> None:
    """Restart the peak-RSS count (Linux), so the peak is that of generation with the model loaded,
    not of building it (bf16 models are built in fp32 first)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_in_subprocess(config: tuple[str, str, int], args: argparse.Namespace, weights: Path) -> dict:
    engine, dtype, batch = config
    command = [sys.executable, __file__, "--one", engine, dtype, str(batch), "--weights", str(weights),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


# ---- the machine -----------------------------------------------------------------------------------------
def memory_bandwidth(gigabytes: float = 1.0, repeats: int = 5) -> dict:
    """GB/s of reading a tensor far larger than any cache (a sum) and of copying it (read + write)."""
    source = torch.ones(int(gigabytes * 1e9) // 4)
    target = torch.empty_like(source)
    size = source.numel() * 4
    read = min(_seconds(lambda: source.sum()) for _ in range(repeats))
    copy = min(_seconds(lambda: target.copy_(source)) for _ in range(repeats))
    return {"read_gb_s": size / read / 1e9, "copy_gb_s": 2 * size / copy / 1e9, "tensor_gb": size / 1e9}


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def machine() -> dict:
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


# ---- the report ------------------------------------------------------------------------------------------
def add_derived(results: list[dict], bandwidth: dict, weights: dict[str, int]) -> None:
    """Share of the weight-streaming limit (batch 1), and how many leading new tokens equal HF's
    (the least over the batch's rows) in place of the generated ids."""
    hf_ids = {(r["dtype"], r["batch"]): r["ids"] for r in results if r["engine"] == "hf"}
    for r in results:
        r["weight_stream_share"] = (weights[r["dtype"]] * r["tokens_per_s"] / (bandwidth["read_gb_s"] * 1e9)
                                    if r["batch"] == 1 else None)
        reference, ids = hf_ids.get((r["dtype"], r["batch"])), r.pop("ids")  # ids are too long to keep
        r["same_tokens_as_hf"] = None if r["engine"] == "hf" or reference is None else \
            min(_common_prefix(mine, theirs) for mine, theirs in zip(ids, reference))


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# Beside the targets: what compiling changes (name, numerator config, denominator config).
COMPILED_RATIOS = [
    ("lmforge compiled / HF, fp32, batch 1", ("lmforge-compiled", "fp32", 1), ("hf", "fp32", 1)),
    ("lmforge compiled / HF compiled, fp32, batch 1", ("lmforge-compiled", "fp32", 1), ("hf-compiled", "fp32", 1)),
    ("HF compiled / HF, fp32, batch 1", ("hf-compiled", "fp32", 1), ("hf", "fp32", 1)),
]


def ratios(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """The target rows, and the compiled rows (those whose configurations were measured)."""
    speed = {(r["engine"], r["dtype"], r["batch"]): r["tokens_per_s"] for r in results}
    targets = []
    for name, numerator, denominator, target in TARGETS:
        measured = speed[numerator] / speed[denominator]
        targets.append({"name": name, "measured": measured, "target": target, "met": measured >= target})
    compiled = [{"name": name, "measured": speed[numerator] / speed[denominator]}
                for name, numerator, denominator in COMPILED_RATIOS if numerator in speed and denominator in speed]
    return targets, compiled


def markdown(results: list[dict], target_rows: list[dict], compiled_rows: list[dict], bandwidth: dict,
             weights: dict[str, int]) -> str:
    lines = ["| engine | dtype | batch | tokens/s | first token (ms) | peak RSS (MB) | share of weight-streaming limit "
             "| tokens equal to HF |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        share = "" if r["weight_stream_share"] is None else f"{r['weight_stream_share']:.0%}"
        same = "" if r["same_tokens_as_hf"] is None else f"{r['same_tokens_as_hf']}/{r['new_tokens']}"
        lines.append(f"| {r['engine']} | {r['dtype']} | {r['batch']} | {r['tokens_per_s']:.1f} "
                     f"| {r['first_token_s'] * 1000:.0f} | {r['peak_rss_mb']:.0f} | {share} | {same} |")
    lines += ["", f"memory bandwidth: {bandwidth['read_gb_s']:.1f} GB/s read, {bandwidth['copy_gb_s']:.1f} GB/s copy "
              f"(read + write); weights read per batch-1 step: {weights['fp32'] / 1e6:.0f} MB fp32, "
              f"{weights['bf16'] / 1e6:.0f} MB bf16", "", "| ratio | measured | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {t['name']} | {t['measured']:.2f}x | >= {t['target']}x | {'yes' if t['met'] else 'no'} |"
              for t in target_rows]
    if compiled_rows:
        lines += ["", "| compiled (not a target) | measured |", "|---|---:|"]
        lines += [f"| {c['name']} | {c['measured']:.2f}x |" for c in compiled_rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed generations per config (the fastest counts)")
    parser.add_argument("--no-compiled", action="store_true",
                        help="skip the compiled configurations (they spend about a minute compiling)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate_speed.json"))
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "DTYPE", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:  # a child process: one configuration, one JSON line
        engine, dtype, batch = args.one
        print(json.dumps(measure_config(engine, dtype, int(batch), args.new_tokens, args.repeats, Path(args.weights))))
        return

    start, load_before = time.perf_counter(), os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.1f}: other processes share the CPU, timings will be noisy",
              file=sys.stderr)
    model = lmforge_model()
    difference = max_logits_difference(model, hf_model_like(model))
    if difference > LOGITS_TOLERANCE:
        raise SystemExit(f"lmforge and HF logits differ by {difference:.2e} (> {LOGITS_TOLERANCE}): not the same model")
    print(f"same function: max |logits difference| = {difference:.1e}", file=sys.stderr)
    weights = {name: weight_bytes(model, dtype) for name, dtype in DTYPES.items()}
    bandwidth = memory_bandwidth()
    with tempfile.TemporaryDirectory() as tmp:
        weights_file = Path(tmp) / "gpt2-124m-random.safetensors"
        save_model(model, str(weights_file))
        del model
        results = []
        for config in CONFIGS + ([] if args.no_compiled else COMPILED):
            results.append(run_in_subprocess(config, args, weights_file))
            print(f"{config}: {results[-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    add_derived(results, bandwidth, weights)
    target_rows, compiled_rows = ratios(results)
    print(markdown(results, target_rows, compiled_rows, bandwidth, weights))

    report = {"machine": machine(), "threads": args.threads, "prompt_tokens": PROMPT_TOKENS,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "max_logits_difference": difference,
              "memory_bandwidth": bandwidth, "weight_bytes": weights, "results": results, "targets": target_rows,
              "compiled": compiled_rows,
              "load_average_before_after": [load_before[0], os.getloadavg()[0]],
              "wall_seconds": time.perf_counter() - start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten to {args.out} in {report['wall_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
