"""Fine-tuning verbs.

    lmforge finetune CONFIG.yaml | PRESET [--section.key=value ...]
    lmforge classify CKPT --text TEXT [--text TEXT ...] [--file FILE] [--json]
    lmforge inspect-sft FILE --tokenizer CKPT|TOKENIZER [--template chatml] [--format auto] [--max-length N]
      (also reachable as `lmforge prepare FILE --sft --inspect --tokenizer CKPT`)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def cmd_finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..config.run import load_run_config, preset_raw, render_config
    from ..distributed.env import env_from_torchrun
    from ..train.finetune import run_finetuning
    from .main import _config_source, _print_summary, _relaunch_under_torchrun, _training_benchmark

    if args.nproc is not None and args.nproc != 1:
        return _relaunch_under_torchrun(args.nproc, [args.config, *overrides], verb="finetune")
    path, base = _config_source(args.config, preset_raw)
    cfg = load_run_config(path, overrides, base=base)
    config_yaml = render_config(cfg, "Resolved config of this fine-tuning run.")
    result, setup = run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest, config_yaml, cfg.dist,
                                   benchmark=_training_benchmark(cfg.train))
    if env_from_torchrun().is_main:  # under torchrun, one report rather than one per process
        if cfg.finetune.task == "classify":
            _classification_report(result.run_dir, setup)
        else:
            _print_summary(result, setup.sample_prompt)
    if result.stop_reason.startswith("diverged"):
        return EXIT_FAILED
    return EXIT_INTERRUPTED if result.stop_reason.startswith("interrupted") else 0


def _classification_report(run_dir: Path, setup) -> None:
    """Score best/ (or last/) on the validation split; print it and write classification_report.json."""
    from ..eval.classification import format_metrics
    from ..eval.classify import evaluate_classifier, load_classifier

    ckpt_dir = run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "last"
    if setup.val_batches is None or not ckpt_dir.is_dir():
        return
    model, _, classes = load_classifier(ckpt_dir, next(setup.model.parameters()).device)
    report = {"checkpoint": str(ckpt_dir), **evaluate_classifier(model, setup.val_batches, classes)}
    (run_dir / "classification_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nvalidation split, {ckpt_dir.name}/:\n{format_metrics(report)}")


def cmd_classify(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..eval.classify import load_classifier, predict

    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")
    texts = list(args.text or [])
    if args.file:
        texts += [line for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError("give --text TEXT (repeatable) or --file FILE (one text per line)")
    classifier, tokenizer, classes = load_classifier(args.checkpoint)
    for text, probs in zip(texts, predict(classifier, tokenizer, texts)):
        best = max(range(len(classes)), key=probs.__getitem__)
        if args.json:
            print(json.dumps({"text": text, "label": classes[best],
                              "probabilities": dict(zip(classes, (round(p, 6) for p in probs)))}))
        else:
            print(f"{classes[best]}\t{probs[best]:.3f}\t{text}")
    return 0


def cmd_inspect_sft(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..data.sft import (drop_truncated_answers, load_sft_examples, preflight, render_inspection,
                            tokenize_conversation)
    from ..data.templates import TEMPLATES
    from ..tokenizer import load_tokenizer
    from ..tokenizer.factory import build_tokenizer

    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")
    if not args.tokenizer:
        raise ValueError("--tokenizer: give the checkpoint (or tokenizer folder) you will fine-tune, "
                         "so the tokens shown are the ones it trains on")
    if args.template not in TEMPLATES:
        raise ValueError(f"--template: unknown {args.template!r}; choose {', '.join(TEMPLATES)}")
    tokenizer = (build_tokenizer(args.tokenizer) if args.tokenizer == "gpt2" else load_tokenizer(args.tokenizer))
    conversations = load_sft_examples(Path(args.sources[0]), args.format)
    examples = [tokenize_conversation(c, tokenizer, TEMPLATES[args.template], True, args.max_length)
                for c in conversations]
    if not 0 <= args.example < len(examples):
        raise ValueError(f"--example: the file has {len(examples)} examples (0..{len(examples) - 1})")
    print(render_inspection(examples[args.example], tokenizer))
    print()
    kept = drop_truncated_answers(examples, tokenizer.eot_id, args.max_truncated, args.max_length)
    if len(kept) < len(examples):
        print(f"pre-flight: {len(examples) - len(kept)} examples cut before the end of their answer at "
              f"{args.max_length} tokens would be left out")
    print(f"pre-flight: {preflight(kept, tokenizer, args.max_length, args.max_truncated)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained model: causal, instruct (SFT) or classify; "
                                        "full, LoRA or QLoRA",
                       description="Set model.init_from to the pretrained checkpoint or Hugging Face folder, "
                                   "data.path to the data, finetune.task and finetune.method. Any key can be "
                                   "overridden as --section.key=value.")
    p.add_argument("config", help="a YAML run config or a preset name (sft-lora, classify-spam, ...)")
    p.add_argument("--nproc", type=int, metavar="N", help="fine-tune on N processes of this machine (re-launches "
                   "under torchrun --standalone; full and LoRA fine-tuning; see docs/distributed.md)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("classify", help="predict the class of texts with a classification checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder from `lmforge finetune` with finetune.task=classify")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--file", help="a file with one text per line")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every class's probability")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("inspect-sft", help="check an instruction dataset and show one example's trained tokens")
    add_inspect_flags(p)
    p.add_argument("sources", nargs=1, help="the instruction data file (JSON or JSONL)")
    p.set_defaults(func=cmd_inspect_sft)


def add_inspect_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `inspect-sft` and `prepare --sft` (the tokenizer flag comes from prepare there)."""
    if not any("--tokenizer" in a.option_strings for a in p._actions):
        p.add_argument("--tokenizer", help="the checkpoint or tokenizer folder the data will be trained with")
    p.add_argument("--template", default="chatml", help="prompt template: chatml | alpaca | plain (default chatml)")
    p.add_argument("--format", default="auto", help="auto | alpaca | sharegpt | messages | prompt_completion")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per example (the model's block_size + 1)")
    p.add_argument("--max-truncated", type=float, default=0.05, help="fail when more examples than this are cut")
    p.add_argument("--example", type=int, default=0, help="which example to show (default: the first)")
