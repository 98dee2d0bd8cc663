"""CLI verbs that run a trained model: generate (continue a prompt), chat (talk to it), serve (an HTTP API).

    lmforge generate CKPT --prompt TEXT [--json] [sampling flags] [--backend torch|llamacpp --quant q8_0]
    lmforge chat CKPT [--system TEXT --template chatml|plain] [sampling flags]
    lmforge serve CKPT [--host 127.0.0.1 --port 8000 --model-name NAME --batch-window-ms 50 --compile]
                       [--api-key KEY --allow-host NAME --max-body-bytes N --max-tokens-limit N
                        --max-model-len N --max-concurrent-requests N --max-queued N]

Heavy imports (torch, FastAPI) happen inside the verbs, so `lmforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from ..generate.chat import TEMPLATES, ChatTemplate, load_chat_template
from ..generate.limits import KV_CACHE_MB, PREFILL_CHUNK, ServerLimits
from ..generate.params import SamplingParams
from ..model.quant import QUANTIZE_CHOICES

API_KEY_ENV = "LMFORGE_API_KEY"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the names a loopback-bound server answers to


def _reject_unknown(overrides: list[str]) -> None:
    if overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")


def check_backend_flags(backend: str, quantize: str = "none", quant: str | None = None, compile: bool = False) -> None:
    """Refuse flags that belong to the other backend (before anything is loaded)."""
    if backend == "llamacpp" and (compile or quantize != "none"):
        raise ValueError("--compile and --quantize are for the PyTorch engine; with --backend llamacpp, "
                         "--quant picks the GGUF storage (f32, f16, bf16, q8_0, q4_0)")
    if backend == "torch" and quant is not None:
        raise ValueError("--quant picks the GGUF file of --backend llamacpp; the PyTorch engine takes --quantize int8")


def _load_engine(checkpoint: str, compile: bool = False, quantize: str = "none", backend: str = "torch",
                 quant: str | None = None):
    check_backend_flags(backend, quantize, quant, compile)
    if backend == "llamacpp":
        return _load_llamacpp_engine(checkpoint, quant)
    from ..generate.engine import Engine
    from ..tokenizer import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint

    model = load_model_from_checkpoint(checkpoint)
    if quantize == "int8":
        from ..model.quant import quantize_model

        print(quantize_model(model).summary(), file=sys.stderr)  # stderr: stdout is the generated text
    return Engine(model, load_tokenizer(checkpoint), compile=compile)


def _load_llamacpp_engine(checkpoint: str, quant: str | None):
    from ..export.llamacpp_backend import DEFAULT_QUANT, LlamaCppEngine

    engine = LlamaCppEngine.from_checkpoint(checkpoint, quant or DEFAULT_QUANT)
    print(engine.describe(), file=sys.stderr)  # stderr: stdout is the generated text
    return engine


def _engine_of(args: argparse.Namespace):
    return _load_engine(args.checkpoint, args.compile, args.quantize, args.backend, args.quant)


def _sampling_params(args: argparse.Namespace) -> SamplingParams:
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                            seed=args.seed, stop=args.stop)
    params.validate()  # a bad flag is reported before the model is loaded
    return params


def _sample_params(params: SamplingParams, i: int) -> SamplingParams:
    """Sample i uses seed + i: different samples, and the same ones again on a rerun."""
    return params if params.seed is None else replace(params, seed=params.seed + i)


def _chat_template(args: argparse.Namespace) -> ChatTemplate:
    return TEMPLATES[args.template] if args.template else load_chat_template(args.checkpoint)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()  # show each piece as soon as it is generated


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    _reject_unknown(overrides)
    prompt = Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file else args.prompt
    params = _sampling_params(args)
    engine = _engine_of(args)
    for i in range(args.num_samples):
        sample_params = _sample_params(params, i)
        if args.json:
            completion = engine.generate([prompt], sample_params)[0]
            print(json.dumps({"prompt": prompt, "text": completion.text, "finish_reason": completion.finish_reason,
                              "prompt_tokens": completion.prompt_tokens,
                              "completion_tokens": len(completion.token_ids)}, ensure_ascii=False))
            continue
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        _write(prompt)
        for piece in engine.stream(prompt, sample_params):
            _write(piece)
        _write("\n")
    return 0


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from ..generate.chat import ChatSession

    _reject_unknown(overrides)
    params = _sampling_params(args)
    engine = _engine_of(args)
    session = ChatSession(engine, _chat_template(args), params, system=args.system)
    print(f"chatting with {args.checkpoint} ({session.template.name} template). "
          "/reset forgets the conversation, /exit or Ctrl-D quits.")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        command = line.strip()
        if command == "/exit":
            return 0
        if command == "/reset":
            session.reset()
            print("(conversation forgotten)")
        elif command:
            _stream_reply(session, line)


def _stream_reply(session, user_text: str) -> None:
    try:
        for piece in session.reply(user_text):
            _write(piece)
    except KeyboardInterrupt:  # Ctrl-C cuts this reply short; Ctrl-C at the prompt quits
        _write(" [interrupted]")
    _write("\n")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may well be reachable from other machines
        return False


def allowed_hosts(bind: str, extra: list[str]) -> list[str] | None:
    """The Host header names the server answers to; None: any.

    Bound to loopback, only this machine's own names (and --allow-host ones): a web page that points a
    domain of its own at 127.0.0.1 (DNS rebinding) gets its requests refused. Bound to another address the
    server cannot know the names clients use, so it checks only when --allow-host names some."""
    if "*" in extra:
        return None
    if is_loopback(bind):
        return [*LOOPBACK_HOSTS, *extra]
    return list(extra) or None


def _server_limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens_limit,
                        max_model_len=args.max_model_len, max_concurrent_requests=args.max_concurrent_requests,
                        max_queued=args.max_queued)


def cmd_serve(args: argparse.Namespace, overrides: list[str]) -> int:
    _reject_unknown(overrides)
    try:
        import uvicorn

        from ..generate.server import create_app
    except ImportError as exc:
        raise ValueError(f"serving needs FastAPI and uvicorn ({exc.name} is missing): "
                         "pip install 'lmforge[serve]'") from exc
    name = args.model_name or "/".join(Path(args.checkpoint).resolve().parts[-2:])  # e.g. my_run/best
    window = {} if args.batch_window_ms is None else {"batch_window_s": args.batch_window_ms / 1000}
    if window and args.batch_window_ms < 0:
        raise ValueError(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    scheduler = args.scheduler or ("static" if args.backend == "llamacpp" else "continuous")
    if scheduler == "continuous" and args.backend == "llamacpp":
        raise ValueError("--scheduler continuous needs --backend torch (llama.cpp's backend runs one sequence "
                         "at a time); use --scheduler static")
    if window and scheduler == "continuous":
        raise ValueError("--batch-window-ms applies to --scheduler static only (continuous scheduling admits "
                         "requests between decode steps, with no window)")
    if args.kv_cache_mb <= 0 or args.prefill_chunk < 1:
        raise ValueError("--kv-cache-mb must be > 0 and --prefill-chunk >= 1")
    limits = _server_limits(args)  # a bad limit is reported before the model is loaded
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    engine = _engine_of(args)
    app = create_app(engine, name, _chat_template(args), limits=limits,
                     api_key=api_key, allowed_hosts=allowed_hosts(args.host, args.allow_host), scheduler=scheduler,
                     kv_cache_mb=args.kv_cache_mb, prefill_chunk=args.prefill_chunk, **window)
    worker = app.state.worker
    print(f"scheduler: {scheduler}, KV cache for {worker.kv_slots} sequences at once", file=sys.stderr)
    if args.compile and scheduler == "continuous":
        print("WARNING: --compile speeds up the static scheduler's decode step only; the continuous scheduler's "
              "steps run eagerly", file=sys.stderr)
    if not is_loopback(args.host) and not api_key:
        print(f"WARNING: binding {args.host} lets other machines use this server; it has no authentication "
              f"(--api-key or {API_KEY_ENV} sets a key).", file=sys.stderr)
    print(f"serving model {name!r} at http://{args.host}:{args.port}/v1 (OpenAI API), chat page at "
          f"http://{args.host}:{args.port}/; Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (always the most likely token)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens less likely than this fraction of the top token's probability (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")


def _add_compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step with torch.compile: the first generation waits for the compiler "
                        "(tens of seconds on CPU), later tokens come faster (docs/generation.md)")
    add_quantize_flag(p)
    add_backend_flags(p)


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    from ..export.gguf_quant import QUANTS

    p.add_argument("--backend", choices=["torch", "llamacpp"], default="torch",
                   help="torch: lmforge's PyTorch engine (default, batches requests). llamacpp: export the checkpoint "
                        "to GGUF once (cached) and compute with llama.cpp, one request at a time (docs/gguf.md)")
    p.add_argument("--quant", choices=QUANTS, default=None,
                   help="with --backend llamacpp: how the GGUF file stores the weights (default q8_0)")


def add_quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                   help="int8: weight-only int8 matrices (a quarter of fp32's memory; the fastest kernel here is "
                        "picked by a short probe and named on stderr; docs/generation.md). Default: none")


def _add_template_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", choices=sorted(TEMPLATES),
                   help="chat format (default: the checkpoint's chat_template.json, else chatml)")


def _add_server_limit_flags(p: argparse.ArgumentParser) -> None:
    d = ServerLimits()
    p.add_argument("--api-key", help=f"ask every request but /health for 'Authorization: Bearer KEY' (default: "
                                     f"${API_KEY_ENV}, else none; the variable keeps the key out of `ps`)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests with this Host header (repeatable; '*' = any). Bound to loopback, "
                        "only localhost, 127.0.0.1 and [::1] are answered otherwise")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="refuse larger request bodies with 413 (default %(default)s)")
    p.add_argument("--max-tokens-limit", type=int, default=d.max_tokens,
                   help="the most max_tokens a request may ask for (default %(default)s)")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len,
                   help="prompt + max_tokens must fit in this many tokens, else 400 (default: the model's context; "
                        "more lets the engine slide past it)")
    p.add_argument("--max-concurrent-requests", type=int, default=d.max_concurrent_requests,
                   help="generation requests handled at once; more get 429 with Retry-After (default %(default)s)")
    p.add_argument("--max-queued", type=int, default=d.max_queued,
                   help="samples waiting for a batch; a request that would pass this gets 429 (default %(default)s)")


def register(sub) -> None:
    """Add this module's verbs to the `lmforge` sub-command parser."""
    p = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/best")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue ('' = start a new document)")
    prompt.add_argument("--prompt-file", help="read the prompt from this file")
    _add_sampling_flags(p)
    _add_compile_flag(p)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per sample (prompt, text, finish_reason, token counts)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to a checkpoint in the terminal")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/best")
    p.add_argument("--system", help="a system message that starts the conversation")
    _add_template_flag(p)
    _add_sampling_flags(p)
    _add_compile_flag(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve a checkpoint over HTTP with the OpenAI API")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/best")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the name clients ask for (default: RUN_DIR/CHECKPOINT)")
    p.add_argument("--scheduler", choices=["continuous", "static"],
                   help="continuous: requests join the running batch between decode steps (default with --backend "
                        "torch). static: a batch runs until its last request is done (default with llamacpp)")
    p.add_argument("--kv-cache-mb", type=float, default=KV_CACHE_MB,
                   help="continuous: memory for the KV cache; it holds this many MB / (one context's keys and "
                        "values) sequences at once, at most 16 (default %(default)s)")
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK,
                   help="continuous: prompt tokens read per decode step, so a long prompt does not stall the "
                        "running requests (default %(default)s)")
    p.add_argument("--batch-window-ms", type=float,
                   help="static: how long a new batch waits for more requests to join it (default 50; 0 = start "
                        "at once)")
    _add_server_limit_flags(p)
    _add_template_flag(p)
    _add_compile_flag(p)
    p.set_defaults(func=cmd_serve)
