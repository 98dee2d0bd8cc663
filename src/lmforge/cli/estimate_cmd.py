"""The `lmforge estimate` verb: parameters, memory and step time of a run before running it.

    lmforge estimate [CONFIG.yaml | PRESET] [--section.key=value ...] [--memory GB] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

GIB = 2**30
TOKENIZER_VOCAB = {"gpt2": 50257, "char": 100}  # char: a typical English text has ~65-100 characters


def cmd_estimate(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..config.run import load_run_config, preset_raw
    from ..train.estimate import available_memory, count_params, estimate_run, suggest_batch
    from ..utils.device import resolve_device, resolve_precision
    from .main import _config_source

    path, base = _config_source(args.config, preset_raw) if args.config else (None, None)
    cfg = load_run_config(path, overrides, base=base)
    model_cfg = cfg.model
    if model_cfg.vocab_size is None:
        model_cfg = replace(model_cfg, vocab_size=TOKENIZER_VOCAB.get(cfg.data.tokenizer, cfg.data.vocab_size))
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device, count_params(model_cfg)[0])
    estimate = estimate_run(model_cfg, cfg.train, device, precision)
    budget = int(args.memory * GIB) if args.memory else available_memory(device)
    fixed = estimate.total_bytes - estimate.memory["activations"]
    suggestion = suggest_batch(model_cfg, cfg.train, precision, budget, fixed)
    if args.json:
        print(json.dumps({**asdict(estimate), "total_bytes": estimate.total_bytes, "precision": precision,
                          "device": str(device), "budget_bytes": budget, "suggested_micro_batch_and_accum": suggestion}))
        return 0
    print(_as_text(estimate, model_cfg, cfg.train, precision, device, budget, suggestion))
    return 0


def _as_text(estimate, model_cfg, train_cfg, precision, device, budget, suggestion) -> str:
    lines = [f"model: {estimate.params:,} parameters ({estimate.non_embedding_params:,} outside the embeddings), "
             f"{model_cfg.n_layer} layers x {model_cfg.n_embd} wide, context {model_cfg.block_size}, "
             f"vocabulary {model_cfg.vocab_size:,}",
             f"step: {train_cfg.batch_size} x {model_cfg.block_size} tokens x {train_cfg.grad_accum_steps} accumulation "
             f"= {estimate.tokens_per_step:,} tokens, precision {precision} on {device}",
             "", "memory (one training step, peak):"]
    for part, size in estimate.memory.items():
        lines.append(f"  {part:<14} {size / 2**20:>10,.0f} MB")
    lines.append(f"  {'total':<14} {estimate.total_bytes / 2**20:>10,.0f} MB   (available: {budget / 2**20:,.0f} MB)")
    lines += ["", f"time: {estimate.flops_per_step / 1e12:.2f} TFLOP per step; matmul speed here "
              f"{estimate.matmul_flops_per_s / 1e9:,.0f} GFLOP/s; at an assumed {estimate.assumed_mfu:.0%} of it "
              f"(MFU) a step takes about {estimate.step_seconds:.2f} s "
              f"({estimate.tokens_per_step / estimate.step_seconds:,.0f} tokens/s)"]
    if suggestion is None:
        lines.append("fit: even one sequence per micro-batch does not fit; use a smaller model or context")
    elif estimate.total_bytes > budget:
        micro, accum = suggestion
        lines.append(f"fit: too big for {budget / 2**20:,.0f} MB; use --train.batch_size={micro} "
                     f"--train.grad_accum_steps={accum} (same batch of {micro * accum} sequences per step)")
    else:
        lines.append("fit: fits as configured")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("estimate", help="predict parameters, memory and step time of a run (nothing is trained)")
    p.add_argument("config", nargs="?", help="a YAML run config or a preset name (default: the demo)")
    p.add_argument("--memory", type=float, help="memory budget in GB (default: what is available now)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_estimate)
