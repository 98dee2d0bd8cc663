"""The `lmforge` command: one thin function per verb that loads its config and calls the library.

    lmforge train [CONFIG.yaml | PRESET] [--section.key=value ...] [--nproc N]
    lmforge ingest SRC... --out DIR [--workers N --text-field F --no-ocr --pii --ingest.clean.KEY=VALUE]
    lmforge prepare SRC... --out DIR [--tokenizer bpe] [--vocab-size 4096] [--val-fraction 0.1] [ingest flags]
    lmforge init [PRESET] > run.yaml
    lmforge generate CKPT --prompt TEXT [--max-new-tokens N --temperature T --top-k K --top-p P --seed S --json]
    lmforge chat CKPT                 lmforge serve CKPT [--host 127.0.0.1 --port 8000]
    lmforge eval CKPT --data DIR|FILES [--json]
    lmforge finetune CONFIG.yaml | PRESET    lmforge classify CKPT --text TEXT
    lmforge inspect-sft FILE --tokenizer CKPT (= lmforge prepare FILE --sft --inspect --tokenizer CKPT)
    lmforge export CKPT --format hf --out DIR  |  --format gguf [--quant q8_0] [--out FILE]
    lmforge estimate [CONFIG.yaml | PRESET] [--memory GB]
    lmforge report RUN_DIR
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from . import estimate_cmd, eval_cmd, export_cmd, finetune_cmds, generate_cmds

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..config.run import load_run_config, preset_raw, render_config
    from ..distributed.env import env_from_torchrun
    from ..train.pretrain import run_pretraining

    if args.nproc is not None and args.nproc != 1:
        return _relaunch_under_torchrun(args.nproc, ([args.config] if args.config else []) + overrides)
    # With no config at all, `lmforge train` is the built-in demo (presets/demo.yaml).
    path, base = _config_source(args.config or "demo", preset_raw)
    cfg = load_run_config(path, overrides, base=base)
    config_yaml = render_config(cfg, "Resolved config of this run.")
    result = run_pretraining(cfg.model, cfg.data, cfg.train, cfg.ingest, config_yaml, cfg.dist,
                             benchmark=_training_benchmark(cfg.train))
    if env_from_torchrun().is_main:  # under torchrun, one summary rather than one per process
        _print_summary(result, cfg.train.sample_prompt)
    if result.stop_reason.startswith("diverged"):
        return EXIT_FAILED
    return EXIT_INTERRUPTED if result.stop_reason.startswith("interrupted") else 0


def _training_benchmark(train_cfg):
    """What scores train.eval_tasks during training, or None when it names none."""
    tasks = [task.strip() for task in train_cfg.eval_tasks.split(",") if task.strip()]
    if not tasks:
        return None
    try:
        from ..eval.benchmarks import training_benchmark
    except ImportError as exc:
        raise ValueError(f"train.eval_tasks needs lm-evaluation-harness ({exc.name} is missing): "
                         "pip install 'lmforge[lmeval]'") from exc
    return training_benchmark(tasks, train_cfg.eval_tasks_limit)


def torchrun_command(nproc: int, train_args: list[str], verb: str = "train") -> list[str]:
    """`lmforge VERB ARGS` as N processes of this machine: torchrun's rendezvous on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lmforge", verb, *train_args]


def _relaunch_under_torchrun(nproc: int, train_args: list[str], verb: str = "train") -> int:
    """Replace this process by torchrun running the same command without --nproc (Ctrl-C then reaches torchrun)."""
    if nproc < 1:
        raise ValueError(f"--nproc: must be at least 1, got {nproc}")
    if "RANK" in os.environ:
        raise ValueError("--nproc: this process was already started by torchrun; drop --nproc")
    command = torchrun_command(nproc, train_args, verb)
    print(f"launching {nproc} processes: {shlex.join(command)}", flush=True)
    os.execv(sys.executable, command)
    return 0  # not reached: execv does not return


def _config_source(arg: str | None, preset_raw) -> tuple[Path | None, dict | None]:
    """A positional argument is a YAML file if it exists (or looks like one), else a preset name."""
    if arg is None:
        return None, None
    if Path(arg).is_file() or arg.endswith((".yaml", ".yml")):
        return Path(arg), None
    return None, preset_raw(arg)


def _print_summary(result, prompt: str) -> None:
    from ..generate.engine import generate_text
    from ..tokenizer import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint

    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"\nstopped: {result.stop_reason} after {result.steps} steps in {result.elapsed:.0f} s")
    print(f"train loss {fmt(result.train_loss)}, val loss {fmt(result.val_loss)}, "
          f"best val loss {fmt(result.best_val_loss)} at step {result.best_step}")
    print(f"diagnosis: {result.verdict} (details in {result.run_dir / 'diagnosis.txt'})")
    best = result.run_dir / "best"
    ckpt_dir = best if best.is_dir() else result.run_dir / "last"
    if ckpt_dir.is_dir():
        model, tokenizer = load_model_from_checkpoint(ckpt_dir), load_tokenizer(ckpt_dir)
        print(f"\n--- a sample from {ckpt_dir} ---")
        print(prompt + generate_text(model, tokenizer, prompt, max_new_tokens=200, temperature=0.7, top_k=50, seed=0))
        print("---")
    print(f"\nrun directory: {result.run_dir}  (training_metrics.json, training_curve.png, "
          f"loss_by_epoch.png, samples.jsonl, best/, last/)")


