"""CLI verbs that run a trained model: generate (and, later, chat and serve)."""

from __future__ import annotations

import argparse
import sys


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    from ..generate.engine import generate_ids
    from ..tokenizer import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint

    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")
    model, tokenizer = load_model_from_checkpoint(args.checkpoint), load_tokenizer(args.checkpoint)
    prompt_ids = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eot_id]
    for i in range(args.num_samples):
        generator = torch.Generator().manual_seed(args.seed + i) if args.seed is not None else None
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(args.prompt)
        new_ids: list[int] = []
        printed = ""
        for token in generate_ids(model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                                  args.top_p, stop_ids=(tokenizer.eot_id,), generator=generator):
            new_ids.append(token)
            text = tokenizer.decode(new_ids)  # decode the whole tail: one token can be part of a character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
        sys.stdout.write("\n")
    return 0



def register(sub) -> None:
    """Add this module's verbs to the `lmforge` sub-command parser."""
    p = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/best")
    p.add_argument("--prompt", default="", help="text to continue ('' = start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (always the most likely token)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.set_defaults(func=cmd_generate)
