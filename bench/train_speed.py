"""Training throughput on CPU: lmforge's training step vs Hugging Face transformers and vs litgpt.

    python bench/train_speed.py [--quick] [--threads 2] [--rounds-small 3] [--rounds-large 1]
                                [--only gpt2-tiny,gpt2-124m,llama-tiny] [--retries 2] [--max-wait 60]
                                [--bench-python PATH] [--out FILE.json]

Three model shapes, each trained with AdamW (decay on matrices only, clip 1.0) on real text (tiny
Shakespeare), for the same number of steps on the same batches:

* **gpt2-tiny**: nanoGPT's "shakespeare-char on CPU" shape: 4 layers, 4 heads, 128 wide, block 64,
  batch 12, 65 characters; nanoGPT's hyper-parameters (lr 1e-3, betas 0.9/0.99, weight decay 0.1).
  lmforge vs `transformers.GPT2LMHeadModel` holding the *same weights*.
* **gpt2-124m**: GPT-2 124M, block 256, batch 4, GPT-2's 50,257-token BPE; lr 6e-4, betas 0.9/0.95.
  lmforge vs HF with the same weights.
* **llama-tiny**: lmforge's `llama-tiny` preset (4 layers, 4 query heads sharing 2 key/value heads,
  128 wide, SwiGLU 352, RMSNorm, RoPE, tied embeddings) at block 64, batch 12, 65 characters, vs
  `litgpt.model.GPT` with the matching `litgpt.Config` built in code. The two libraries initialise
  their own weights (litgpt's init, lmforge's init): the same shape, data and hyper-parameters, not
  the same weights, so their losses are not compared.

Each (engine, shape, precision) runs in a fresh subprocess: it builds the model, runs the warm-up
steps, then times every step (`time.perf_counter` around the whole step: forward, loss, backward,
clipping, optimizer step, zero_grad) and reports the median. The configurations of a shape are
repeated in rounds (alternating order) and each keeps its fastest round.

Other processes on a 2-core machine distort these timings badly: with one core taken, a 2-thread
step waits for its descheduled thread at every parallel region and can run 3-10x slower. So the
parent measures how many cores *other* processes kept busy during each run (/proc/stat's busy time
minus the CPU time of our own processes: the load average cannot tell, it counts our threads too),
waits for quiet (at most --max-wait s) before each run, and repeats a run during which others used
more than QUIET_CPU cores (--retries times at most). The table shows that figure for every kept run;
a run still disturbed after the retries is marked with *.

What each engine runs (adapt here if an API changes):

* **lmforge**: `Trainer.train_step()` of a real `lmforge.train.loop.Trainer` (built as
  tests/train/test_train_loop.py builds one), fed the benchmark's batches: the product's step, with its
  schedule, autocast, gradient clipping and optimizer (`build_optimizer`).
* **hf**: `GPT2LMHeadModel(input_ids=x, labels=y, shift_labels=y, use_cache=False)` (HF's own loss;
  `shift_labels` because our targets are already shifted), `torch.optim.AdamW(fused=True)` with
  lmforge's groups and hyper-parameters (fused: what transformers' `Trainer` uses by default with
  torch >= 2.8, `optim="adamw_torch_fused"`), the learning rate of lmforge's schedule,
  `clip_grad_norm_`. bf16 means `torch.autocast("cpu", torch.bfloat16)` around forward and loss, as
  `Trainer(bf16=True)` does. HF's attention implementation is "sdpa" (transformers' default).
* **hf-adamw-loop** (fp32, for information): the same with `torch.optim.AdamW`'s own CPU default,
  a Python loop over the parameters.
* **hf-malloc** (124M bf16, for information): **hf** with glibc's malloc told by environment variables
  (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_) to reuse freed memory, which lmforge's Trainer does
  in-process (`train.reuse_memory`, lmforge/utils/malloc.py): how much of the gap is the allocator.
* **litgpt**: the step of litgpt's `pretrain.py`: a `lightning.Fabric` (CPU, 1 device,
  "32-true" or "bf16-mixed"), `model(x)`, `litgpt.utils.chunked_cross_entropy`, `fabric.backward`,
  `fabric.clip_gradients(max_norm=1.0)`, AdamW step, `zero_grad`. pretrain.py also wraps the model in
  `torch.compile`; lmforge runs eager by default (`train.compile: false`), so both run eager in the
  **litgpt** rows, and both compiled in the **lmforge-compile** / **litgpt-compile** rows.
  The vocabulary is not padded (`padded_vocab_size=65`; litgpt would pad to 512 by default), so that
  both compute the same matmuls.

litgpt lives in its own virtual environment, `.venv-bench` next to the project's `.venv`: litgpt
0.5.13 requires huggingface_hub < 1.4, while transformers 5.24 requires >= 1.31, so installing it
into `.venv` would break transformers. The script creates it on first use (or pass --bench-python):

    python3 -m venv .venv-bench && .venv-bench/bin/pip install litgpt torch==2.13.0

(a self-contained venv; torch is pinned to the project's 2.13.0 CPU build, from the same wheel). The
litgpt child never imports lmforge or transformers; it reads its batches from a file the parent writes.

Reported per configuration: ms/step (median), tokens/s, and MFU: achieved FLOP/s divided by the
machine's matmul ceiling measured in the same run (best of 2048^3 matmuls, fp32 and bf16, on the same
threads). Achieved FLOP/s = tokens/s x (6 N + 12 L T C) with N the parameters outside the position
table (the tied token embedding counts: it is the output layer), as in nanoGPT's `estimate_mfu` and
the PaLM paper's appendix B. fp32 runs are compared with the fp32 ceiling, bf16 autocast with bf16.

Same maths check: lmforge and HF start from the same weights and see the same batches; in fp32 their
first 5 losses must agree within 1e-4 (relative), so speed is not bought with different maths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: bench/ siblings
from contention import cpu_snapshot, others_cpu, wait_for_quiet  # noqa: E402

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "testdata" / "tinyshakespeare" / "input.txt"
BENCH_VENV = ROOT / ".venv-bench"
LOSS_STEPS, LOSS_RTOL = 5, 1e-4
QUIET_CPU = 0.15  # cores other processes may keep busy during a measurement before it is redone

# Shape -> model, batch and hyper-parameters. steps/warmup: (full run, --quick).
SHAPES = {
    "gpt2-tiny": dict(preset="gpt2-tiny", block=64, batch=12, tokens="char", engines=("lmforge", "hf"),
                      precisions=("fp32", "bf16"), extra=(("hf-adamw-loop", "fp32"), ("lmforge-compile", "fp32")),
                      lr=1e-3, min_lr=1e-4,
                      beta2=0.99, steps=(150, 30), warmup=(15, 5), rounds="small"),
    "gpt2-124m": dict(preset="gpt2-124m", block=256, batch=4, tokens="gpt2", engines=("lmforge", "hf"),
                      precisions=("fp32", "bf16"), extra=(("hf-adamw-loop", "fp32"), ("hf-malloc", "bf16")),
                      lr=6e-4, min_lr=6e-5, beta2=0.95, steps=(8, 3),
                      warmup=(2, 1), rounds="large"),
    "llama-tiny": dict(preset="llama-tiny", block=64, batch=12, tokens="char", engines=("lmforge", "litgpt"),
                       precisions=("fp32", "bf16"), extra=(("lmforge-compile", "fp32"), ("litgpt-compile", "fp32")),
                       lr=1e-3, min_lr=1e-4, beta2=0.99, steps=(150, 30), warmup=(15, 5), rounds="small"),
}
# (name, shape, numerator (engine, precision), denominator (engine, precision), target ratio)
TARGETS = [
    ("(a) gpt2-tiny fp32: lmforge / HF", "gpt2-tiny", ("lmforge", "fp32"), ("hf", "fp32"), 1.5),
    ("(b) gpt2-124m fp32: lmforge / HF", "gpt2-124m", ("lmforge", "fp32"), ("hf", "fp32"), 1.2),
    ("(b) gpt2-124m bf16 autocast: lmforge / HF", "gpt2-124m", ("lmforge", "bf16"), ("hf", "bf16"), 1.5),
    ("(b) gpt2-124m lmforge auto / HF fp32", "gpt2-124m", ("lmforge", "auto"), ("hf", "fp32"), 3.0),
    ("(2) llama-tiny fp32: lmforge / litgpt", "llama-tiny", ("lmforge", "fp32"), ("litgpt", "fp32"), 1.3),
    # torch.compile (train.compile: true; litgpt's pretrain.py compiles by default, HF's Trainer does not)
    ("(a) gpt2-tiny fp32: lmforge compiled / HF", "gpt2-tiny", ("lmforge-compile", "fp32"), ("hf", "fp32"), 1.5),
    ("(2) llama-tiny fp32, both compiled: lmforge / litgpt", "llama-tiny", ("lmforge-compile", "fp32"),
     ("litgpt-compile", "fp32"), 1.3),
]
WEIGHT_DECAY, BETA1, GRAD_CLIP, SEED = 0.1, 0.9, 1.0, 0
HF_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}  # see lmforge/utils/malloc.py


# ---- data: the same batches for every engine ----------------------------------------------------------
def encode_text(kind: str) -> torch.Tensor:
    """Tiny Shakespeare's first 90% (nanoGPT's train split) as token ids: 65 characters, or GPT-2 BPE."""
    text = TEXT.read_text(encoding="utf-8")
    text = text[: int(0.9 * len(text))]
    if kind == "char":
        chars = sorted(set(TEXT.read_text(encoding="utf-8")))
        lookup = {c: i for i, c in enumerate(chars)}
        return torch.tensor([lookup[c] for c in text], dtype=torch.int64)
    from lmforge.tokenizer import build_tokenizer

    return torch.tensor(build_tokenizer("gpt2").encode(text), dtype=torch.int64)


def make_batches(tokens: torch.Tensor, n: int, batch: int, block: int) -> torch.Tensor:
    """n batches of random windows, nanoGPT's get_batch: (n, 2, batch, block) holding x and y = x shifted."""
    g = torch.Generator().manual_seed(SEED)
    starts = torch.randint(len(tokens) - block - 1, (n, batch), generator=g)
    windows = tokens[starts[..., None] + torch.arange(block + 1)]  # (n, batch, block + 1)
    return torch.stack([windows[..., :-1], windows[..., 1:]], dim=1).contiguous()


