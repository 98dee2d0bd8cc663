"""Where one batch-1 decode step of lmforge's PyTorch engine spends its time (GPT-2 124M shape, CPU).

    python bench/decode_profile.py [--dtype float32|bfloat16] [--threads 2] [--steps 50] [--out FILE.json]

A decode step has to read every weight once, so its floor is bytes of weights / memory read
bandwidth. The step is profiled with torch.profiler after the layer probes and packed copies have
settled (24 warm-up steps), and its wall time is split into:
* matrix products: every Linear (whichever path model/linear.py picked) and the output layer,
  with the read rate they reach;
* attention: scaled_dot_product_attention over the KV cache;
* small tensor operations: norms, activations, residual adds, cache writes, reshapes, argmax;
* Python and dispatch: the rest of the wall time, the interpreter walking the layers and torch
  dispatching a few hundred operations (what the profiler's op times do not cover).
The profiler adds its own cost to every operation, so the unprofiled time per step is given too.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from generate_speed import PROMPT_TOKENS, SEED, VOCAB_SIZE, lmforge_model, machine, memory_bandwidth
from torch.profiler import ProfilerActivity, profile

from lmforge.generate.engine import generate_tokens
from lmforge.generate.params import SamplingParams
from lmforge.model import linear

MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "mkldnn::_linear_pointwise", "mkl::_mkl_linear",
              "aten::_weight_int8pack_mm"}
ATTENTION_OPS = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_efficient_attention_forward"}
WARMUP_STEPS = 24  # past PACK_AFTER_CALLS: the packed copies exist


def profile_steps(model, steps: int) -> tuple[float, dict[str, float], dict[str, int]]:
    """Unprofiled ms per step, profiled ms per step by group, and calls per step of each matrix-product op."""
    prompt = torch.randint(VOCAB_SIZE, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(SEED)).tolist()
    tokens = generate_tokens(model, prompt, SamplingParams(max_new_tokens=WARMUP_STEPS + 3 * steps, temperature=0.0))
    for _ in range(WARMUP_STEPS):
        next(tokens)
    start = time.perf_counter()
    for _ in range(steps):
        next(tokens)
    unprofiled_ms = (time.perf_counter() - start) / steps * 1000
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            next(tokens)
        profiled_ms = (time.perf_counter() - start) / steps * 1000
    tokens.close()
    groups: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / steps
        if event.key in MATMUL_OPS:
            groups["matrix products"] += ms
            calls[event.key] = event.count // steps
        elif event.key in ATTENTION_OPS:
            groups["attention"] += ms
        else:
            groups["small tensor operations"] += ms
    groups["Python and dispatch"] = max(0.0, profiled_ms - sum(groups.values()))
    return unprofiled_ms, dict(groups), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lmforge_model().to(getattr(torch, args.dtype))
    weight_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "pos_emb" not in name)
    bandwidth = memory_bandwidth()["read_gb_s"]
    unprofiled_ms, groups, calls = profile_steps(model, args.steps)
    floor_ms = weight_bytes / (bandwidth * 1e9) * 1000
    profiled_total = sum(groups.values())
    layouts = sorted({choice[0] for key, choice in linear._layout_choice.items() if key[3] == 1})
    print(f"GPT-2 124M {args.dtype}, batch 1, {args.threads} threads: {unprofiled_ms:.1f} ms per step unprofiled "
          f"({1000 / unprofiled_ms:.1f} tokens/s); floor {floor_ms:.1f} ms ({weight_bytes / 1e6:.0f} MB of weights "
          f"at {bandwidth:.1f} GB/s read bandwidth)")
    print(f"one-row layouts picked by model/linear.py: {', '.join(layouts)}\n")
    print("| part of a step | ms (profiled) | share |\n|---|---:|---:|")
    for name, ms in groups.items():
        print(f"| {name} | {ms:.2f} | {ms / profiled_total:.0%} |")
    matmul_rate = weight_bytes / (groups["matrix products"] / 1000) / 1e9
    print(f"\nmatrix products read the weights at {matmul_rate:.1f} GB/s ({matmul_rate / bandwidth:.0%} of read "
          f"bandwidth); calls per step: {calls}")
    report = {"machine": machine(), "dtype": args.dtype, "threads": args.threads, "steps": args.steps,
              "ms_per_step_unprofiled": unprofiled_ms, "ms_per_step_by_part_profiled": groups,
              "matmul_calls_per_step": calls, "one_row_layouts": layouts, "weight_bytes": weight_bytes,
              "read_bandwidth_gb_s": bandwidth, "floor_ms": floor_ms, "matmul_read_gb_s": matmul_rate}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
