"""An HTTP server that speaks the OpenAI API, so existing clients (the `openai` package, curl,
chat front-ends) can use an lmforge model.

    GET  /health                liveness check
    GET  /v1/models             the one model served
    POST /v1/completions        continue a prompt (or a list of prompts)
    POST /v1/chat/completions   answer a conversation, rendered with the chat template

With "stream": true the text arrives as server-sent events: one `data: {json}` line per piece,
then `data: [DONE]`. Invalid requests get a 4xx answer with an OpenAI-style error body.

The model is not thread-safe, so every generation runs on one worker thread (`GenerationWorker`);
requests that arrive while it is busy are served together as the next batch. The event loop only
waits for results, so it keeps answering other requests.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from .chat import ChatTemplate, chat_prompt_ids
from .engine import Engine, Prompt, TextStream
from .params import Completion, SamplingParams

DEFAULT_MAX_TOKENS = 256      # when a request does not say
MAX_TOKENS_LIMIT = 1024       # the most a request may ask for (create_app can change it)
MAX_CHOICES = 16              # prompts x n in one request
# How long the worker, once a request arrives, waits for others to join its batch: clients that start
# together do not arrive together (8 client threads of bench/serve_batching.py: spread over 30 ms), and
# without a wait the first would run alone while the rest wait for its whole generation. It adds this much
# to the first token of a lone request: about two decode steps of GPT-2 124M on a 2-core CPU.
BATCH_WINDOW_S = 0.05


class ApiError(Exception):
    """An error answered as {"error": {...}}, the shape OpenAI clients expect."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# ---- request bodies: the OpenAI fields lmforge supports; others (user, logprobs, ...) are ignored ----

class SamplingFields(BaseModel):
    model: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    # Not in OpenAI's API; accepted as extra body fields, as vLLM and llama.cpp do.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)]  # "" starts a new document


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens in the chat API


# ---- running the model ----