class FixedBatches:
    """The benchmark's batches in order, behind the one method Trainer.train_step uses (next_batch)."""

    def __init__(self, batches: torch.Tensor):
        self.batches, self.index = batches, 0
        self.batches_per_epoch = len(batches)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        return x.clone(), y.clone()


# ---- models ------------------------------------------------------------------------------------------
def lmforge_config(shape: dict, vocab: int):
    from lmforge.model.config import preset_config

    return preset_config(shape["preset"], vocab_size=vocab, block_size=shape["block"])


def flops_per_token(shape: dict, vocab: int) -> tuple[float, int]:
    """(6 N + 12 L T C, N): training FLOPs per token, nanoGPT's estimate_mfu / PaLM appendix B."""
    from lmforge.model.gpt import GPT

    cfg = lmforge_config(shape, vocab)
    with torch.device("meta"):
        model = GPT(cfg)
    n = model.num_params() - (model.pos_emb.weight.numel() if model.pos_emb is not None else 0)
    return 6 * n + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd, n


def train_config(shape: dict, steps: int, precision: str, out_dir: str):
    from lmforge.train.config import TrainConfig

    return TrainConfig(out_dir=out_dir, max_steps=steps, batch_size=shape["batch"], lr=shape["lr"],
                       min_lr=shape["min_lr"], warmup_steps=0, weight_decay=WEIGHT_DECAY, beta1=BETA1,
                       beta2=shape["beta2"], grad_clip=GRAD_CLIP, precision=precision, device="cpu",
                       sample_interval=0, resume="never", seed=SEED)


