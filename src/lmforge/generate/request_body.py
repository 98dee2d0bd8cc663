"""The request bodies the server accepts, with a finite, sane range for every field.

Every field is checked before a request reaches the model, so a bad value is answered with a 400
naming the field and never meets the other requests of its batch. Checks are strict: a number
must be a JSON number (not "0.5", not true), text must be a string, and NaN or Infinity (which
Python's JSON parser accepts as literals) are refused. Fields OpenAI defines that lmforge does not
use (user, ...) are ignored, as before.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .params import SEED_RANGE

DEFAULT_MAX_TOKENS = 256      # when a request does not say (less when the context has less room)
MAX_CHOICES = 16              # prompts x n in one request
MAX_STOP_STRINGS = 16         # OpenAI allows 4; vLLM any number; each is checked after every token
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 300          # entries, as OpenAI
LOGIT_BIAS_LIMIT = 100        # a bias is in [-100, 100], as OpenAI: -100 bans a token, 100 all but forces it
MAX_TEMPERATURE = 100.0       # far past uniform already; OpenAI stops at 2
REPETITION_PENALTY_RANGE = (0.01, 10.0)  # a smaller penalty multiplies logits by > 100: float32 overflows soon
MAX_TOP_K = 1_000_000         # more than any vocabulary: top_k beyond the vocabulary keeps every token
MAX_LOGPROBS = 20             # most likely tokens listed per position, as OpenAI (vLLM allows more)
MAX_PROMPT_IDS = 1_000_000    # token ids in one prompt given as ids (the body size limit bounds it first)


def _encodable(text: str) -> str:
    """Text that UTF-8 can encode: JSON's \\ud800 escapes give lone surrogates, which tokenizers choke on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone UTF-16 surrogate (not valid Unicode text)") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS), AfterValidator(_encodable)]
Bias = Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT)]


def _token_id_keys(bias: dict[str, float] | None) -> dict[str, float] | None:
    for key in bias or {}:
        if not key.isdigit():  # token ids, written as strings (JSON keys are strings)
            raise ValueError(f"keys must be token ids, got {key!r}")
    return bias


class SamplingFields(BaseModel):
    # strict: no "1" for 1, no true for 1; allow_inf_nan=False: NaN and +-Infinity are refused
    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1)  # upper bound: the server's limit and the context's room
    temperature: float = Field(1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    # In OpenAI's API, checked but not applied: lmforge's sampler has no presence, frequency or logit biases yet.
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Annotated[dict[str, Bias], Field(max_length=MAX_LOGIT_BIAS),
                          AfterValidator(_token_id_keys)] | None = None
    # Not in OpenAI's API; accepted as extra body fields, as vLLM and llama.cpp do.
    top_k: int = Field(0, ge=0, le=MAX_TOP_K)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    # vLLM's: keep only the prompt's last k tokens, instead of a 400 when it does not fit the context.
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    # vLLM's: generate past end-of-text, always max_tokens tokens (benchmarks use it for fixed answer lengths).
    ignore_eos: bool = False

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_PROMPT_IDS)]


class CompletionRequest(SamplingFields):
    # Text, or token ids (the lm-evaluation-harness sends ids); one of either, or a list of them. "" starts
    # a new document. Ids are checked against the vocabulary by the server.
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_CHOICES)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES)]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # per token: its log-probability and the top N
    echo: bool = False  # the prompt too, in the text and (with logprobs) its tokens' log-probabilities


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)

    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False  # each answer token's log-probability ...
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # ... and the N most likely tokens there
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens in the chat API

    def requested_tokens(self) -> int | None:
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens


class TokenizeRequest(BaseModel):
    """/tokenize, as vLLM's: text in, token ids out."""

    model_config = ConfigDict(strict=True)

    prompt: Text
    add_special_tokens: bool = True  # accepted for compatibility: lmforge's tokenizers add no special tokens
    model: str | None = None


class DetokenizeRequest(BaseModel):
    """/detokenize, as vLLM's: token ids in, text out."""

    model_config = ConfigDict(strict=True)

    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_PROMPT_IDS)]
    model: str | None = None
