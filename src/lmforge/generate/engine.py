"""Autoregressive generation with a KV cache: read the prompt once, then feed one token per step.

Token level (`generate_tokens`):
* batch: prompts of different lengths are padded on the left, so all rows end at the same column and
  each new token is appended to every row at once. Positions count from each row's first real token
  and the attention mask hides the padding, so a row gets the same tokens as it would alone;
* prefill: one forward pass over the prompts fills the KV cache and gives the first next-token logits;
* decode: every step feeds only the newest token; attention reads the earlier ones from the cache;
* compile (optional): the decode step can run through torch.compile, which fuses the small
  per-layer operations into generated kernels and removes most of Python's per-operation cost;
  the first steps wait for the compiler (tens of seconds on a 2-core CPU), later ones are faster;
* slide: positions only go up to block_size - 1, so when the cache is full we keep the last
  block_size // 2 tokens and prefill them again from position 0. Shifting the cache instead would
  not do: its keys and values were computed at the old positions (learned or rotary alike).
  A batch slides all its rows together, when the longest fills the window.
Text level (`TextStream`, `TextEngine`): token ids -> text pieces, stop strings, end-of-text; `Engine` is
the text level on top of generate_tokens, the PyTorch backend.
Shapes: B = batch, S = tokens the model sees (the window), N = all tokens so far, V = vocab_size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager

import torch

from ..model.gpt import GPT
from ..model.kv_cache import KVCache, make_caches
from ..model.linear import drop_packed_weights
from ..tokenizer.base import Tokenizer
from ..utils.compiler import compiler_problem
from .params import Completion, SamplingParams
from .sampling import sample_next

Prompt = str | list[int]  # text, or token ids already encoded

# ---- token level ------------------------------------------------------------------------------------


def fit_prompt(ids: list[int], block_size: int) -> list[int]:
    """The prompt's last block_size tokens, with a warning when that drops some."""
    if len(ids) <= block_size:
        return ids
    warnings.warn(f"prompt of {len(ids)} tokens is longer than the context ({block_size} tokens); "
                  f"keeping its last {block_size}", stacklevel=2)
    return ids[-block_size:]