def hf_gpt2(model):
    """A GPT2LMHeadModel holding lmforge `model`'s weights (lmforge.model.hf maps names and layouts)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.model.hf import hf_config_from, hf_state_dict

    hf = GPT2LMHeadModel(GPT2Config(**hf_config_from(model.config), attn_implementation="sdpa"))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the token embedding
        raise RuntimeError(f"weights do not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


def decay_groups(named_params, tables: tuple[str, ...]) -> list[dict]:
    """lmforge's AdamW groups (train/optim.py): decay matrices, not the token/position tables, gains, biases."""
    decay, no_decay, seen = [], [], set()
    for name, p in named_params:
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and not name.endswith(tables) else no_decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


# ---- one configuration, in its own process --------------------------------------------------------------
def run_lmforge(shape: dict, precision: str, batches: torch.Tensor, vocab: int, weights: Path | None,
                steps: int, compile: bool = False) -> dict:
    from safetensors.torch import load_model

    from lmforge.model.gpt import GPT
    from lmforge.train.loop import Trainer
    from lmforge.utils.device import resolve_precision

    torch.manual_seed(SEED)
    model = GPT(lmforge_config(shape, vocab))
    if weights is not None:
        load_model(model, str(weights))
    device = torch.device("cpu")
    if precision == "auto":  # what `lmforge train` does with train.precision: auto (train/pretrain.py)
        precision = resolve_precision("auto", device, model.num_params())
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = replace(train_config(shape, steps, precision, run_dir), compile=compile)  # train.compile
        trainer = Trainer(model, None, FixedBatches(batches), None, cfg, run_dir, device, precision)
        times, losses = timed_steps(trainer.train_step, steps)
    return {"resolved_precision": precision, "times": times, "losses": losses}