class GenerationWorker:
    """Runs the model on one background thread, serving waiting requests together as one batch.

    The model is not thread-safe, so only this thread touches it. When it is free it takes every
    request that has arrived meanwhile (up to the engine's max_batch_size) and runs them as one
    batch, each with its own prompt, sampling settings, seed and token budget. Decoding on a CPU is
    bound by reading the weights, and a batch reads them once for all its rows (GPT-2 124M fp32 on
    2 cores: 42 tokens/s alone, 201 in a batch of 8), so concurrent clients share that read instead
    of queueing behind each other. A batch starts BATCH_WINDOW_S after its first request arrived and
    runs until its last request is done; requests that come in meanwhile form the next one.
    """

    def __init__(self, engine: Engine, batch_window_s: float = BATCH_WINDOW_S):
        self.engine = engine
        self.batch_window_s = batch_window_s
        self.batch_sizes: list[int] = []  # requests served by each batch so far, oldest first
        self._pending: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="lmforge-generate", daemon=True)
        self._thread.start()

    def queued(self) -> int:
        """Requests waiting for the next batch."""
        return self._pending.qsize()

    def close(self) -> None:
        """Stop the thread once the batch it is running (if any) is done."""
        self._pending.put(None)

    async def stream(self, prompt: Prompt, params: SamplingParams, finished: list | None = None) -> AsyncIterator[str]:
        """Pieces of text as the worker produces them, handed over through an asyncio queue.

        `finished` receives the engine's TextStream at the end (finish_reason, token_ids)."""
        request = self._submit(prompt, params)
        async for piece in request.pieces():
            yield piece
        if finished is not None:
            finished.append(request.stream)

    async def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """The whole completion of one prompt."""
        request = self._submit(prompt, params)
        async for _ in request.pieces():
            pass
        stream = request.stream
        return Completion(text=stream.text, token_ids=stream.token_ids, prompt_tokens=request.prompt_tokens,
                          finish_reason=stream.finish_reason)

    def _submit(self, prompt: Prompt, params: SamplingParams) -> _Request:
        request = _Request(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
        self._pending.put(request)
        return request

    def _serve(self) -> None:
        while (first := self._pending.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.engine.max_batch_size:
                try:
                    request = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if request is None:  # closing: finish this batch first
                    self._pending.put(None)
                    break
                batch.append(request)
            batch = [request for request in batch if not request.cancelled]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        engine = self.engine
        self.batch_sizes.append(len(batch))
        try:
            prompts = [engine.prompt_ids(request.prompt) for request in batch]  # encoded once, here
            for request, ids in zip(batch, prompts):
                request.stream = TextStream(engine.tokenizer, request.params.stop)
                request.prompt_tokens = len(ids)
            streams = [request.stream for request in batch]
            for row, piece in engine.stream_batch(prompts, [r.params for r in batch], streams):
                request = batch[row]
                if piece:
                    request.send(piece)
                if request.stream.finish_reason is not None:  # answered now, not when the whole batch is
                    request.send(_DONE)
        except Exception as exc:  # hand it to the requests that asked, instead of losing it in the thread
            for request in batch:
                request.send(exc)


_DONE = object()


@dataclass
class _Request:
    """One prompt to complete, and the way back to the coroutine waiting for it."""

    prompt: Prompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # text pieces, then _DONE (or an exception)
    stream: TextStream | None = None  # set when its batch starts; finish_reason and token_ids at the end
    prompt_tokens: int = 0  # tokens of the prompt used (after cutting it to the context)
    cancelled: bool = False

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it comes; returns when the request is done, raises what went wrong in the worker."""
        try:
            while (item := await self.queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.cancel()  # done, or the client went away: the batch stops generating for it

    def send(self, item) -> None:
        if not self.cancelled:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True
        if self.stream is not None:
            self.stream.cancel()


def prompt_warnings(engine: Engine, prompts: list[Prompt]) -> list[str]:
    """What the client should know about its prompts: those longer than the context lose their oldest tokens."""
    block = engine.model.config.block_size
    notes = []
    for i, prompt in enumerate(prompts):
        if dropped := engine.prompt_overflow(prompt):
            notes.append(f"prompt {i} is {dropped + block} tokens, longer than the model's context of {block}: "
                         f"its first {dropped} tokens were dropped")
    return notes


# ---- turning a request into engine calls ----

@dataclass
class Job:
    """What one request asks the engine for: every prompt, sampled n times."""

    prompts: list[Prompt]  # text, or token ids (chat prompts, see generate.chat.chat_prompt_ids)
    params: SamplingParams
    n: int

    def __post_init__(self) -> None:
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise ApiError(400, f"prompts x n must be at most {MAX_CHOICES}, got {len(self.prompts) * self.n}",
                           param="n")

    def sample_params(self, j: int) -> SamplingParams:
        """Sample j of each prompt uses seed + j, so that the n choices differ but stay reproducible."""
        return self.params if self.params.seed is None else replace(self.params, seed=self.params.seed + j)

    def samples(self) -> Iterator[tuple[int, str, SamplingParams]]:
        """(choice index, prompt, params) in OpenAI's order: all n samples of prompt 0 first."""
        for i, prompt in enumerate(self.prompts):
            for j in range(self.n):
                yield i * self.n + j, prompt, self.sample_params(j)


def sampling_params(req: SamplingFields, max_tokens: int, limit: int,
                    extra_stop: tuple[str, ...] = ()) -> SamplingParams:
    """The engine's SamplingParams for a request (400 when a value is out of range)."""
    if not 1 <= max_tokens <= limit:
        raise ApiError(400, f"max_tokens must be between 1 and {limit}, got {max_tokens}", param="max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                            top_k=req.top_k, min_p=req.min_p, repetition_penalty=req.repetition_penalty,
                            seed=req.seed, stop=[*stop, *extra_stop])
    try:
        params.validate()  # the ranges of the non-OpenAI fields (top_k, min_p, repetition_penalty)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return params


# ---- the two response shapes ----

class CompletionsApi:
    """/v1/completions: a choice carries "text", and so does every streamed chunk."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    chunk = choice

    @staticmethod
    def opening_chunk(index: int) -> dict | None:
        return None


class ChatApi:
    """/v1/chat/completions: a choice carries a "message"; streamed chunks carry a "delta" of it."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"
    id_prefix = "chatcmpl"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

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


async def complete(worker: GenerationWorker, job: Job, api: Api, model_name: str) -> dict:
    """The whole answer at once, with token usage. All its samples go to the worker together (one batch)."""
    samples = list(job.samples())
    completions = await asyncio.gather(*(worker.complete(prompt, params) for _, prompt, params in samples))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for (index, _, _), completion in zip(samples, completions):
        choices.append(api.choice(index, completion.text, completion.finish_reason))
        completion_tokens += len(completion.token_ids)
        prompt_tokens += completion.prompt_tokens if index % job.n == 0 else 0  # each prompt once, as in OpenAI
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return {**response_header(api, model_name, chunk=False), "choices": sorted(choices, key=lambda c: c["index"]),
            "usage": usage}


async def stream_events(worker: GenerationWorker, job: Job, api: Api, model_name: str) -> AsyncIterator[str]:
    """The answer as server-sent events: `data: {chunk}` per piece of text, then `data: [DONE]`.

    All the samples of a request (its prompts x n) go to the worker at once, so they share one batch;
    their chunks interleave as the pieces come, each marked with its choice's index, as OpenAI's do.
    """
    header = response_header(api, model_name, chunk=True)  # every chunk of one response shares id and created

    def event(choice: dict) -> str:
        return f"data: {json.dumps({**header, 'choices': [choice]})}\n\n"

    samples = list(job.samples())
    for index, _, _ in samples:
        if (opening := api.opening_chunk(index)) is not None:
            yield event(opening)
    chunks: asyncio.Queue = asyncio.Queue()  # (index, text piece, finish_reason or None) or an exception

    async def relay(index: int, prompt: Prompt, params: SamplingParams) -> None:
        finished: list = []
        try:
            async for piece in worker.stream(prompt, params, finished):
                chunks.put_nowait((index, piece, None))
            chunks.put_nowait((index, "", finished[0].finish_reason if finished else "stop"))
        except Exception as exc:  # raised to the response below, not lost in the task
            chunks.put_nowait(exc)

    tasks = [asyncio.create_task(relay(*sample)) for sample in samples]
    try:
        open_choices = len(samples)
        while open_choices:
            item = await chunks.get()
            if isinstance(item, Exception):
                raise item
            index, piece, finish_reason = item
            yield event(api.chunk(index, piece, finish_reason))
            open_choices -= finish_reason is not None
    finally:
        for task in tasks:  # the client went away: its samples' rows stop
            task.cancel()
    yield "data: [DONE]\n\n"


async def answer(worker: GenerationWorker, job: Job, api: Api, model_name: str, stream: bool):
    """The response; a prompt cut to fit the context is reported in the `x-lmforge-warning` header and, in a
    whole (non-streamed) answer, in a `warnings` list (OpenAI clients ignore fields they do not know)."""
    notes = prompt_warnings(worker.engine, job.prompts)
    headers = {"x-lmforge-warning": " | ".join(notes)} if notes else None
    if stream:
        return StreamingResponse(stream_events(worker, job, api, model_name), media_type="text/event-stream",
                                 headers=headers)
    body = await complete(worker, job, api, model_name)
    return JSONResponse({**body, "warnings": notes}, headers=headers) if notes else body


# ---- errors ----

def add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or FastAPI's, answers with OpenAI's error body."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return ApiError(400, "the request body is not valid JSON").response()
        where = [str(part) for part in first["loc"] if part != "body"]
        message = f"{'.'.join(where) or 'request body'}: {first['msg']}"
        return ApiError(400, message, param=where[0] if where else None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: still a JSON answer
        return ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error").response()


# ---- the app ----

def create_app(engine: Engine, model_name: str, template: ChatTemplate,
               max_tokens_limit: int = MAX_TOKENS_LIMIT, batch_window_s: float = BATCH_WINDOW_S) -> FastAPI:
    """An OpenAI-compatible app serving `engine` under the name `model_name`."""
    worker = GenerationWorker(engine, batch_window_s)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="lmforge", lifespan=lifespan)
    app.state.worker = worker
    add_error_handlers(app)

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(404, f"The model `{name}` does not exist (this server has `{model_name}`)",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "lmforge"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        job = Job(prompts, sampling_params(req, req.max_tokens, max_tokens_limit), req.n)
        return await answer(worker, job, CompletionsApi, model_name, req.stream)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        check_model(req.model)
        prompt = chat_prompt_ids([m.model_dump() for m in req.messages], template, engine.tokenizer)
        max_tokens = req.max_tokens if req.max_completion_tokens is None else req.max_completion_tokens
        job = Job([prompt], sampling_params(req, max_tokens, max_tokens_limit, template.stop), req.n)
        return await answer(worker, job, ChatApi, model_name, req.stream)

    return app


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
