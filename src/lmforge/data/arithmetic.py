"""A toy task for GRPO that a tiny model learns on a CPU: add two numbers.

    python -m lmforge.data.arithmetic OUT_DIR [--max-operand 50] [--sft 2000] [--prompts 500] [--same-questions]

writes OUT_DIR/text.txt (the SFT questions with their answers as plain lines, to pretrain a tiny base
model on), OUT_DIR/sft.jsonl (the same as prompt / completion records, for a short instruction tuning,
so the model knows the answer's form and is sometimes right) and OUT_DIR/prompts.jsonl (prompt / answer
records for GRPO, scored by lmforge.train.rewards:arithmetic). GRPO's prompts are questions the model
never saw answered, or with --same-questions the SFT questions themselves: RL then sharpens what SFT
taught (the toy recipe of docs/preference-tuning.md; a 4 x 128 character model does not generalise sums
to unseen ones, with or without RL).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def arithmetic_sets(max_operand: int, sft: int, prompts: int, seed: int,
                    same_questions: bool = False) -> tuple[list[dict], list[dict]]:
    """(SFT records, GRPO records): no question in both, or (same_questions) GRPO asks the SFT questions."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if sft + (0 if same_questions else prompts) > len(pairs):
        raise ValueError(f"only {len(pairs)} different questions up to {max_operand}; ask for fewer or raise it")
    random.Random(seed).shuffle(pairs)
    sft_records = [{"prompt": question(a, b), "completion": str(a + b)} for a, b in pairs[:sft]]
    asked = pairs[:sft] if same_questions else pairs[sft:sft + prompts]
    grpo_records = [{"prompt": question(a, b), "answer": a + b} for a, b in asked]
    return sft_records, grpo_records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--max-operand", type=int, default=50)
    parser.add_argument("--sft", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--same-questions", action="store_true", help="GRPO asks the SFT questions")
    args = parser.parse_args(argv)
    sft, grpo = arithmetic_sets(args.max_operand, args.sft, args.prompts, args.seed, args.same_questions)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("sft.jsonl", sft), ("prompts.jsonl", grpo)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "text.txt").write_text("".join(f"{r['prompt']} {r['completion']}\n" for r in sft))
    print(f"wrote {len(sft)} SFT examples and {len(grpo)} GRPO prompts to {out}")


if __name__ == "__main__":
    main()
