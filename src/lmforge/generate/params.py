"""What a generation request asks for (SamplingParams) and what it returns (Completion)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A temperature below this samples as greedy (the most likely token). Dividing logits by a tiny temperature
# overflows to inf (1e-45 does in float32) and softmax then gives NaN; long before that the distribution is
# already all on the top token. vLLM draws the same line, at 1e-5.
GREEDY_BELOW = 1e-2
SEED_RANGE = (-2**63, 2**63 - 1)  # what torch.Generator.manual_seed takes, with room for seed + sample index


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.8          # 0 (or below GREEDY_BELOW) means greedy (always the most likely token)
    top_k: int = 0                    # keep the k most likely tokens; 0 = all
    top_p: float = 1.0                # nucleus: keep the smallest set holding this much probability; 1 = all
    min_p: float = 0.0                # drop tokens less likely than min_p x the top token's probability
    repetition_penalty: float = 1.0   # > 1 makes tokens already in the context less likely
    seed: int | None = None           # same seed + same request -> same text
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    ignore_eos: bool = False          # go on past end-of-text (as text), always max_new_tokens tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def validate(self) -> None:
        """Raise ValueError for a value the sampler cannot use (NaN, infinities and out-of-range numbers)."""
        floats = {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
                  "repetition_penalty": self.repetition_penalty}
        for name, value in floats.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be a 64-bit signed integer, got {self.seed}")


@dataclass
class Completion:
    text: str                 # the generated text (prompt excluded, stop string excluded)
    token_ids: list[int]      # the generated tokens
    prompt_tokens: int        # tokens of the prompt actually used (after any truncation)
    finish_reason: str        # "stop" (end-of-text or a stop string) or "length" (max_new_tokens reached)
