"""Pretraining end to end: data folder -> tokenizer -> model -> the training loop -> artifacts.

This wires the pieces together for `lmforge train`; each piece lives in its own module.
Under torchrun every process runs this same function: rank 0 prepares the data first (the others
then find it cached), each rank reads its own share of the batches, and only rank 0 prints.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..data.config import DataConfig
from ..data.corpus import default_corpus_files
from ..data.loader import TokenBatches
from ..data.prepare import ensure_prepared
from ..data.shards import read_meta
from ..distributed.config import DistConfig
from ..distributed.env import DistEnv, distributed_session, main_process_first, quiet_unless_main
from ..distributed.wrap import resolve_strategy
from ..ingest.config import IngestConfig
from ..model.config import ModelConfig, with_vocab
from ..model.gpt import GPT
from ..tokenizer import load_tokenizer
from ..utils.device import resolve_precision
from ..utils.malloc import keep_freed_memory
from . import checkpoint as ckpt
from .config import TrainConfig
from .loop import Benchmark, Trainer, TrainResult
from .objectives import lm_loss_sum
from .optim import build_optimizer
from .precision import candidate_precisions, run_precision
from .run_folder import claim_run_folder
from .sizing import TOKENS_PER_PARAM, ladder_config, pick_model_size


def prepare_data(data: DataConfig, ingest_cfg: IngestConfig | None = None, tokenizer_spec: str | None = None) -> Path:
    """The prepared data folder for this run (raw paths are tokenized once and cached)."""
    sources = data.path if data.path else default_corpus_files(data.default_corpus_bytes)
    if not data.path:
        print(f"data: no data.path given, using the built-in demo corpus "
              f"({len(sources)} files of Python source: the standard library and PyTorch's own)")
    cache_dir = Path(data.cache_dir).expanduser()
    return ensure_prepared([Path(s).expanduser() for s in sources], cache_dir,
                           tokenizer=tokenizer_spec or data.tokenizer, vocab_size=data.vocab_size,
                           val_fraction=data.val_fraction, seed=data.seed, ingest_cfg=ingest_cfg)


def build_model(model_cfg: ModelConfig, vocab_size: int) -> GPT:
    """A fresh model, or the weights of an lmforge checkpoint when model.init_from is set."""
    if model_cfg.init_from:
        model = ckpt.load_model_from_checkpoint(Path(model_cfg.init_from).expanduser())
        model.set_dropout(model_cfg.dropout)
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"model.init_from: the checkpoint's vocabulary ({model.config.vocab_size}) is "
                             f"smaller than the data's ({vocab_size}); prepare the data with its tokenizer")
        return model
    return GPT(with_vocab(model_cfg, vocab_size))


def run_pretraining(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig,
                    ingest_cfg: IngestConfig | None = None, config_yaml: str | None = None,
                    dist_cfg: DistConfig | None = None, benchmark: Benchmark | None = None) -> TrainResult:
    """Train a model; under torchrun with several processes, as one data-parallel run (see lmforge.distributed).

    `benchmark` scores train.eval_tasks at evaluations (lmforge.eval.benchmarks.training_benchmark makes one)."""
    dist_cfg = dist_cfg or DistConfig()
    with distributed_session(dist_cfg, train_cfg.device) as (env, device), quiet_unless_main(env), \
            claim_run_folder(train_cfg.out_dir, train_cfg.resume, env.is_main):
        return _pretrain(model_cfg, data_cfg, train_cfg, ingest_cfg, config_yaml, dist_cfg, env, device, benchmark)


def _pretrain(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, ingest_cfg: IngestConfig | None,
              config_yaml: str | None, dist_cfg: DistConfig, env: DistEnv, device: torch.device,
              benchmark: Benchmark | None = None) -> TrainResult:
    started = time.perf_counter()  # train.max_time budgets the whole run, data preparation included
    random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    resolve_precision(train_cfg.precision, device, n_params=0)  # an impossible choice fails before data prep
    # A run that starts from a checkpoint must read the data with that checkpoint's tokenizer.
    tokenizer_spec = str(Path(model_cfg.init_from).expanduser()) if model_cfg.init_from else None
    # Rank 0 tokenizes into the cache; the others then reuse it, quietly (its report is the run's).
    with main_process_first(env):
        data_dir = prepare_data(data_cfg, ingest_cfg, tokenizer_spec)
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(data_dir)
    probed_precision = None  # (precision, why) when the size probe already timed the precisions to choose from
    if model_cfg.fit_to_budget and env.is_distributed:
        print("model: fit_to_budget sizes a model for one process; under torchrun the configured shape is used")
    elif model_cfg.fit_to_budget:
        model_cfg, probed_precision = size_to_budget(
            model_cfg, train_cfg, data_dir, tokenizer.vocab_size, device,
            seconds_left=(train_cfg.max_time or 0) - (time.perf_counter() - started))
    model = build_model(model_cfg, tokenizer.vocab_size)
    if env.rank > 0:
        torch.manual_seed(train_cfg.seed + env.rank)  # the weights are rank 0's; dropout masks differ per rank
    run_dir = Path(train_cfg.out_dir).expanduser()
    def probe_batch():  # a real training batch for the precision probe (does not move the data position)
        probe = TokenBatches(data_dir, "train", model.config.block_size, train_cfg.batch_size, seed=train_cfg.seed)
        return next(iter(probe.eval_batches(1)))

    # The model was sized for the speed of its faster precision: train in that one (a second probe, timing
    # forward and backward only, could pick the other when they are close, and the model would be too big).
    precision, why = probed_precision or run_precision(train_cfg.precision, model, probe_batch, device, lm_loss_sum,
                                                       run_dir, train_cfg.resume, env.is_distributed)
    strategy = resolve_strategy(dist_cfg.strategy, env.world_size, model.num_params(), device)
    block = model.config.block_size
    train_batches = TokenBatches(data_dir, "train", block, train_cfg.batch_size, seed=train_cfg.seed,
                                 rank=env.rank, world_size=env.world_size)
    val_batches = (TokenBatches(data_dir, "val", block, train_cfg.batch_size, seed=train_cfg.seed)
                   if meta["val_tokens"] > 0 else None)

    run_dir.mkdir(parents=True, exist_ok=True)
    if config_yaml is not None and env.is_main:
        (run_dir / "config.yaml").write_text(config_yaml)
    print(f"model: {model.num_params():,} parameters ({model.num_params(exclude_embeddings=True):,} outside the "
        f"embeddings), {model.config.n_layer} layers x {model.config.n_embd} wide, context {block}")
    print(f"data: {data_dir} -- {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
        f"tokenizer {meta['tokenizer']} ({tokenizer.vocab_size:,} tokens); "
        f"{train_batches.batches_per_epoch:,} batches per epoch" + (" per process" if env.is_distributed else ""))
    print(f"device: {device}, precision: {precision} ({why})")
    if env.is_distributed:
        print(describe_parallelism(train_cfg, env, strategy, block))
    trainer = Trainer(model, tokenizer, train_batches, val_batches, train_cfg, run_dir, device, precision,
                      env=env, strategy=strategy, setup_seconds=time.perf_counter() - started, benchmark=benchmark)
    return trainer.fit()


def size_to_budget(model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: Path, vocab_size: int,
                   device: torch.device, seconds_left: float) -> tuple[ModelConfig, tuple[str, str] | None]:
    """model.fit_to_budget: the model shape a speed probe finds right for the time left (train/sizing.py), and
    when the probe chose between precisions (train.precision auto), (the faster one for that shape, why)."""
    if train_cfg.max_time is None or model_cfg.init_from:
        raise ValueError("model.fit_to_budget: needs train.max_time (the budget to size for) and a fresh model "
                         "(not model.init_from)")
    run_dir = Path(train_cfg.out_dir).expanduser()
    resume_from = ckpt.find_resume(run_dir) if train_cfg.resume == "auto" else Path(train_cfg.resume).expanduser()
    saved = resume_from / "config.json" if resume_from is not None else None
    if train_cfg.resume != "never" and saved is not None and saved.is_file():  # a resumed run keeps its shape
        shape = json.loads(saved.read_text())
        print(f"model: fit_to_budget: keeping the resumed run's {shape['n_layer']} x {shape['n_embd']} shape")
        return ladder_config(model_cfg, shape["n_layer"], shape["n_embd"]), None
    if device.type == "cpu" and train_cfg.reuse_memory:
        # What the Trainer will switch on anyway, switched on before the probe times its steps: without it
        # every step page-faults its big tensors in anew, and the probe timed 2 x 64 at 115-190 ms/step
        # that then trained at 74 (2-core EPYC), so it picked smaller models than the machine could train.
        keep_freed_memory()
    probe = TokenBatches(data_dir, "train", model_cfg.block_size, train_cfg.batch_size, seed=train_cfg.seed)
    batch = next(iter(probe.eval_batches(1)))
    step_tokens = train_cfg.batch_size * train_cfg.grad_accum_steps * model_cfg.block_size
    sized = with_vocab(model_cfg, vocab_size)
    precisions = candidate_precisions(train_cfg.precision, device)
    # The probe's models must not move the run's random stream (its weights); only this device's is forked.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        chosen, trials = pick_model_size(sized, batch, seconds_left,
                                         lambda m: build_optimizer(m, train_cfg, device), step_tokens, device,
                                         precisions)
    tried = ", ".join(f"{t.n_layer}x{t.n_embd} {t.seconds_per_step * 1000:.0f} ms/step"
                      + (f" {t.precision}" if len(precisions) > 1 else "")
                      + f" ({t.tokens_per_param:.0f} tokens/param)" for t in trials)
    print(f"model: fit_to_budget picked {chosen.n_layer} layers x {chosen.n_embd} wide for {seconds_left:.0f} s "
          f"(probe: {tried}; wanted >= {TOKENS_PER_PARAM} tokens per parameter)")
    trial = next(t for t in trials if (t.n_layer, t.n_embd) == (chosen.n_layer, chosen.n_embd))
    measured = None
    if len(trial.timings) > 1:
        measured = trial.precision, "auto: the size probe's training steps, " + ", ".join(
            f"{p} {seconds * 1000:.1f} ms/step" for p, seconds in trial.timings.items())
    return replace(chosen, vocab_size=model_cfg.vocab_size), measured


def describe_parallelism(train_cfg: TrainConfig, env: DistEnv, strategy: str, block_size: int) -> str:
    """One line: the processes, the strategy and the global batch of one optimizer step."""
    sequences = train_cfg.batch_size * train_cfg.grad_accum_steps * env.world_size
    return (f"distributed: {env.world_size} processes, {strategy}; global batch {train_cfg.batch_size} sequences "
            f"x {train_cfg.grad_accum_steps} accumulation steps x {env.world_size} processes = {sequences} "
            f"sequences ({sequences * block_size:,} tokens) per optimizer step")
