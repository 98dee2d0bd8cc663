"""What a generation request asks for (SamplingParams) and what it returns (Completion)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.8          # 0 means greedy (always the most likely token), everywhere
    top_k: int = 0                    # keep the k most likely tokens; 0 = all
    top_p: float = 1.0                # nucleus: keep the smallest set holding this much probability; 1 = all
    min_p: float = 0.0                # drop tokens less likely than min_p x the top token's probability
    repetition_penalty: float = 1.0   # > 1 makes tokens already in the context less likely
    seed: int | None = None           # same seed + same request -> same text
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")


@dataclass
class Completion:
    text: str                 # the generated text (prompt excluded, stop string excluded)
    token_ids: list[int]      # the generated tokens
    prompt_tokens: int        # tokens of the prompt actually used (after any truncation)
    finish_reason: str        # "stop" (end-of-text or a stop string) or "length" (max_new_tokens reached)
