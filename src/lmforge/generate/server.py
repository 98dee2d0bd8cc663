"""An HTTP server that speaks the OpenAI API, so existing clients (the `openai` package, curl,
chat front-ends) can use an lmforge model.

    GET  /                      a chat page for the browser (generate/web_chat.py)
    GET  /health                whether the generation worker can serve, with its queue (503 when not)
    GET  /v1/models             the one model served
    POST /v1/completions        continue a prompt (or a list of prompts)
    POST /v1/chat/completions   answer a conversation, rendered with the chat template

With "stream": true the text arrives as server-sent events: one `data: {json}` line per piece,
then `data: [DONE]`. Invalid requests get a 4xx answer with an OpenAI-style error body.

A request goes through the guards (generate/guards.py: Host header, API key, requests in flight,
body size), then its fields are checked (generate/request_body.py), its prompt is tokenized once on
a thread pool (never on the event loop) and fitted to the context, and its samples are queued for
the worker (generate/worker.py), the one thread that runs the model, serving waiting requests
together as a batch. The event loop only waits for results, so it keeps answering other requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..data.templates import jinja_chat_template
from .chat import ChatTemplate, chat_prompt_ids
from .continuous_worker import ContinuousWorker
from .engine import TextEngine
from .guards import ApiKeyCheck, BodySizeLimit, ConcurrencyLimit, HostCheck, InFlight, error_response
from .limits import KV_CACHE_MB, PREFILL_CHUNK, ServerLimits
from .logprobs import chat_logprobs, completion_logprobs
from .params import SamplingParams
from .request_body import (DEFAULT_MAX_TOKENS, MAX_CHOICES, ChatRequest, CompletionRequest, DetokenizeRequest,
                           SamplingFields, TokenizeRequest)
from .server_metrics import ServerMetrics
from .web_chat import PAGE_PATHS, add_chat_page
from .worker import BATCH_WINDOW_S, GenerationWorker, QueueFull, Request as WorkerRequest, WorkerStopped

log = logging.getLogger("lmforge.serve")
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
COUNTED_PATHS = (*GENERATION_PATHS, "/v1/models", "/tokenize", "/detokenize")  # lmforge_requests_total


class ApiError(Exception):
    """An error answered as {"error": {...}}, the shape OpenAI clients expect."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.kind, self.headers)


def internal_error(exc: Exception) -> ApiError:
    """What a client learns of an unexpected error: its kind, not its details (they may hold internals)."""
    return ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error")


# ---- turning a request into engine calls ----

@dataclass
class Job:
    """What one request asks the engine for: every prompt (token ids), sampled n times."""

    prompts: list[list[int]]
    params: SamplingParams
    n: int
    notes: list[str]  # what the client should know (prompts cut by truncate_prompt_tokens)
    logprobs_top: int | None = None  # log-probabilities wanted, with this many likeliest tokens per position
    echo: bool = False  # the prompt's text (and log-probabilities) come back before the completion's

    def sample_params(self, j: int) -> SamplingParams:
        """Sample j of each prompt uses seed + j, so that the n choices differ but stay reproducible."""
        return self.params if self.params.seed is None else replace(self.params, seed=self.params.seed + j)

    def rows(self) -> list[tuple[list[int], SamplingParams]]:
        """(prompt ids, params) of every choice, in OpenAI's order: all n samples of prompt 0 first."""
        return [(ids, self.sample_params(j)) for ids in self.prompts for j in range(self.n)]


def check_choices(prompts: int, n: int) -> None:
    if prompts * n > MAX_CHOICES:
        raise ApiError(400, f"prompts x n must be at most {MAX_CHOICES}, got {prompts * n}", param="n")


