"""The training loop: the only one in lmforge. Pretraining and (later) fine-tuning both run here.

One optimizer step:  fetch k micro-batches -> forward + backward each (loss divided by the target
tokens of all k) -> clip the gradient norm -> AdamW step with the scheduled learning rate.
Around it: logging, validation, best-model tracking, early stopping, samples, checkpoints, and a
clean stop on Ctrl-C / SIGTERM or a NaN loss.

Under torchrun the same loop runs in every process (rank), each on its own micro-batches, with the
model wrapped by DDP or sharded by FSDP (lmforge.distributed). Three rules keep the ranks one training run:
  * the loss is divided by the target tokens of the *global* batch (all ranks, all k micro-batches),
    so the averaged gradient equals one process's gradient on that whole batch;
  * every decision is taken on numbers all ranks share: train and validation losses are summed over
    ranks, and after each step the ranks agree on the clock and on any Ctrl-C / SIGTERM;
  * only rank 0 prints and writes files; checkpoints hold whole (consolidated) weights and
    optimizer state, so a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..distributed.collectives import gather_objects, max_across_ranks, round_robin, sum_across_ranks
from ..distributed.env import DistEnv, barrier
from ..distributed.state_dict import FullModel, full_optimizer_state, load_full_optimizer_state
from ..distributed.world_change import data_position_for_world, rng_for_rank
from ..distributed.wrap import grad_scaler, gradient_sync, wrap_model
from ..generate.engine import evaluation_mode, generate_text
from ..model.linear import drop_packed_weights
from ..utils.device import autocast
from ..utils.malloc import keep_freed_memory
from ..utils.progress import progress_bar
from . import checkpoint as ckpt
from .config import TrainConfig
from .budget import (MIN_MEASURED_STEPS_SLOW, PeriodicWork, StepClock, corrected_total_steps,
                     estimate_save_seconds, fit_total_steps, recheck_step)
from .compile import maybe_compile
from .diagnose import write_diagnosis
from .metrics import MetricsLog
from .objectives import count_targets, lm_loss_sum, statistics_left_out
from .optim import build_optimizer, decay_progress, lr_at
from .plots import write_plots
from .state import TrainState, capture_rng, restore_rng

# Scores benchmark tasks on (model, tokenizer): rows of {task, metric, value, stderr, chance, examples}.
Benchmark = Callable[[torch.nn.Module, Any], list[dict[str, Any]]]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    stop_reason: str
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    elapsed: float
    verdict: str


class StopRequested:
    """Turns the first Ctrl-C / SIGTERM into a flag the loop checks, so it can save before leaving."""

    def __init__(self, announce: bool = True):
        self.signal_name: str | None = None
        self.announce = announce  # under torchrun only rank 0 says it, though every rank gets the signal
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # second signal: the user really wants out
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if self.announce:
            tqdm.write(f"\n{self.signal_name} received: finishing this step and saving last/ (press again to abort)")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains `model` on `train_batches`.

    In a distributed run, `env` says which rank this process is and `strategy` (none | ddp | fsdp, see
    lmforge.distributed.wrap) how the model is shared; `train_batches` must already be this rank's share of the
    data. batch_size and grad_accum_steps are per rank: one optimizer step reads
    batch_size x grad_accum_steps x world_size sequences (`global_batch`).

    `setup_seconds` is the time the run spent before training (reading and tokenizing data, building the
    model): a fresh run counts it against train.max_time, which budgets the whole run.
    """

    def __init__(self, model, tokenizer, train_batches, val_batches, cfg: TrainConfig, run_dir: str | Path,
                 device: torch.device, precision: str, loss_fn=lm_loss_sum, model_files=None,
                 env: DistEnv | None = None, strategy: str = "none", setup_seconds: float = 0.0,
                 benchmark: Benchmark | None = None):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.benchmark = benchmark  # scores train.eval_tasks (built by the caller: lmforge.eval runs the harness)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.env, self.strategy = env or DistEnv(), strategy
        self.global_batch = cfg.batch_size * cfg.grad_accum_steps * self.env.world_size
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device, self.precision, self.loss_fn = device, precision, loss_fn
        if device.type == "cpu" and cfg.reuse_memory:
            keep_freed_memory()  # big tensors reuse freed memory instead of fresh pages every step (utils/malloc.py)
        # How checkpoints store the model: all weights by default; fine-tuning may store less (LoRA adapters).
        self.model_files = model_files or ckpt.FullWeights()
        resume_path = self._resume_path()
        if resume_path is not None:  # saved weights go into the plain model, before it is wrapped or sharded
            self.model_files.load(model, resume_path)
        self.full_model = FullModel(model, strategy, self.env.is_main)  # what checkpoints and samples read
        self.model.to(device)
        if cfg.activation_checkpointing:
            transformers = [m for m in model.modules() if hasattr(m, "activation_checkpointing")]
            if not transformers:
                raise ValueError("train.activation_checkpointing: this model does not support it")
            for module in transformers:  # the GPT itself, or the body under a task head
                module.activation_checkpointing = True
        # forward runs on `wrapped`: the model itself, its DDP wrapper, or the model sharded in place by FSDP.
        self.wrapped = wrap_model(model, strategy, device)
        self.forward_model = maybe_compile(self.wrapped, cfg.compile, device, verbose=self.env.is_main)
        self.optimizer = build_optimizer(model, cfg, device)
        # fp16 has a narrow range: scale the loss up so small gradients do not flush to zero.
        self.scaler = grad_scaler(device, precision == "fp16", strategy)
        self.state = TrainState(elapsed=setup_seconds)
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self._agreed_signal: str | None = None  # distributed runs: a stop signal that every rank now knows of
        self._final_seconds: float | None = None  # the final evaluation, sample, checkpoint and report, as fitted
        self.resumed_from = self._resume_training_state(resume_path)
        self.total_steps = self._total_steps()
        self.metrics = self._open_metrics() if self.env.is_main else None

    # ---- setup ---------------------------------------------------------------------------------
    def _total_steps(self) -> int | None:
        """Length of the run in optimizer steps when known (it sets the LR schedule's horizon).

        A max_time budget becomes a step count once its first steps are timed (`_fit_to_time_budget`).
        """
        by_epochs = None
        if self.cfg.epochs is not None:
            by_epochs = math.ceil(self.cfg.epochs * self.train_batches.batches_per_epoch / self.cfg.grad_accum_steps)
        known = [n for n in (self.cfg.max_steps, by_epochs, self.state.fitted_steps) if n is not None]
        return min(known) if known else None

    def _resume_path(self) -> Path | None:
        """The checkpoint this run continues from, per train.resume (None: start fresh)."""
        resume = self.cfg.resume
        if resume == "never":
            if ckpt.find_resume(self.run_dir) is not None:  # lmforge train clears it first (train/run_folder.py)
                raise ValueError(f"train.out_dir: {self.run_dir} already holds a run (last/); with train.resume=never "
                                 f"use a new out_dir or delete the old one, or continue it with train.resume=auto")
            return None
        if resume == "auto":
            return self._newest_intact_checkpoint()
        path = Path(resume)
        if not (path / "train_state.pt").is_file():
            raise ValueError(f"train.resume: {path} has no train_state.pt (only last/ and step-NNNNNN/ can be resumed)")
        problem = ckpt.resume_problem(path)
        if problem is not None:
            raise ValueError(f"train.resume: {path} is damaged: {problem}")
        return path

    def _newest_intact_checkpoint(self) -> Path | None:
        """resume=auto: last/, or when it is damaged the newest step-NNNNNN/ that is intact, saying so."""
        path, damaged = ckpt.choose_resume(self.run_dir)
        if self.env.is_main:
            for folder, problem in damaged:
                tqdm.write(f"resume: {folder.name}/ is damaged ({problem}); skipping it")
        if damaged and path is None:
            raise ValueError(f"train.resume: no intact checkpoint in {self.run_dir}; start over with "
                             f"--train.resume=never or choose another out_dir")
        if damaged and self.env.is_main:
            tqdm.write(f"resume: falling back to {path.name}/, the newest intact checkpoint")
        return path

    def _resume_training_state(self, path: Path | None) -> Path | None:
        """Everything but the weights (loaded earlier): optimizer, counters, data position, random generators."""
        if path is None:
            return None
        state = ckpt.load_train_state(path)
        load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state["trainer"])
        saved_world = state.get("world_size", 1)
        self.train_batches.load_state_dict(data_position_for_world(
            state["data"], saved_world, self.env.world_size, self.train_batches.batches_per_epoch))
        restore_rng(rng_for_rank(state.get("rng_per_rank") or [state["rng"]], self.env.rank))
        if self.env.is_main:
            self._drop_samples_after(self.state.step)
            moved = "" if saved_world == self.env.world_size else f" (saved by {saved_world} processes)"
            tqdm.write(f"resumed from {path} at step {self.state.step}{moved}")
        return path

    def _open_metrics(self) -> MetricsLog:
        if self.resumed_from:
            return MetricsLog.resume(self.run_dir, self.state.step, self.cfg.tensorboard)
        return MetricsLog(self.run_dir, self.cfg.tensorboard)

    def _drop_samples_after(self, step: int) -> None:
        """Forget samples an interrupted session wrote after its last checkpoint (they will be redone)."""
        path = self.run_dir / "samples.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            # A line cut short by a crash mid-write is dropped too (its sample is redone with the others).
            kept = [line.rstrip("\n") + "\n" for line in lines if (n := _sample_step(line)) is not None and n <= step]
            path.write_text("".join(kept), encoding="utf-8")

    # ---- one optimizer step --------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """Forward/backward over grad_accum_steps micro-batches, then one optimizer step. Returns the loss (no sync).

        In a distributed run every rank does this on its own micro-batches; the returned loss is this rank's share.
        """
        cfg, state = self.cfg, self.state
        progress = decay_progress(state.step, self.total_steps, cfg.warmup_steps)
        lr = lr_at(state.step, cfg, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [self.train_batches.next_batch() for _ in range(cfg.grad_accum_steps)]
        n_targets, n_tokens = self._global_counts(micro_batches)
        total_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            batch = [_to_device(t, self.device) for t in batch]
            # Ranks exchange gradients once per step, in the last micro-batch's backward; before it they only add up.
            with gradient_sync(self.wrapped, enabled=i == len(micro_batches) - 1):
                with autocast(self.device, self.precision):
                    loss = self.loss_fn(self.forward_model, *batch) / n_targets.to(self.device)
                # DDP and FSDP average the ranks' gradients; times world_size turns that into their sum: the
                # gradient of the mean loss over the global batch, as one process holding all of it computes.
                self.scaler.scale(loss * self.env.world_size).backward()
            total_loss += loss.detach()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += n_tokens
        self.lr = lr
        return total_loss  # this rank's share of the step's mean loss: the ranks' shares add up to it

    def _global_counts(self, micro_batches: list) -> tuple[torch.Tensor, int]:
        """Target tokens (the loss's divisor) and input tokens of the whole step, over all ranks."""
        n_targets = sum(count_targets(batch[-1]) for batch in micro_batches)
        n_tokens = sum(batch[0].numel() for batch in micro_batches)
        if not self.env.is_distributed:
            return n_targets, n_tokens
        totals = sum_across_ranks(torch.stack([n_targets, torch.tensor(n_tokens)]).to(self.device))
        return totals[0], int(totals[1])

    # ---- evaluation and samples ----------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean per-token loss on up to eval_steps validation batches (None without validation data)."""
        if self.val_batches is None:
            return None
        # The module forward runs on (a DDP wrapper, a compiled model) has a training flag of its own, which an
        # objective reads to tell validation from training: switch that one (it switches the model inside).
        self.forward_model.eval()
        loss_sum, n = 0.0, 0
        batches = self.val_batches.eval_batches(self.cfg.eval_steps)
        # Each rank evaluates every world_size-th batch; the sums below add the ranks' parts.
        for batch, counts in round_robin(batches, self.env.rank, self.env.world_size):
            batch = [t.to(self.device) for t in batch]
            repeat = contextlib.nullcontext() if counts else statistics_left_out(self.loss_fn)  # see round_robin
            with autocast(self.device, self.precision), repeat:
                loss = self.loss_fn(self.forward_model, *batch)
            if counts:
                loss_sum += loss.item()
                n += int(count_targets(batch[-1]))
        self.forward_model.train()
        if self.env.is_distributed:
            totals = sum_across_ranks(torch.tensor([loss_sum, n], dtype=torch.float64, device=self.device))
            loss_sum, n = totals[0].item(), int(totals[1].item())
        return loss_sum / n if n else None

    def _benchmark_due(self, last: bool) -> bool:
        interval = self.cfg.eval_tasks_interval
        return self.benchmark is not None and (last or not interval or self.state.step % interval == 0)

    def run_benchmark(self) -> None:
        """Score train.eval_tasks on the current model (rank 0) and log them beside the losses."""
        model = self.full_model.gather()  # under fsdp every rank must take part
        if not self.env.is_main:
            return
        try:
            with evaluation_mode(model):
                rows = self.benchmark(model, self.tokenizer)
        finally:
            drop_packed_weights(model)  # the weights change with the next step
        if self.metrics is not None:
            self.metrics.log_benchmarks(self.state.step, rows)

    def write_samples(self) -> str:
        """Append a generation from the current model to samples.jsonl (rank 0; the text, or "" elsewhere)."""
        cfg = self.cfg
        model = self.full_model.gather()  # under fsdp every rank must take part
        if not self.env.is_main:
            return ""
        text = generate_text(model, self.tokenizer, cfg.sample_prompt, max_new_tokens=cfg.sample_tokens,
                             temperature=0.8, top_k=50, seed=cfg.seed + self.state.step)
        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.state.step, "prompt": cfg.sample_prompt, "text": text}) + "\n")
        return text

    # ---- checkpoints ---------------------------------------------------------------------------
    def _meta(self) -> dict:
        s = self.state
        return {"step": s.step, "epoch": self.train_batches.epoch_progress, "tokens_seen": s.tokens_seen,
                "train_loss": self.last_train_loss, "val_loss": self.last_val_loss,
                "best_val_loss": s.best_val_loss if math.isfinite(s.best_val_loss) else None,
                "best_step": s.best_step, "precision": self.precision,
                "world_size": self.env.world_size, "global_batch": self.global_batch}

    def save(self) -> None:
        """Write step-NNNNNN/ (with resume state), point last/ at it, prune old step folders.

        Every rank calls it (under fsdp the weights and optimizer state are gathered from all); rank 0 writes.
        """
        model = self.full_model.gather()
        optimizer_state = full_optimizer_state(self.model, self.optimizer)
        rng_states = gather_objects(capture_rng())  # each rank's dropout stream, to resume it exactly
        if not self.env.is_main:
            return
        train_state = {"optimizer": optimizer_state, "scaler": self.scaler.state_dict(),
                       "trainer": self.state.state_dict(), "data": self.train_batches.state_dict(),
                       "rng": rng_states[0], "schedule": {"step": self.state.step, "total_steps": self.total_steps},
                       "world_size": self.env.world_size}
        if self.env.is_distributed:
            train_state["rng_per_rank"] = rng_states
        step_dir = ckpt.save_checkpoint(self.run_dir, f"step-{self.state.step:06d}", model, self.tokenizer,
                                        self._meta(), train_state, self.model_files)
        ckpt.link_checkpoint(step_dir, "last")
        ckpt.prune_step_checkpoints(self.run_dir, self.cfg.keep_last)

    def _after_validation(self, val_loss: float) -> None:
        """Best-model tracking and the early-stopping counter."""
        s = self.state
        if val_loss < s.best_val_loss:  # the same on every rank: val_loss is summed over all of them
            s.best_val_loss, s.best_step, s.evals_since_best = val_loss, s.step, 0
            model = self.full_model.gather()
            if self.env.is_main:
                ckpt.save_checkpoint(self.run_dir, "best", model, self.tokenizer, self._meta(), files=self.model_files)
        else:
            s.evals_since_best += 1

    # ---- the loop ------------------------------------------------------------------------------
    def _agree_across_ranks(self, stop: StopRequested) -> None:
        """After each step every rank adopts the slowest rank's clock and any rank's stop signal.

        Ranks must take the same decisions -- stop at max_time, the learning rate of a time-based decay,
        stop on Ctrl-C -- or one leaves the loop while the others wait for it forever at a collective.
        """
        if not self.env.is_distributed:
            return
        signum = signal.Signals[stop.signal_name].value if stop.signal_name else 0
        agreed = max_across_ranks(torch.tensor([self.state.elapsed, signum], dtype=torch.float64, device=self.device))
        elapsed, signum = agreed.tolist()
        self.state.elapsed = elapsed
        self._agreed_signal = signal.Signals(int(signum)).name if signum else None

    def _signal_name(self, stop: StopRequested) -> str | None:
        """The stop signal to act on: this process's own, or in a distributed run the one all ranks agreed on."""
        return self._agreed_signal if self.env.is_distributed else stop.signal_name

    def _stop_reason(self, stop: StopRequested) -> str | None:
        cfg, s = self.cfg, self.state
        signal_name = self._signal_name(stop)
        if signal_name:
            return f"interrupted ({signal_name})"
        if cfg.max_steps is not None and s.step >= cfg.max_steps:
            return "max_steps reached"
        if cfg.epochs is not None and self.train_batches.epoch_progress >= cfg.epochs:
            return "epochs reached"
        if s.fitted_steps is not None and s.step >= s.fitted_steps:
            return f"max_time reached: the {s.fitted_steps} steps fitted to the {cfg.max_time:g} s budget are done"
        if cfg.max_time is not None and s.elapsed >= cfg.max_time:
            return "max_time reached" + (f" at step {s.step} of the {s.fitted_steps} fitted (the run slowed down)"
                                         if s.fitted_steps is not None else "")
        if cfg.early_stopping_patience is not None and s.evals_since_best >= cfg.early_stopping_patience:
            return f"early stopping (no better val loss in {cfg.early_stopping_patience} evaluations)"
        return None

    def fit(self) -> TrainResult:
        cfg, s = self.cfg, self.state
        self.forward_model.train()
        bar = progress_bar(total=self.total_steps, initial=s.step, desc="train", unit="step", dynamic_ncols=True,
                           disable=not self.env.is_main)
        window_loss, window_steps = torch.zeros((), device=self.device), 0
        window_start, window_tokens = time.perf_counter(), s.tokens_seen
        session_start, elapsed_before = time.perf_counter(), s.elapsed
        clock = StepClock() if cfg.max_time is not None and not s.rechecked else None
        with StopRequested(announce=self.env.is_main) as stop:
            stop_reason = self._stop_reason(stop)
            if stop_reason is not None and self.env.is_main:  # a resumed run that had already finished
                tqdm.write(f"nothing to train: {stop_reason} at step {s.step}. Raise the limit to continue, "
                           f"or start over with --train.resume=never")
            while stop_reason is None:
                window_loss += self.train_step()
                window_steps += 1
                s.elapsed = elapsed_before + time.perf_counter() - session_start  # wall time, evals included
                self._agree_across_ranks(stop)
                fit_now = clock is not None and s.fitted_steps is None and clock.ready_to_fit(
                    s.step, s.elapsed, cfg.max_time)
                if clock is not None:
                    clock.observe(s.step, s.elapsed)
                    if s.fitted_steps is not None and s.step == recheck_step(s.fitted_at, s.fitted_steps):
                        self._recheck_time_budget(clock)
                        clock, bar.total = None, self.total_steps
                stop_reason = self._stop_reason(stop)
                last = stop_reason is not None
                evaluate = s.step % cfg.eval_interval == 0 or last or fit_now
                eval_seconds = sample_seconds = 0.0
                if s.step % cfg.log_interval == 0 or evaluate:
                    # The only host sync of a step (in one process); the ranks' shares add up to the mean loss.
                    self.last_train_loss = sum_across_ranks(window_loss).item() / window_steps
                    if not math.isfinite(self.last_train_loss):
                        stop_reason = f"diverged: train loss is {self.last_train_loss} at step {s.step}"
                        self._log(None, tokens_per_sec=None)
                        break
                    now = time.perf_counter()
                    tokens_per_sec = (s.tokens_seen - window_tokens) / max(now - window_start, 1e-9)
                    val_loss = self.validate() if evaluate else None
                    if evaluate and self._benchmark_due(last):
                        self.run_benchmark()
                    eval_seconds = time.perf_counter() - now
                    if val_loss is not None:
                        self.last_val_loss = val_loss
                        self._after_validation(val_loss)
                    self._log(val_loss, tokens_per_sec)
                    bar.set_postfix(loss=f"{self.last_train_loss:.4f}", lr=f"{self.lr:.2e}",
                                    tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                    window_loss, window_steps = torch.zeros((), device=self.device), 0
                    window_start, window_tokens = time.perf_counter(), s.tokens_seen
                    stop_reason = stop_reason or self._stop_reason(stop)  # early stopping reacts to this eval
                if cfg.sample_interval and (s.step % cfg.sample_interval == 0 or fit_now):
                    started = time.perf_counter()
                    self.write_samples()
                    sample_seconds = time.perf_counter() - started
                if fit_now:
                    self._fit_to_time_budget(clock, eval_seconds, sample_seconds)
                    clock = StepClock()  # measures the speed since the fit, for the half-way check
                    bar.total = self.total_steps
                    stop_reason = stop_reason or self._stop_reason(stop)
                if s.step % cfg.save_interval == 0 or stop_reason:
                    self.save()
                bar.update(1)
        bar.close()
        return self._finish(stop_reason)

    def _fit_to_time_budget(self, clock: StepClock, eval_seconds: float, sample_seconds: float) -> None:
        """Turn train.max_time into the run's length in steps, once (see budget.py): from the measured speed
        of the steps so far, one evaluation and one sample just timed, and estimates for checkpoints and
        the final report (which is written now once, timed, and rewritten at the end)."""
        cfg, s = self.cfg, self.state
        report_seconds = 0.0
        if self.env.is_main:
            started = time.perf_counter()
            self._write_report()
            report_seconds = time.perf_counter() - started
        work = PeriodicWork(eval_seconds=eval_seconds, eval_interval=cfg.eval_interval,
                            sample_seconds=sample_seconds, sample_interval=cfg.sample_interval,
                            save_seconds=self._save_seconds(), save_interval=cfg.save_interval,
                            report_seconds=report_seconds)
        seconds_per_step = clock.seconds_per_step(s.step, s.elapsed)
        fitted = self._shortest_plan(fit_total_steps(s.step, s.elapsed, cfg.max_time, seconds_per_step, work))
        s.fitted_steps, s.fitted_at, self._final_seconds = fitted, s.step, work.at_the_end()
        self.total_steps = self._total_steps()
        if self.env.is_main:
            tqdm.write(f"time budget: {seconds_per_step * 1000:.0f} ms/step measured over "
                       f"{clock.measured_steps(s.step)} steps; {cfg.max_time:g} s fit {fitted} steps "
                       f"(evaluations, samples, checkpoints and the final report included); "
                       f"the learning rate decays to min_lr at the last one")

    def _recheck_time_budget(self, clock: StepClock) -> None:
        """Half-way from the fit to the planned end, plan again from the speed since the fit (budget.py)."""
        cfg, s = self.cfg, self.state
        if clock.measured_steps(s.step) < MIN_MEASURED_STEPS_SLOW:  # too few steps since the fit to say more
            s.rechecked = True
            return
        seconds_per_step = clock.seconds_per_step(s.step, s.elapsed)
        # A resumed session did not time the final work: estimate it as a few steps, a checkpoint and a report.
        final_seconds = self._final_seconds
        if final_seconds is None:
            final_seconds = 4 * seconds_per_step + self._save_seconds() + 1.0
        corrected = self._shortest_plan(corrected_total_steps(s.fitted_steps, s.step, s.elapsed, cfg.max_time,
                                                              seconds_per_step, final_seconds))
        if corrected != s.fitted_steps and self.env.is_main:
            tqdm.write(f"time budget: checked half-way at step {s.step}: {seconds_per_step * 1000:.0f} ms/step since "
                       f"the fit; the plan is now {corrected} steps instead of {s.fitted_steps}")
        s.fitted_steps, s.rechecked = corrected, True
        self.total_steps = self._total_steps()

    def _save_seconds(self) -> float:
        return estimate_save_seconds(sum(p.numel() for p in self.model.parameters()))

    def _shortest_plan(self, steps: int) -> int:
        """The ranks timed different things: all of them take the shortest plan (one process: its own)."""
        if not self.env.is_distributed:
            return steps
        negated = torch.tensor([-steps], dtype=torch.float64, device=self.device)
        return -int(max_across_ranks(negated).item())

    def _write_report(self) -> str:
        """Plots and diagnosis.txt from the metrics so far (rank 0); returns the diagnosis verdict."""
        metrics = self.metrics.to_dict()
        write_plots(self.run_dir, metrics)
        # With dropout on, the train loss (measured with it) sits above validation; the diagnosis must know.
        dropout = max((m.p for m in self.model.modules() if isinstance(m, torch.nn.Dropout)), default=0.0)
        return write_diagnosis(self.run_dir, metrics, dropout=dropout).verdict

    def _log(self, val_loss: float | None, tokens_per_sec: float | None) -> None:
        # An objective may keep statistics of its own (DPO: rewards and their accuracy); every rank takes
        # them, and they are gathered so that the means rank 0 logs cover every rank's examples.
        take_metrics = getattr(self.loss_fn, "take_metrics", None)
        objective = take_metrics(gather_objects) if take_metrics is not None else {}
        if self.metrics is None:  # not rank 0
            return
        self.metrics.log_objective(self.state.step, objective)
        self.metrics.log(step=self.state.step, epoch=self.train_batches.epoch_progress,
                         train_loss=self.last_train_loss, learning_rate=self.lr,
                         tokens_seen=self.state.tokens_seen, tokens_per_sec=tokens_per_sec,
                         grad_norm=float(self.grad_norm), val_loss=val_loss)

    def _finish(self, stop_reason: str) -> TrainResult:
        finite = self.last_train_loss is not None and math.isfinite(self.last_train_loss)
        if self.cfg.sample_interval and self.state.step % self.cfg.sample_interval and finite:
            self.write_samples()  # every run ends with a sample of its final model
        verdict = ""
        if self.env.is_main:
            self.metrics.close()
            verdict = self._write_report()
        barrier()  # no rank returns before rank 0 has written everything (what comes next may read it)
        s = self.state
        return TrainResult(run_dir=self.run_dir, steps=s.step, stop_reason=stop_reason,
                           train_loss=self.last_train_loss, val_loss=self.last_val_loss,
                           best_val_loss=s.best_val_loss if math.isfinite(s.best_val_loss) else None,
                           best_step=s.best_step, elapsed=s.elapsed, verdict=verdict)


def _sample_step(line: str) -> int | None:
    """The step of one samples.jsonl line, or None for a line that is not a whole JSON record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch tensor on the training device. To a GPU it goes from page-locked (pinned) memory, so the copy
    runs asynchronously and the host does not wait for it; on CPU it is the tensor itself."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
