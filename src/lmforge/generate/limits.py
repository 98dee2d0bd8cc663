"""The server's limits, with their defaults (`lmforge serve` has an option for each; docs/serving.md says why).

Kept free of heavy imports, so the CLI can show the defaults in its help without loading FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# The continuous scheduler's settings (generate/continuous.py; `lmforge serve --kv-cache-mb --prefill-chunk`).
# KV cache memory: a slot holds one sequence's keys and values for a whole context (GPT-2 124M in fp32:
# 72 MiB), so 1 GiB serves 14 such sequences at once (at most the engine's max_batch_size, 16).
KV_CACHE_MB = 1024
# Prompt tokens read per round, across all sequences reading their prompts. The decoding rows wait for
# them, so a round's time grows with it; a long prompt takes len / PREFILL_CHUNK rounds (docs/serving.md).
PREFILL_CHUNK = 128


@dataclass(frozen=True)
class ServerLimits:
    # A request body larger than this is refused (413) before it is parsed. 1 MiB holds a prompt of about
    # 250,000 tokens, far more than any lmforge model's context; TGI's default is 2 MB.
    max_body_bytes: int = 1 << 20
    # The most tokens a request may ask for (max_tokens).
    max_tokens: int = 1024
    # Prompt + max_tokens must fit in this many tokens (else 400). None: the model's context (block_size).
    # More than the context is allowed: the engine then slides its window past it (docs/generation.md).
    max_model_len: int | None = None
    # Generation requests handled at once (tokenizing, queued, generating or streaming); more get 429.
    max_concurrent_requests: int = 64
    # Samples (prompts x n) waiting for a batch; a request that would pass this gets 429.
    max_queued: int = 128

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{field.name} must be a positive integer, got {value!r}")