def kept_after_slide(block_size: int) -> int:
    """How many of the most recent tokens stay in view when the context window is full."""
    return max(1, block_size // 2)


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one batch padded on the left: token ids (B, S), and is_real (B, S), False on padding."""
    width = max(len(ids) for ids in prompts)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)  # padding id 0: masked, so any id would do
    is_real = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        is_real[row, width - len(ids):] = True
    return tokens.to(device), is_real.to(device)


@torch.no_grad()
def generate_tokens(model: GPT, prompts: list[list[int]], params: SamplingParams | Sequence[SamplingParams],
                    generators: list[torch.Generator | None] | None = None,
                    compile: bool = False) -> Iterator[list[int]]:
    """Yield the next token of every prompt, step after step, for max_new_tokens steps.

    `params` holds the sampling settings of every row, or one per row (requests batched together);
    the batch then runs for the largest max_new_tokens. It moves in lockstep, so rows never stop on
    their own: the caller ignores the rows it considers finished and leaves the loop when none is
    left. Every prompt must hold 1..block_size tokens (see fit_prompt). generators[i] draws row i's
    tokens (None: torch's global generator).
    compile=True runs the one-token decode steps through torch.compile (compiled_decode_step; ask
    compile_problem first whether this machine can compile).
    """
    if not all(prompts):
        raise ValueError("every prompt needs at least one token")
    row_params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(row_params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(row_params)} sampling settings")
    steps = max(p.max_new_tokens for p in row_params)
    if steps == 0:
        return
    generators = generators or [None] * len(prompts)
    decode = compiled_decode_step() if compile else _forward
    weights = next(model.parameters())
    tokens, is_real = left_pad(prompts, weights.device)  # (B, N): every token so far
    # The prompt and all new tokens but the last go through the model; room for more is never needed.
    # A compiled step gets the whole window: caches of one size for every generation, one compiled graph.
    needed = tokens.size(1) + steps - 1
    capacity = model.config.block_size if compile else min(model.config.block_size, needed)
    caches = make_caches(model.config, len(prompts), capacity, weights.dtype, weights.device)
    start = 0  # the window, what the model sees, is tokens[:, start:]
    with evaluation_mode(model):
        # Padding only ever sits at the start of the prompts: when there is none, nothing needs masking.
        padded = not bool(is_real.all())
        logits = _forward(model, tokens, is_real, caches, tokens.size(1), padded)  # prefill
        for step in range(steps):
            next_ids = _sample_rows(logits, row_params, generators, tokens, is_real)  # (B,)
            yield next_ids.tolist()
            if step == steps - 1:
                return
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)  # (B, N + 1)
            is_real = torch.cat([is_real, torch.ones_like(is_real[:, :1])], dim=1)
            n_new, step_fn = 1, decode
            if caches[0].is_full:  # slide: prefill the most recent tokens again, from position 0
                n_new, step_fn = kept_after_slide(model.config.block_size), _forward
                start = tokens.size(1) - n_new
                for cache in caches:
                    cache.clear()
            logits = step_fn(model, tokens[:, start:], is_real[:, start:], caches, n_new,
                             padded and not bool(is_real[:, start:].all()))


def _forward(model: GPT, window: torch.Tensor, is_real: torch.Tensor, caches: list[KVCache],
             n_new: int, padded: bool) -> torch.Tensor:
    """Feed the window's last n_new tokens (the earlier ones are in the caches); next-token logits (B, V)."""
    positions = attn_mask = None  # no padding: positions follow the cache, attention needs no padding mask
    if padded:
        # Padding gets position 0; a row's real tokens count 0, 1, 2, ... from its first one.
        positions = (is_real.cumsum(dim=-1) - 1).clamp(min=0)[:, -n_new:]  # (B, n_new)
        attn_mask = is_real
    hidden = model.hidden_states(window[:, -n_new:], positions, caches, attn_mask)  # (B, n_new, C)
    return model.lm_head(hidden[:, -1])  # only the last position's logits are needed


_compiled_step: Callable | None = None


def compiled_decode_step() -> Callable:
    """_forward through torch.compile, made once per process and shared by every generation.

    One compiled function serves every model and batch: torch.compile keeps a graph per case it
    meets (a model, a batch size, with or without padding) and re-checks cheap guards at each call.
    The cache length grows every step; after the second length torch.compile treats it as symbolic
    ("automatic dynamic shapes"), so a generation compiles twice, not once per step. Only one-token
    steps take this path: the prefill has other shapes each time and runs once per generation.
    """
    global _compiled_step
    if _compiled_step is None:
        torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eagerly instead
        _compiled_step = torch.compile(_forward)
    return _compiled_step


@contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[None]:
    """The module in eval mode (no dropout) for the duration, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def compile_problem(model: GPT) -> str | None:
    """Why generation with this model cannot be compiled here, or None when it can."""
    return compiler_problem(next(model.parameters()).device)


def _sample_rows(logits: torch.Tensor, row_params: list[SamplingParams], generators: list[torch.Generator | None],
                 tokens: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
    """One token per row (B,), with the row's own settings and generator, penalising the row's own tokens."""
    if all(p.greedy and p.repetition_penalty == 1.0 for p in row_params):
        return logits.argmax(dim=-1)  # plain greedy everywhere uses no generator or context: one batched argmax
    return torch.stack([sample_next(logits[row], params, generator,
                                    context=tokens[row][is_real[row]] if params.repetition_penalty != 1.0 else None)
                        for row, (params, generator) in enumerate(zip(row_params, generators))])


# ---- text level -------------------------------------------------------------------------------------


class TextStream:
    """Turns one sequence's new token ids into text pieces as they arrive.

    Two things wait until they are settled:
    * a character whose bytes are split over several tokens: until it is whole, decoding ends in
      U+FFFD (the replacement character), so a text ending in U+FFFD is held back;
    * an ending that could be the start of a stop string: released once it cannot be one any more,
      cut (with the stop string and all after it) if the stop string completes.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.text = ""  # everything handed out so far
        self.finish_reason: str | None = None  # "stop" or "length" once finished
        self.stop_token: int | None = None  # the end-of-text token, when the model ended the text with it
        # token_ids[:_decoded] are text already. We decode from _context, one step further back, because
        # some tokenizers decode a token differently at the start of a text (e.g. drop its leading space).
        self._context = 0
        self._decoded = 0
        self._held = ""  # decoded but not handed out: it might be the start of a stop string

    def push(self, token_id: int) -> str:
        """Take one generated token; return the text now safe to show (often "")."""
        self.token_ids.append(token_id)
        return self._release(self._decode_new(final=False), final=False)

    def take(self, token_id: int, eot_id: int | None, max_new_tokens: int) -> str:
        """Take the model's next token: end-of-text (eot_id; None: ignore it) ends the text ("stop"), as does
        the token budget ("length"); return the text now safe to show."""
        if token_id == eot_id:
            self.stop_token = token_id  # ended by the model, not by a stop string or the budget
            return self.finish("stop")
        piece = self.push(token_id)
        if self.finish_reason is None and len(self.token_ids) >= max_new_tokens:
            piece += self.finish("length")  # this request's own token budget is spent
        return piece

    def finish(self, reason: str) -> str:
        """End the sequence ("stop" at end-of-text, "length" out of tokens); return the text still held."""
        piece = self._release(self._decode_new(final=True), final=True)
        self.finish_reason = self.finish_reason or reason
        return piece

    def cancel(self) -> None:
        """Stop this sequence from another thread (its client went away): a batch skips it from now on."""
        self.finish_reason = self.finish_reason or "cancelled"  # one assignment: safe while a batch runs

    def _decode_new(self, final: bool) -> str:
        """Text of the tokens not decoded yet; "" while they end inside a character, unless final."""
        known = self.tokenizer.decode(self.token_ids[self._context:self._decoded])
        text = self.tokenizer.decode(self.token_ids[self._context:])
        if text.endswith("\ufffd") and not final:
            return ""
        self._context, self._decoded = self._decoded, len(self.token_ids)
        return text[len(known):]

    def _release(self, text: str, final: bool) -> str:
        """Add decoded text; return the part of the held text that can no longer become a stop string."""
        self._held += text
        cut = _first_stop(self._held, self.stop)
        if cut is not None:
            self.finish_reason = "stop"
            piece, self._held = self._held[:cut], ""
        else:
            keep = len(self._held) - (0 if final else _partial_stop_length(self._held, self.stop))
            piece, self._held = self._held[:keep], self._held[keep:]
        self.text += piece
        return piece


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    return min(found) if found else None


def _partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest ending of text that is the beginning of a stop string (0 if none)."""
    return max((n for s in stops for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])), default=0)


class TextEngine:
    """Text in, text out: what every backend shares (prompts, batches of requests, streaming, stop strings).

    A backend supplies the token level: `token_steps` (yield every row's next token, step after step,
    as generate_tokens does), `context_size` (the most tokens the model sees at once) and
    `sampling_device` (where the per-request random generators live). Engine runs lmforge's PyTorch
    model; generate.llamacpp_backend.LlamaCppEngine runs a GGUF file in llama.cpp.
    """

    tokenizer: Tokenizer
    max_batch_size: int
    context_size: int
    batches_continuously = False  # whether continuous_batcher works (the server's continuous scheduler)
    sampling_device: torch.device = torch.device("cpu")

    def token_steps(self, prompts: list[list[int]], params: list[SamplingParams],
                    generators: list[torch.Generator | None]) -> Iterator[list[int]]:
        raise NotImplementedError

    def stream(self, prompt: Prompt, params: SamplingParams, finished: list[TextStream] | None = None) -> Iterator[str]:
        """Pieces of generated text as they are produced (never empty, never half a character).

        A prompt is text, or token ids already encoded (e.g. by generate.chat.chat_prompt_ids).

        Pass a list as `finished` to learn how it ended: the TextStream (finish_reason, token_ids) is
        appended to it when the last piece has been handed out.
        """
        params.validate()
        stream = TextStream(self.tokenizer, params.stop)
        for _, piece in self.stream_batch([prompt], [params], [stream]):
            if piece:
                yield piece
        if finished is not None:
            finished.append(stream)

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order."""
        params.validate()
        completions = []
        for first in range(0, len(prompts), self.max_batch_size):
            batch = [self.prompt_ids(prompt) for prompt in prompts[first:first + self.max_batch_size]]
            streams = [TextStream(self.tokenizer, params.stop) for _ in batch]
            for _ in self.stream_batch(batch, [params] * len(batch), streams):
                pass  # the streams collect the text
            completions += [Completion(text=s.text, token_ids=s.token_ids, prompt_tokens=len(ids),
                                       finish_reason=s.finish_reason) for s, ids in zip(streams, batch)]
        return completions

    def stream_batch(self, prompts: list[Prompt], params: list[SamplingParams],
                     streams: list[TextStream]) -> Iterator[tuple[int, str]]:
        """Several requests as one batch, each with its own settings; yield (index, text piece) as text appears.

        streams[i] (a TextStream with params[i].stop) collects request i's text and how it ended. The
        event in which a request finishes may carry an empty piece; after it, its stream's
        finish_reason is set. A stream finished from outside while the batch runs (its client went
        away, TextStream.cancel) is left alone from then on, and the batch ends as soon as every
        stream has finished. At most max_batch_size prompts.
        """
        if len(prompts) > self.max_batch_size:
            raise ValueError(f"{len(prompts)} prompts in one batch; this engine takes at most {self.max_batch_size}")
        ids = [self.prompt_ids(prompt) for prompt in prompts]
        generators = [self.generator_for(p.seed) for p in params]
        for row, (stream, p) in enumerate(zip(streams, params)):
            if p.max_new_tokens == 0 and stream.finish_reason is None:
                yield row, stream.finish("length")
        if all(stream.finish_reason for stream in streams):
            return
        with closing(self.token_steps(ids, params, generators)) as steps:
            for tokens in steps:
                for row, (stream, token, p) in enumerate(zip(streams, tokens, params)):
                    if stream.finish_reason is not None:
                        continue
                    piece = stream.take(token, None if p.ignore_eos else self.tokenizer.eot_id, p.max_new_tokens)
                    if piece or stream.finish_reason is not None:
                        yield row, piece
                if all(stream.finish_reason for stream in streams):
                    return

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The token ids generation starts from: the prompt's, cut to the context (with a warning)."""
        return fit_prompt(self.encode(prompt), self.context_size)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt; an empty one starts a new document (the end-of-text token)."""
        ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt)
        return list(ids) or [self.tokenizer.eot_id]

    @property
    def scorer(self) -> torch.nn.Module:
        """Token ids (B, T) -> logits (B, T, V): what scores prompts (log-probabilities, benchmarks)."""
        raise NotImplementedError

    @torch.no_grad()
    def token_logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities (len(ids) - 1, V): row t is the distribution of the token after ids[:t + 1].

        Up to context_size tokens are read in one pass. Past it, each further half context is scored
        in a window of the context_size tokens that end with it, as generation slides: every token is
        predicted from at least half a context before it.
        """
        context, half = self.context_size, max(1, self.context_size // 2)
        rows, done = [], 0  # done: how many tokens have their prediction row (rows predict ids[1:])
        with evaluation_mode(self.scorer):
            while done < len(ids) - 1:
                end = min(len(ids) - 1, context if done == 0 else done + half)  # rows done..end-1: this window
                start = max(0, end - context)
                logits = self.scorer(torch.tensor([ids[start:end]], device=self.sampling_device))[0]
                rows.append(torch.log_softmax(logits[done - start:].float(), dim=-1).cpu())
                done = end
        return torch.cat(rows) if rows else torch.empty(0, self.tokenizer.vocab_size)

    def continuous_batcher(self, kv_cache_mb: float, prefill_chunk: int):
        """A generate.continuous.ContinuousBatcher over this engine's model (the server's continuous scheduler)."""
        raise ValueError(f"continuous batching needs lmforge's PyTorch engine, not {type(self).__name__}: "
                         "use --scheduler static")

    def generator_for(self, seed: int | None) -> torch.Generator | None:
        """A generator per request: the same seed gives the same text, whatever else is in the batch."""
        if seed is None:
            return None
        return torch.Generator(device=self.sampling_device).manual_seed(seed)


class Engine(TextEngine):
    """The PyTorch engine: lmforge's own model, batched (generate_tokens).

    generate() runs up to max_batch_size prompts as one batch; each batch keeps a KV cache of
    n_layer x 2 x batch x n_kv_head x block_size x head_dim numbers. compile=True compiles the decode
    step where this machine can (else it warns and runs eagerly).
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch_size: int = 16, compile: bool = False):
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.context_size = model.config.block_size
        problem = compile_problem(model) if compile else None
        if problem is not None:
            warnings.warn(f"generating without compiling: {problem}", stacklevel=2)
        self.compile = compile and problem is None

    @property
    def sampling_device(self) -> torch.device:  # the model's, wherever it is now
        return next(self.model.parameters()).device

    @property
    def scorer(self) -> torch.nn.Module:
        return self.model

    def token_steps(self, prompts: list[list[int]], params: list[SamplingParams],
                    generators: list[torch.Generator | None]) -> Iterator[list[int]]:
        return generate_tokens(self.model, prompts, params, generators, self.compile)

    batches_continuously = True

    def continuous_batcher(self, kv_cache_mb: float, prefill_chunk: int):
        from .continuous import ContinuousBatcher, slots_for_budget  # it builds on this module

        slots = slots_for_budget(self.model, kv_cache_mb, self.max_batch_size)
        return ContinuousBatcher(self.model, slots, prefill_chunk)


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 200,
                  temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> str:
    """Generate a continuation of `prompt` (text in, text out); stops at end-of-text."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    try:
        return Engine(model, tokenizer).generate([prompt], params)[0].text
    finally:
        # One-off generations (e.g. samples during training, where the weights change before the next one)
        # would leave packed weight copies (model/linear.py) holding memory for nothing.
        drop_packed_weights(model)
