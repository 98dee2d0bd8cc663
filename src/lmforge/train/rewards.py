"""Built-in reward functions for GRPO (`finetune.grpo.rewards: [lmforge.train.rewards:arithmetic]`).

A reward function takes (prompt text, completion text, the data record) and returns a float. Verifiable
rewards check the answer against the record rather than judging its style, which leaves a policy less
to exploit. Write your own the same way, in any module on the Python path.
"""

from __future__ import annotations

import re

_FIRST_INTEGER = re.compile(r"-?\d+")


def arithmetic(prompt: str, completion: str, record: dict) -> float:
    """1 if the first integer in the completion is the record's "answer", else 0 (lmforge.data.arithmetic)."""
    found = _FIRST_INTEGER.search(completion)
    return float(found is not None and int(found.group()) == int(record["answer"]))


def brevity(prompt: str, completion: str, record: dict) -> float:
    """A small bonus for short answers (0.1 at most, less for longer ones): add it to keep answers from rambling."""
    return 0.1 / (1 + len(completion.split()))
