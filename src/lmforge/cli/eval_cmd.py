"""The `lmforge eval` verb: loss, perplexity and next-token accuracy of a checkpoint on held-out text.

    lmforge eval CKPT --data DIR|FILES... [--split val|train|all] [--batch-size 8] [--max-batches N]
    lmforge eval CKPT --tasks lmforge-quick|hellaswag,... [--limit N --num-fewshot K --include-path DIR]
                      [--quantize int8] [--backend torch|llamacpp --quant q8_0] [--json]

--quantize int8 scores the checkpoint as loaded, then with int8 weights, on the same windows, and
reports both and the change: the cost of quantization in perplexity.
--backend llamacpp scores the checkpoint's GGUF export (--quant, cached) in llama.cpp instead, on the
same windows; the PyTorch numbers of the same windows come with `lmforge eval` without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .generate_cmds import add_backend_flags, check_backend_flags


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..data.config import DataConfig
    from ..eval.perplexity import evaluate, heldout_batches, heldout_dataset
    from ..export.llamacpp_backend import DEFAULT_QUANT
    from ..train.checkpoint import read_model_config
    from ..utils.device import resolve_device
    from ..utils.progress import progress_bar

    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")
    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise ValueError("--batch-size and --max-batches must be at least 1")
    check_backend_flags(args.backend, args.quantize, args.quant)
    if (args.data is None) == (args.tasks is None):
        raise ValueError("give --data (perplexity on held-out text) or --tasks (lm-evaluation-harness tasks)")
    device = resolve_device(args.device) if args.backend == "torch" else "cpu"
    if args.tasks is not None:
        return _run_tasks(args, device)
    model = _scored_model(args, device)
    sources = [Path(source).expanduser() for source in args.data]
    # Preparing raw files prints progress lines; stdout is kept for the result (one JSON object with --json).
    with contextlib.redirect_stdout(sys.stderr):
        data_dir, default_split = heldout_dataset(sources, args.checkpoint, DataConfig().cache_dir)
    split = args.split or default_split
    block_size = read_model_config(args.checkpoint).block_size

    def score(desc: str):
        batches, count = heldout_batches(data_dir, split, block_size, args.batch_size, args.max_batches)
        return evaluate(model, progress_bar(batches, total=count, desc=desc, unit="batch"), device)

    result = score("evaluating")
    report = {"checkpoint": str(args.checkpoint), "data": str(data_dir), "split": split,
              "block_size": block_size, **asdict(result)}
    if args.backend == "llamacpp":
        report["backend"] = f"llamacpp {args.quant or DEFAULT_QUANT}"
    if args.quantize == "int8":
        from ..model.quant import quantize_model

        quant = quantize_model(model)
        print(quant.summary(), file=sys.stderr)
        report["int8"] = {**asdict(score("evaluating int8")), "kernel": quant.kernel}
    print(json.dumps(report) if args.json else _as_text(report))
    return 0


def _run_tasks(args: argparse.Namespace, device: str) -> int:
    """lm-evaluation-harness tasks on the checkpoint: scores with standard errors, chance levels, warnings."""
    try:
        from ..eval.benchmarks import run_tasks
        from ..eval.harness import LMForgeLM
    except ImportError as exc:
        raise ValueError(f"--tasks needs lm-evaluation-harness ({exc.name} is missing): "
                         "pip install 'lmforge[lmeval]'") from exc
    from .generate_cmds import _load_engine

    if args.backend == "torch":
        from ..generate.engine import Engine
        from ..tokenizer import load_tokenizer
        from ..train.checkpoint import load_model_from_checkpoint

        engine = Engine(load_model_from_checkpoint(args.checkpoint, device), load_tokenizer(args.checkpoint))
    else:
        engine = _load_engine(args.checkpoint, backend="llamacpp", quant=args.quant)
    lm = LMForgeLM(engine, batch_size=args.batch_size)
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    with contextlib.redirect_stdout(sys.stderr):  # the harness prints progress; stdout is for the result
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        report, _ = run_tasks(lm, tasks, limit=limit, num_fewshot=args.num_fewshot,
                              include_path=args.include_path)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "tasks": tasks, "limit": limit,
                          "num_fewshot": args.num_fewshot, **report.as_dict()}))
    else:
        print(report.as_text())
    return 0


def _scored_model(args: argparse.Namespace, device: str):
    """What is scored: the PyTorch model, or the checkpoint's GGUF export running in llama.cpp."""
    if args.backend == "torch":
        from ..train.checkpoint import load_model_from_checkpoint

        return load_model_from_checkpoint(args.checkpoint, device)
    from ..export.llamacpp_backend import DEFAULT_QUANT, LlamaCppScorer, gguf_for
    from ..train.checkpoint import read_model_config

    gguf_file = gguf_for(args.checkpoint, args.quant or DEFAULT_QUANT)
    print(f"scoring {gguf_file} in llama.cpp", file=sys.stderr)
    return LlamaCppScorer(gguf_file, read_model_config(args.checkpoint).block_size)


def _as_text(report: dict) -> str:
    backend = f" [{report['backend']}]" if "backend" in report else ""
    text = (f"{report['checkpoint']}{backend} on the {report['split']} split of {report['data']} "
            f"({report['tokens']:,} tokens, windows of {report['block_size']}):\n"
            f"  {_scores(report)}")
    if "int8" in report:
        text += f"\n  {_scores(report['int8'])}  (int8 weights)"
        if report["perplexity"] and report["int8"]["perplexity"]:
            change = report["int8"]["perplexity"] / report["perplexity"] - 1
            text += f"\n  int8 changes perplexity by {change:+.2%}"
    return text


def _scores(result: dict) -> str:
    ppl = "n/a" if result["perplexity"] is None else f"{result['perplexity']:.2f}"
    return f"loss {result['loss']:.4f}  perplexity {ppl}  accuracy {result['accuracy']:.2%}"


def register(sub) -> None:
    """Add the `eval` verb to the `lmforge` sub-command parser."""
    p = sub.add_parser("eval", help="loss, perplexity and next-token accuracy of a checkpoint on held-out text")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/best")
    p.add_argument("--data", nargs="+", metavar="DIR|FILE",
                   help="a prepared data folder (its tokenizer must match the checkpoint's), or raw files/folders, "
                        "which are tokenized with the checkpoint's tokenizer")
    p.add_argument("--split", choices=["val", "train", "all"],
                   help="which split to score (default: val of a prepared folder; train of raw files, "
                        "which holds all of them)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (default: all)")
    p.add_argument("--tasks", help="lm-evaluation-harness tasks or groups, comma-separated (e.g. lmforge-quick, "
                                   "hellaswag,arc_easy); instead of --data. Needs pip install 'lmforge[lmeval]'")
    p.add_argument("--limit", type=float, default=None,
                   help="with --tasks: examples per task (a fraction below 1 takes that share)")
    p.add_argument("--num-fewshot", type=int, default=None, help="with --tasks: solved examples put before each one")
    p.add_argument("--include-path", help="with --tasks: a folder of task YAMLs of your own (the harness's "
                                          "--include_path)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: also score the model with weight-only int8 matrices, and print the change")
    add_backend_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_eval)