def _ingest_config(args: argparse.Namespace, overrides: list[str]):
    """The ingest section: from --config and --ingest.* overrides, then the short flags on top."""
    from dataclasses import replace

    from ..config.run import load_run_config

    cfg = load_run_config(args.config, overrides).ingest
    changes = {"workers": args.workers, "text_fields": args.text_field, "ocr_language": args.ocr_language}
    cfg = replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    if args.no_ocr:
        cfg = replace(cfg, ocr=False)
    if args.pii:
        cfg = replace(cfg, clean=replace(cfg.clean, pii=True))
    return cfg


def cmd_ingest(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..ingest.pipeline import ingest

    ingest(args.sources, args.out, _ingest_config(args, overrides))
    return 0


def cmd_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..data.prepare import prepare

    if args.sft:  # instruction data is not packed into shards: check it and show what will be trained
        if not args.inspect or len(args.sources) != 1:
            raise ValueError("--sft: use `lmforge prepare FILE --sft --inspect --tokenizer CKPT` on one file "
                             "(fine-tuning reads the file itself; this checks it first)")
        args.tokenizer = None if args.tokenizer == "bpe" else args.tokenizer
        return finetune_cmds.cmd_inspect_sft(args, overrides)
    if not args.out:
        raise ValueError("--out: give the folder to write train.bin/val.bin to")
    meta = prepare(args.sources, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   val_fraction=args.val_fraction, seed=args.seed, ingest_cfg=_ingest_config(args, overrides))
    print(f"prepared {args.out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens from "
          f"{meta['documents']} documents, vocabulary {meta['vocab_size']:,}")
    return 0


def cmd_init(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..config.run import load_run_config, preset_raw, render_config

    path, base = _config_source(args.preset, preset_raw)
    cfg = load_run_config(path, overrides, base=base)
    title = f"lmforge run config (from: {args.preset or 'defaults'}). Run it with: lmforge train THIS_FILE.yaml"
    sys.stdout.write(render_config(cfg, title))
    return 0


def cmd_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..train.diagnose import write_diagnosis
    from ..train.metrics import load_metrics
    from ..train.plots import write_plots

    _reject_overrides(overrides)
    metrics = load_metrics(args.run_dir)
    write_plots(args.run_dir, metrics)
    print(write_diagnosis(args.run_dir, metrics).text)
    return 0


def _reject_overrides(overrides: list[str]) -> None:
    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")


def _add_ingest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML run config whose ingest: section to use")
    p.add_argument("--workers", type=int, help="reader processes (default: one per CPU core)")
    p.add_argument("--text-field", action="append", help="field/column holding the text in CSV/JSON/Parquet/SQLite "
                   "(repeatable; default: text/content/body, else all string fields)")
    p.add_argument("--no-ocr", action="store_true", help="do not OCR images and scanned PDF pages")
    p.add_argument("--ocr-language", help="Tesseract language(s), e.g. eng or eng+deu")
    p.add_argument("--pii", action="store_true", help="replace e-mail addresses and phone numbers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Train, fine-tune and run GPT-style language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (no arguments: a demo on the standard library's and PyTorch's "
                                     "Python source)",
                       description="Any config key can be overridden as --section.key=value, e.g. --train.max_steps=500.")
    p.add_argument("config", nargs="?", help="a YAML run config, or a preset name (see `lmforge init --help`)")
    p.add_argument("--nproc", type=int, metavar="N", help="train on N processes of this machine, e.g. one per GPU "
                   "(re-launches the command under torchrun --standalone --nproc_per_node N; see docs/distributed.md)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ingest", help="read documents of any format into a clean documents.jsonl + report",
                       description="Cleaning options can be set as --ingest.clean.KEY=VALUE (see `lmforge init`).")
    p.add_argument("sources", nargs="+", help="files, folders or archives")
    p.add_argument("--out", required=True, help="output folder")
    _add_ingest_flags(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("prepare", help="ingest documents and tokenize them into train.bin/val.bin shards")
    p.add_argument("sources", nargs="+", help="files, folders or archives")
    p.add_argument("--out", help="output folder")
    _add_ingest_flags(p)
    p.add_argument("--tokenizer", default="bpe", help="char | bpe | gpt2 | PATH (default: bpe)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size for bpe (default: 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share held out for validation (default: 0.1)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--sft", action="store_true", help="the source is instruction data: check it (with --inspect)")
    p.add_argument("--inspect", action="store_true", help="with --sft: pre-flight check + one example's trained tokens")
    finetune_cmds.add_inspect_flags(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("init", help="print a full, commented run config")
    p.add_argument("preset", nargs="?", help="a run preset (demo, shakespeare-char), a model preset (gpt2-tiny, "
                   "llama-tiny, gpt2-124m, ...) or a YAML file to show fully resolved")
    p.set_defaults(func=cmd_init)

    finetune_cmds.register(sub)
    generate_cmds.register(sub)
    eval_cmd.register(sub)
    export_cmd.register(sub)
    estimate_cmd.register(sub)

    p = sub.add_parser("report", help="re-plot a run's curves and explain them in words")
    p.add_argument("run_dir", help="the run directory (train.out_dir)")
    p.set_defaults(func=cmd_report)
    return parser


def join_override_values(argv: list[str]) -> list[str]:
    """Turn `--train.lr 3e-4` into `--train.lr=3e-4`, so argparse never mistakes 3e-4 for the config file."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        is_override = arg.startswith("--") and "." in arg and "=" not in arg
        if is_override and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            joined.append(f"{arg}={argv[i + 1]}")
            i += 2
        else:
            joined.append(arg)
            i += 1
    return joined


def main(argv: list[str] | None = None) -> int:
    argv = join_override_values(sys.argv[1:] if argv is None else list(argv))
    args, overrides = build_parser().parse_known_args(argv)
    try:
        return args.func(args, overrides)
    except ValueError as exc:  # bad config or input: one clear line, no traceback
        print(f"lmforge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `lmforge report run | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