def run_hf(shape: dict, precision: str, batches: torch.Tensor, vocab: int, weights: Path, steps: int,
           fused: bool = True) -> dict:
    from safetensors.torch import load_model

    from lmforge.model.gpt import GPT
    from lmforge.train.optim import decay_progress, lr_at

    torch.manual_seed(SEED)
    model = GPT(lmforge_config(shape, vocab))
    load_model(model, str(weights))
    hf = hf_gpt2(model)
    del model
    hf.train()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train_config(shape, steps, precision, tmp)
    # fused=True: transformers' Trainer default with torch >= 2.8 (optim="adamw_torch_fused"); fused=False is
    # torch.optim.AdamW's own default on CPU (a Python loop over the parameters, as lmforge builds it).
    optimizer = torch.optim.AdamW(decay_groups(hf.named_parameters(), ("wte.weight", "wpe.weight")),
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    data = FixedBatches(batches)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    step_no = [0]

    def step() -> torch.Tensor:
        lr = lr_at(step_no[0], cfg, decay_progress(step_no[0], steps, cfg.warmup_steps, 0.0, None))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.next_batch()
        with autocast:
            loss = hf(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_no[0] += 1
        return loss.detach()

    times, losses = timed_steps(step, steps)
    return {"resolved_precision": precision, "times": times, "losses": losses,
            "attn_implementation": getattr(hf.config, "_attn_implementation", None)}


def litgpt_config(shape: dict, vocab: int):
    """litgpt's Config closest to lmforge's llama-tiny preset (see the module docstring)."""
    from litgpt import Config

    return Config(name="lmforge-llama-tiny", block_size=shape["block"], vocab_size=vocab, padded_vocab_size=vocab,
                  n_layer=4, n_head=4, n_query_groups=2, n_embd=128, rotary_percentage=1.0, rope_base=10000,
                  parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=1e-6,
                  mlp_class_name="LLaMAMLP", intermediate_size=352)


def run_litgpt(shape: dict, precision: str, batches: torch.Tensor, vocab: int, steps: int,
               compile: bool = False) -> dict:
    import lightning as L
    from litgpt.model import GPT
    from litgpt.pretrain import initialize_weights
    from litgpt.utils import chunked_cross_entropy

    fabric = L.Fabric(accelerator="cpu", devices=1, precision="bf16-mixed" if precision == "bf16" else "32-true")
    fabric.seed_everything(SEED, verbose=False)
    config = litgpt_config(shape, vocab)
    model = GPT(config)
    initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    model.transformer.wte.weight = model.lm_head.weight  # pretrain.py's train.tie_embeddings, as llama-tiny ties
    if compile:  # what litgpt's pretrain.py does before fabric.setup
        model = torch.compile(model)
    model = fabric.setup(model)
    groups = decay_groups(model.named_parameters(), ("wte.weight",))
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(groups, lr=shape["lr"], betas=(BETA1, shape["beta2"])))
    data = FixedBatches(batches)
    step_no = [0]

    def step() -> torch.Tensor:
        # the lmforge schedule's value with warmup 0: cosine from lr to min_lr over the run
        import math

        progress = step_no[0] / max(1, steps)
        lr = shape["min_lr"] + 0.5 * (shape["lr"] - shape["min_lr"]) * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.next_batch()
        logits = model(x)
        loss = chunked_cross_entropy(logits, y)
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad()
        step_no[0] += 1
        return loss.detach()

    times, losses = timed_steps(step, steps)
    n_params = sum(p.numel() for p in model.parameters())
    return {"resolved_precision": precision, "times": times, "losses": losses, "params": n_params}


def timed_steps(step, steps: int) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        losses.append(float(loss))  # on CPU the step is done already; this adds no wait
        times.append(time.perf_counter() - start)
    return times, losses


def child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    shape = SHAPES[spec["shape"]]
    batches = torch.load(spec["batches"])
    steps = spec["warmup"] + spec["steps"]
    weights = Path(spec["weights"]) if spec.get("weights") else None
    load_before = os.getloadavg()[0]
    if spec["engine"] in ("lmforge", "lmforge-compile"):
        out = run_lmforge(shape, spec["precision"], batches, spec["vocab"], weights, steps,
                          compile=spec["engine"] == "lmforge-compile")
    elif spec["engine"] in ("hf", "hf-adamw-loop", "hf-malloc"):
        out = run_hf(shape, spec["precision"], batches, spec["vocab"], weights, steps,
                     fused=spec["engine"] != "hf-adamw-loop")
    else:
        out = run_litgpt(shape, spec["precision"], batches, spec["vocab"], steps,
                         compile=spec["engine"] == "litgpt-compile")
    timed = out["times"][spec["warmup"]:]
    return {**{k: spec[k] for k in ("engine", "shape", "precision")}, **out,
            "ms_per_step": 1000 * statistics.median(timed), "ms_per_step_mean": 1000 * statistics.fmean(timed),
            "load_average": [load_before, os.getloadavg()[0]], "torch": torch.__version__}


def measure(spec: dict, python: str, args: argparse.Namespace, label: str) -> dict:
    """One configuration's fastest of up to 1 + args.retries runs: a run during which other processes
    kept more than QUIET_CPU cores busy is repeated, after waiting (at most args.max_wait s) for quiet."""
    attempts = []
    for _ in range(args.retries + 1):
        waited = wait_for_quiet(args.max_wait, QUIET_CPU)
        r = run_child(spec, python)
        attempts.append(r)
        print(f"{label}: {r['ms_per_step']:.1f} ms/step (other processes: {r['others_cpu']:.2f} cores"
              f"{f', after waiting {waited:.0f} s for quiet' if waited >= 1 else ''})", file=sys.stderr)
        if r["others_cpu"] <= QUIET_CPU:
            break
    kept = min(attempts, key=lambda a: a["ms_per_step"])
    kept["contended"] = kept["others_cpu"] > QUIET_CPU
    kept["runs"] = [{"ms_per_step": a["ms_per_step"], "others_cpu": a["others_cpu"]} for a in attempts]
    return kept


def run_child(spec: dict, python: str) -> dict:
    command = [python, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    # hf-malloc: HF with glibc told, by environment, what lmforge's train.reuse_memory tells it in-process
    env = {**os.environ, **(HF_MALLOC_ENV if spec["engine"] == "hf-malloc" else {})}
    before = cpu_snapshot()
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['engine']} {spec['shape']} {spec['precision']} failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "others_cpu": others_cpu(before, cpu_snapshot())}