@dataclass(frozen=True)
class Context:
    """How many tokens a request may use: the model's window, and prompt + max_tokens together."""

    block_size: int     # the longest prompt the model can read at once
    max_model_len: int  # prompt + max_tokens at most (more than block_size: the engine slides)
    max_tokens: int     # the most a request may ask for

    def fit(self, prompts: list[list[int]], req: SamplingFields, max_tokens: int | None,
            prompt_param: str) -> tuple[list[list[int]], int, list[str]]:
        """The prompts as generated from (cut when the request asks), its max_tokens, notes for the client.

        A prompt that does not fit is a 400, as in OpenAI's API and vLLM, unless the request set
        truncate_prompt_tokens; max_tokens, when not given, is what fits (at most DEFAULT_MAX_TOKENS)."""
        fitted, notes = [], []
        for i, ids in enumerate(prompts):
            if req.truncate_prompt_tokens is not None and len(ids) > (keep := min(req.truncate_prompt_tokens,
                                                                                  self.block_size)):
                notes.append(f"prompt {i} is {len(ids)} tokens: truncate_prompt_tokens kept its last {keep}")
                ids = ids[-keep:]
            if len(ids) > self.block_size:
                raise ApiError(400, f"prompt {i} is {len(ids)} tokens, longer than the model's context of "
                                    f"{self.block_size}: shorten it, or set truncate_prompt_tokens", param=prompt_param)
            fitted.append(ids)
        return fitted, self.completion_tokens(max(map(len, fitted)), max_tokens, prompt_param), notes

    def completion_tokens(self, prompt_tokens: int, asked: int | None, prompt_param: str) -> int:
        """max_tokens for a (longest) prompt: the one asked for if it fits, else a 400; if none, what fits."""
        room = self.max_model_len - prompt_tokens
        max_tokens = min(DEFAULT_MAX_TOKENS, self.max_tokens, room) if asked is None else asked
        if max_tokens > self.max_tokens:
            raise ApiError(400, f"max_tokens must be between 1 and {self.max_tokens}, got {max_tokens}",
                           param="max_tokens")
        if not 1 <= max_tokens <= room:
            asked_total = prompt_tokens + max(max_tokens, 1)
            raise ApiError(400, f"this model's maximum context length is {self.max_model_len} tokens, but "
                                f"{asked_total} were asked for ({prompt_tokens} in the prompt, {max(max_tokens, 1)} "
                                "for the completion): shorten the prompt, lower max_tokens, or set "
                                "truncate_prompt_tokens", param=prompt_param if room < 1 else "max_tokens")
        return max_tokens


def prompt_list(prompt) -> list[str | list[int]]:
    """The prompts of a completions request: one text or one list of token ids is one prompt."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt)


def check_token_ids(prompts: list, vocab_size: int, param: str = "prompt") -> None:
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, list) and (bad := next((t for t in prompt if t >= vocab_size), None)) is not None:
            raise ApiError(400, f"prompt {i}: {bad} is not a token id of this model (0 to {vocab_size - 1})",
                           param=param)


def check_logit_bias(req: SamplingFields, vocab_size: int) -> None:
    """logit_bias keys must be token ids of this model's vocabulary (their form is checked with the body)."""
    for key in req.logit_bias or {}:
        if len(key) > 9 or int(key) >= vocab_size:  # the length first: int() of a huge digit string is slow
            raise ApiError(400, f"logit_bias: {key[:20]} is not a token id of this model (0 to {vocab_size - 1})",
                           param="logit_bias")


def sampling_params(req: SamplingFields, max_tokens: int, extra_stop: tuple[str, ...] = ()) -> SamplingParams:
    """The engine's SamplingParams for a request whose fields are checked already."""
    params = SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                            top_k=req.top_k, min_p=req.min_p, repetition_penalty=req.repetition_penalty,
                            seed=req.seed, stop=[*req.stop_strings(), *extra_stop], ignore_eos=req.ignore_eos)
    try:
        params.validate()  # the engine's own checks: the request's bounds are narrower, so this never fails
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return params


def submit(worker: GenerationWorker, job: Job) -> list[WorkerRequest]:
    """Queue the job's samples now, so that a full queue is a 429 before any answer has started."""
    try:
        return worker.submit(job.rows(), job.logprobs_top, job.echo)
    except QueueFull as exc:
        raise ApiError(429, f"the server is busy: {exc}; retry later", kind="server_busy", code="too_many_requests",
                       headers={"Retry-After": str(worker.retry_after_s())}) from exc
    except WorkerStopped as exc:
        raise ApiError(503, f"the server cannot generate now: {exc}", kind="server_error") from exc


# ---- the two response shapes ----