# ---- the machine -----------------------------------------------------------------------------------------
def matmul_ceiling(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """FLOP/s of the best of `repeats` n x n x n matmuls in fp32 and bf16 (the machine's GEMM ceiling)."""
    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * n**3 / best
    return out


def bench_python(args: argparse.Namespace) -> str:
    """The interpreter of the litgpt venv: made on first use (see the module docstring)."""
    if args.bench_python:
        return args.bench_python
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {BENCH_VENV} for litgpt (its huggingface_hub pin conflicts with transformers)", file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
        (BENCH_VENV / ".gitignore").write_text("*\n")  # keep it out of git status
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "litgpt", f"torch=={torch.__version__.split('+')[0]}"],
                       check=True)
    probe = subprocess.run([str(python), "-c", "import torch, litgpt; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode or probe.stdout.strip() != torch.__version__:
        raise SystemExit(f"{python}: needs litgpt and torch {torch.__version__}, got: {probe.stdout}{probe.stderr[-500:]}")
    return str(python)


def machine() -> dict:
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


# ---- the report ------------------------------------------------------------------------------------------
def add_derived(results: list[dict], shapes_info: dict, ceiling: dict) -> None:
    for r in results:
        info = shapes_info[r["shape"]]
        r["tokens_per_step"] = info["tokens_per_step"]
        r["tokens_per_s"] = info["tokens_per_step"] / (r["ms_per_step"] / 1000)
        r["achieved_flops"] = r["tokens_per_s"] * info["flops_per_token"]
        ceiling_key = "bf16" if r["resolved_precision"] == "bf16" else "fp32"
        r["mfu"] = r["achieved_flops"] / ceiling[ceiling_key]
        r["mfu_ceiling"] = ceiling_key


def loss_checks(results: list[dict]) -> list[dict]:
    """lmforge vs HF fp32: the first LOSS_STEPS losses, same weights and batches, within LOSS_RTOL."""
    rows = []
    for shape in sorted({r["shape"] for r in results if r["engine"] == "hf"}):
        pick = {r["engine"]: r for r in results if r["shape"] == shape and r["precision"] == "fp32"}
        if not {"lmforge", "hf"} <= set(pick):
            continue
        ours, theirs = pick["lmforge"]["losses"][:LOSS_STEPS], pick["hf"]["losses"][:LOSS_STEPS]
        worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
        rows.append({"name": f"{shape} fp32: first {LOSS_STEPS} losses lmforge vs HF, max relative difference",
                     "shape": shape, "measured": worst, "target": LOSS_RTOL, "comparison": "<=", "unit": "",
                     "met": worst <= LOSS_RTOL, "lmforge_losses": ours, "hf_losses": theirs})
    return rows


def ratio_targets(results: list[dict]) -> list[dict]:
    best = {(r["shape"], r["engine"], r["precision"]): r for r in results}
    rows = []
    for name, shape, (e1, p1), (e2, p2), target in TARGETS:
        num, den = best.get((shape, e1, p1)), best.get((shape, e2, p2))
        if num is None or den is None:
            continue
        measured = num["tokens_per_s"] / den["tokens_per_s"]
        note = f"auto resolved to {num['resolved_precision']}" if p1 == "auto" else ""
        rows.append({"name": name, "shape": shape, "measured": measured, "target": target, "comparison": ">=",
                     "unit": "x", "met": measured >= target, "note": note})
    return rows


def markdown(results: list[dict], targets: list[dict], ceiling: dict, shapes_info: dict) -> str:
    lines = ["| shape | engine | precision | ms/step | tokens/s | GFLOP/s | MFU | others' CPU |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        precision = r["precision"] if r["precision"] == r["resolved_precision"] else \
            f"{r['precision']} (= {r['resolved_precision']})"
        lines.append(f"| {r['shape']} | {r['engine']} | {precision} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} "
                     f"| {r['achieved_flops'] / 1e9:.1f} | {r['mfu']:.1%} of {r['mfu_ceiling']} "
                     f"| {r['others_cpu']:.2f}{'*' if r.get('contended') else ''} |")
    lines += ["", f"matmul ceiling (2048^3, same threads): fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {ceiling['bf16'] / 1e9:.0f} GFLOP/s. FLOPs per token (6N + 12LTC): " +
              ", ".join(f"{s} {i['flops_per_token'] / 1e6:.1f} M (N = {i['params'] / 1e6:.2f} M)"
                        for s, i in shapes_info.items()),
              "others' CPU: cores that other processes kept busy while that configuration ran (of "
              f"{os.cpu_count()}; its fastest round)",
              "", "| target | measured | target | met |", "|---|---:|---:|---|"]
    for t in targets:
        measured = f"{t['measured']:.2f}x" if t["unit"] == "x" else f"{t['measured']:.1e}"
        target = f"{t['comparison']} {t['target']}{t['unit']}" if t["unit"] == "x" else f"{t['comparison']} {t['target']:.0e}"
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['name']}{note} | {measured} | {target} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, one round: checks the benchmark works")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds-small", type=int, default=3, help="rounds of the tiny shapes (fastest counts)")
    parser.add_argument("--rounds-large", type=int, default=1, help="rounds of the 124M shape")
    parser.add_argument("--only", default=",".join(SHAPES), help="comma-separated shapes to run")
    parser.add_argument("--retries", type=int, default=2, help="extra runs of a configuration disturbed by "
                        f"other processes (> {QUIET_CPU} cores busy)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for quiet before a run")
    parser.add_argument("--bench-python", help="python of a venv with litgpt (default: .venv-bench, made if missing)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    start, load_before, cpu_before = time.perf_counter(), os.getloadavg(), cpu_snapshot()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.1f}: other processes share the CPU, timings will be noisy",
              file=sys.stderr)
    from safetensors.torch import save_model

    from lmforge.model.gpt import GPT

    wait_for_quiet(args.max_wait, QUIET_CPU)
    ceiling = matmul_ceiling(args.threads)
    print(f"matmul ceiling: fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s, bf16 {ceiling['bf16'] / 1e9:.0f} GFLOP/s",
          file=sys.stderr)
    shapes = [s for s in args.only.split(",") if s]
    results, shapes_info = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in shapes:
            shape = SHAPES[name]
            steps, warmup = shape["steps"][args.quick], shape["warmup"][args.quick]
            tokens = encode_text(shape["tokens"])
            vocab = 65 if shape["tokens"] == "char" else 50257
            batches_file = Path(tmp) / f"{name}-batches.pt"
            torch.save(make_batches(tokens, warmup + steps, shape["batch"], shape["block"]), batches_file)
            fpt, n_params = flops_per_token(shape, vocab)
            shapes_info[name] = {"flops_per_token": fpt, "params": n_params, "vocab": vocab, "steps": steps,
                                 "warmup": warmup, "tokens_per_step": shape["batch"] * shape["block"],
                                 "batch": shape["batch"], "block": shape["block"]}
            weights_file = None
            if "hf" in shape["engines"]:  # same weights for both engines
                torch.manual_seed(SEED)
                weights_file = Path(tmp) / f"{name}.safetensors"
                save_model(GPT(lmforge_config(shape, vocab)), str(weights_file))
            configs = [(e, p) for p in shape["precisions"] for e in shape["engines"]] + list(shape.get("extra", ()))
            from lmforge.utils.device import resolve_precision

            auto = resolve_precision("auto", torch.device("cpu"), n_params)
            if auto not in shape["precisions"]:
                configs.append(("lmforge", "auto"))
            rounds = 1 if args.quick else (args.rounds_small if shape["rounds"] == "small" else args.rounds_large)
            best: dict[tuple, dict] = {}
            for round_no in range(rounds):
                for engine, precision in (configs if round_no % 2 == 0 else configs[::-1]):
                    spec = {"engine": engine, "shape": name, "precision": precision, "steps": steps, "warmup": warmup,
                            "threads": args.threads, "batches": str(batches_file), "vocab": vocab,
                            "weights": str(weights_file) if weights_file and not engine.startswith("litgpt") else None}
                    python = bench_python(args) if engine.startswith("litgpt") else sys.executable
                    r = measure(spec, python, args, f"{name} {engine} {precision} round {round_no + 1}")
                    key = (engine, precision)
                    runs = best.get(key, {}).get("runs", []) + r["runs"]
                    if key not in best or r["ms_per_step"] < best[key]["ms_per_step"]:
                        best[key] = r
                    best[key]["runs"] = runs
            for key in configs:
                results.append(best[key])
            if auto in shape["precisions"]:  # lmforge's default precision is one of the measured ones
                alias = dict(best[("lmforge", auto)], precision="auto")
                results.append(alias)
    wait_for_quiet(args.max_wait, QUIET_CPU)  # measured again at the end; the higher figure counts (less disturbed)
    ceiling = {k: max(v, w) for (k, v), w in zip(ceiling.items(), matmul_ceiling(args.threads).values())}
    add_derived(results, shapes_info, ceiling)
    targets = ratio_targets(results) + loss_checks(results)
    print(markdown(results, targets, ceiling, shapes_info))
    for r in results:
        r["times"] = [round(t, 5) for t in r["times"]]
    report = {"benchmark": "train_speed", "machine": machine(), "threads": args.threads, "quick": args.quick,
              "matmul_ceiling_flops": ceiling, "shapes": shapes_info, "results": results, "targets": targets,
              "load_average_before_after": [load_before[0], os.getloadavg()[0]],
              "others_cpu": others_cpu(cpu_before, cpu_snapshot()),
              "wall_seconds": time.perf_counter() - start, "markdown": markdown(results, targets, ceiling, shapes_info)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten to {args.out} in {report['wall_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