class CompletionsApi:
    """/v1/completions: a choice carries "text", and so does every streamed chunk."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    chunk = choice

    @staticmethod
    def logprobs(tokenizer, request: WorkerRequest, job: Job) -> dict:
        # text_offset counts from the start of the prompt's text, as OpenAI's does
        offset = 0 if job.echo else len(tokenizer.decode(request.prompt_ids))
        return completion_logprobs(tokenizer, request.logprobs, offset)

    @staticmethod
    def opening_chunk(index: int) -> dict | None:
        return None


class ChatApi:
    """/v1/chat/completions: a choice carries a "message"; streamed chunks carry a "delta" of it."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"
    id_prefix = "chatcmpl"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish_reason}

    @staticmethod
    def logprobs(tokenizer, request: WorkerRequest, job: Job) -> dict:
        return chat_logprobs(tokenizer, request.logprobs)

    @staticmethod
    def chunk(index: int, text: str, finish_reason: str | None) -> dict:
        delta = {"content": text} if text else {}  # the closing chunk has an empty delta
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def opening_chunk(index: int) -> dict | None:
        """Like OpenAI, say the role once, before any content."""
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}


Api = type[CompletionsApi] | type[ChatApi]


def response_header(api: Api, model_name: str, chunk: bool) -> dict:
    return {"id": f"{api.id_prefix}-{uuid.uuid4().hex}", "object": api.chunk_object if chunk else api.object,
            "created": int(time.time()), "model": model_name}


async def complete(requests: list[WorkerRequest], job: Job, api: Api, model_name: str, tokenizer) -> dict:
    """The whole answer at once, with token usage. All its samples went to the worker together (one batch)."""
    async def drain(request: WorkerRequest) -> None:
        async for _ in request.pieces():
            pass

    tasks = [asyncio.ensure_future(drain(request)) for request in requests]
    try:
        await asyncio.gather(*tasks)
    finally:  # one sample failed: the others stop too (nobody will read them), their rows and their tasks
        for task, request in zip(tasks, requests):
            task.cancel()
            request.cancel()
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, request in enumerate(requests):
        completion = request.completion()
        text = (tokenizer.decode(request.prompt_ids) if job.echo else "") + completion.text
        logprobs = api.logprobs(tokenizer, request, job) if job.logprobs_top is not None else None
        choices.append(api.choice(index, text, completion.finish_reason, logprobs))
        completion_tokens += len(completion.token_ids)
        prompt_tokens += completion.prompt_tokens if index % job.n == 0 else 0  # each prompt once, as in OpenAI
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return {**response_header(api, model_name, chunk=False), "choices": choices, "usage": usage}


async def stream_events(requests: list[WorkerRequest], api: Api, model_name: str) -> AsyncIterator[str]:
    """The answer as server-sent events: `data: {chunk}` per piece of text, then `data: [DONE]`.

    All the samples of a request (its prompts x n) went to the worker at once, so they share one batch;
    their chunks interleave as the pieces come, each marked with its choice's index, as OpenAI's do.
    An error after the answer has started (status 200 is sent already) comes as an event of its own,
    `data: {"error": {...}}`, before `data: [DONE]`, as vLLM does: the client learns what happened
    instead of seeing the connection drop.
    """
    header = response_header(api, model_name, chunk=True)  # every chunk of one response shares id and created

    def event(choice: dict) -> str:
        return f"data: {json.dumps({**header, 'choices': [choice]})}\n\n"

    for index in range(len(requests)):
        if (opening := api.opening_chunk(index)) is not None:
            yield event(opening)
    chunks: asyncio.Queue = asyncio.Queue()  # (index, text piece, finish_reason or None) or an exception

    async def relay(index: int, request: WorkerRequest) -> None:
        try:
            async for piece in request.pieces():
                chunks.put_nowait((index, piece, None))
            chunks.put_nowait((index, "", request.stream.finish_reason))
        except Exception as exc:  # raised to the response below, not lost in the task
            chunks.put_nowait(exc)

    tasks = [asyncio.create_task(relay(index, request)) for index, request in enumerate(requests)]
    try:
        open_choices = len(requests)
        while open_choices:
            item = await chunks.get()
            if isinstance(item, Exception):
                raise item
            index, piece, finish_reason = item
            yield event(api.chunk(index, piece, finish_reason))
            open_choices -= finish_reason is not None
    except Exception as exc:
        error = exc if isinstance(exc, ApiError) else internal_error(exc)
        if not isinstance(exc, ApiError):
            log.error("a streamed answer failed", exc_info=exc)
        yield f"data: {json.dumps({'error': error.body()})}\n\n"
    finally:
        for task in tasks:  # the client went away, or a sample failed: the samples' rows stop
            task.cancel()
        for request in requests:
            request.cancel()
    yield "data: [DONE]\n\n"


async def answer(worker: GenerationWorker, job: Job, api: Api, model_name: str, stream: bool, tokenizer):
    """The response; a prompt cut by truncate_prompt_tokens is reported in the `x-lmforge-warning` header and,
    in a whole (non-streamed) answer, in a `warnings` list (OpenAI clients ignore fields they do not know)."""
    if stream and (job.logprobs_top is not None or job.echo):
        raise ApiError(400, "logprobs and echo are not available with stream yet; ask without stream",
                       param="stream")
    requests = submit(worker, job)
    headers = {"x-lmforge-warning": " | ".join(job.notes)} if job.notes else None
    if stream:
        return StreamingResponse(stream_events(requests, api, model_name), media_type="text/event-stream",
                                 headers=headers)
    body = await complete(requests, job, api, model_name, tokenizer)
    return JSONResponse({**body, "warnings": job.notes}, headers=headers) if job.notes else body


# ---- errors ----

def _validation_message(exc: RequestValidationError) -> ApiError:
    """The most telling of pydantic's errors: for a field that may be a string or a list (stop, prompt),
    pydantic reports a mismatch for each; the one that is not a type mismatch says what is wrong."""
    errors = exc.errors()
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    if first["type"] == "json_invalid":
        return ApiError(400, "the request body is not valid JSON")
    # Keep field names and list indexes; drop pydantic's names for union members ("list[...]", "function-after[...]").
    where = [str(part) for part in first["loc"]
             if part != "body" and (isinstance(part, int) or str(part).replace("_", "").isalnum())]
    return ApiError(400, f"{'.'.join(where) or 'request body'}: {first['msg']}", param=where[0] if where else None)


def add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or FastAPI's, answers with OpenAI's error body."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_message(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: still a JSON answer
        log.error("request failed", exc_info=exc)
        return internal_error(exc).response()


# ---- the app ----

def create_app(engine: TextEngine, model_name: str, template: ChatTemplate, limits: ServerLimits = ServerLimits(),
               batch_window_s: float = BATCH_WINDOW_S, api_key: str | None = None,
               allowed_hosts: list[str] | None = None, max_tokens_limit: int | None = None,
               scheduler: str | None = None, kv_cache_mb: float = KV_CACHE_MB,
               prefill_chunk: int = PREFILL_CHUNK) -> FastAPI:
    """An OpenAI-compatible app serving `engine` under the name `model_name`.

    api_key: ask every request but /health and the chat page's files for it (Authorization: Bearer).
    allowed_hosts: answer only requests whose Host header names one of these (None: any).
    max_tokens_limit: limits.max_tokens.
    scheduler: "continuous" (requests join the running batch between steps; the default where the
    engine can) or "static" (a batch runs to its end; batch_window_s applies). kv_cache_mb and
    prefill_chunk size the continuous scheduler (generate/continuous.py).
    """
    if max_tokens_limit is not None:
        limits = replace(limits, max_tokens=max_tokens_limit)
    metrics = ServerMetrics()
    worker = make_worker(engine, scheduler, limits, metrics, batch_window_s, kv_cache_mb, prefill_chunk)
    block_size = engine.context_size
    context = Context(block_size, limits.max_model_len or block_size, limits.max_tokens)
    in_flight = InFlight(limits.max_concurrent_requests)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="lmforge", lifespan=lifespan)
    app.state.worker, app.state.limits, app.state.in_flight = worker, limits, in_flight
    add_error_handlers(app)
    add_chat_page(app)
    # Added innermost first: a request meets the Host check, then the key, then the slot count, then the body limit.
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(ConcurrencyLimit, in_flight=in_flight, paths=GENERATION_PATHS,
                       retry_after_s=worker.retry_after_s)
    if api_key:
        # The chat page's files load without the key (the page is where it is typed); /v1/* needs it.
        app.add_middleware(ApiKeyCheck, api_key=api_key, open_paths=("/health", *PAGE_PATHS))
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=allowed_hosts)

    @app.middleware("http")  # added last, so outermost: it sees the guards' refusals (401, 413, 429) too
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        if request.url.path in COUNTED_PATHS:
            metrics.count_request(request.url.path, response.status_code)
        return response

    def check(req: SamplingFields, prompts: int) -> None:
        """What can be checked before tokenizing."""
        if req.model != model_name:
            raise ApiError(404, f"The model `{req.model}` does not exist (this server has `{model_name}`)",
                           param="model", code="model_not_found")
        check_choices(prompts, req.n)
        check_logit_bias(req, engine.tokenizer.vocab_size)

    def job(req: SamplingFields, prompts: list[list[int]], max_tokens: int | None, prompt_param: str,
            extra_stop: tuple[str, ...] = ()) -> Job:
        fitted, max_tokens, notes = context.fit(prompts, req, max_tokens, prompt_param)
        return Job(fitted, sampling_params(req, max_tokens, extra_stop), req.n, notes)

    @app.get("/health")
    async def health():
        problem = worker.problem()
        state = {"status": "ok" if problem is None else "unhealthy", "queued": worker.queued(),
                 "running": worker.running, "requests": in_flight.count}
        return JSONResponse({**state, "problem": problem}, status_code=503) if problem else state

    @app.get("/metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        gauges = {"queue_length": worker.queued(), "running_rows": worker.running,
                  "requests_in_flight": in_flight.count, "kv_slots_in_use": worker.kv_slots_in_use(),
                  "kv_slots": worker.kv_slots}
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "lmforge", "max_model_len": context.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        given = prompt_list(req.prompt)
        check(req, len(given))
        check_token_ids(given, engine.tokenizer.vocab_size)
        # Tokenized once, on a thread: a long prompt must not hold up the event loop (and /health with it).
        prompts = await asyncio.to_thread(lambda: [engine.encode(prompt) for prompt in given])
        work = job(req, prompts, req.max_tokens, "prompt")
        work.logprobs_top, work.echo = req.logprobs, req.echo
        return await answer(worker, work, CompletionsApi, model_name, req.stream, engine.tokenizer)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        check(req, 1)
        messages = [m.model_dump() for m in req.messages]
        prompt = await asyncio.to_thread(lambda: engine.encode(chat_prompt_ids(messages, template, engine.tokenizer)))
        work = job(req, [prompt], req.requested_tokens(), "messages", template.stop)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        work.logprobs_top = (req.top_logprobs or 0) if req.logprobs else None
        return await answer(worker, work, ChatApi, model_name, req.stream, engine.tokenizer)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        """What a client needs to tokenize as the server does (vLLM's endpoint; lm-evaluation-harness
        uses it, with /tokenize and /detokenize, instead of a tokenizer of its own)."""
        eot = engine.tokenizer.decode([engine.tokenizer.eot_id])
        return {"tokenizer_class": type(engine.tokenizer).__name__, "eos_token": eot, "bos_token": None,
                "pad_token": None, "max_model_len": context.max_model_len,
                "chat_template": jinja_chat_template(template, eot_token=eot)}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        tokens = await asyncio.to_thread(engine.tokenizer.encode, req.prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": context.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        check_token_ids([req.tokens], engine.tokenizer.vocab_size, param="tokens")
        return {"prompt": engine.tokenizer.decode(req.tokens)}

    return app


def make_worker(engine: TextEngine, scheduler: str | None, limits: ServerLimits, metrics: ServerMetrics,
                batch_window_s: float, kv_cache_mb: float, prefill_chunk: int) -> GenerationWorker:
    """The generation thread for `scheduler` (None: continuous where the engine can, else static)."""
    scheduler = scheduler or ("continuous" if engine.batches_continuously else "static")
    if scheduler == "continuous":
        return ContinuousWorker(engine, limits.max_queued, metrics, kv_cache_mb, prefill_chunk)
    if scheduler == "static":
        return GenerationWorker(engine, batch_window_s, limits.max_queued, metrics)
    raise ValueError(f"scheduler must be 'continuous' or 'static', got {scheduler!r}")


@contextmanager
def running_in_background(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn from a daemon thread on a free local port (tests, benchmarks); yields its URL."""
    import uvicorn  # the `serve` extra, like FastAPI

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free one
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
