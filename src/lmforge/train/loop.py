"""The training loop: the only one in lmforge. Pretraining and (later) fine-tuning both run here.

One optimizer step:  fetch k micro-batches -> forward + backward each (loss divided by the target
tokens of all k) -> clip the gradient norm -> AdamW step with the scheduled learning rate.
Around it: logging, validation, best-model tracking, early stopping, samples, checkpoints, and a
clean stop on Ctrl-C / SIGTERM or a NaN loss.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..generate.engine import generate_text
from ..utils.device import autocast
from . import checkpoint as ckpt
from .config import TrainConfig
from .diagnose import write_diagnosis
from .metrics import MetricsLog
from .objectives import count_targets, lm_loss_sum
from .optim import build_optimizer, decay_progress, lr_at
from .plots import write_plots
from .state import TrainState, capture_rng, restore_rng


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

    def __init__(self):
        self.signal_name: str | None = None
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
        tqdm.write(f"\n{self.signal_name} received: finishing this step and saving last/ (press again to abort)")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, model, tokenizer, train_batches, val_batches, cfg: TrainConfig, run_dir: str | Path,
                 device: torch.device, precision: str, loss_fn=lm_loss_sum, model_files=None):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.train_batches, self.val_batches = train_batches, val_batches
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device, self.precision, self.loss_fn = device, precision, loss_fn
        # How checkpoints store the model: all weights by default; fine-tuning may store less (LoRA adapters).
        self.model_files = model_files or ckpt.FullWeights()
        self.model.to(device)
        self.forward_model = torch.compile(model) if cfg.compile else model
        self.optimizer = build_optimizer(model, cfg, device)
        # fp16 has a narrow range: scale the loss up so small gradients do not flush to zero.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.state = TrainState()
        self.total_steps = self._total_steps()
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self.resumed_from = self._maybe_resume()
        self.metrics = (MetricsLog.resume(self.run_dir, self.state.step, cfg.tensorboard) if self.resumed_from
                        else MetricsLog(self.run_dir, cfg.tensorboard))

    # ---- setup ---------------------------------------------------------------------------------
    def _total_steps(self) -> int | None:
        """Length of the run in optimizer steps when known (it sets the LR schedule's horizon)."""
        by_epochs = None
        if self.cfg.epochs is not None:
            by_epochs = math.ceil(self.cfg.epochs * self.train_batches.batches_per_epoch / self.cfg.grad_accum_steps)
        known = [n for n in (self.cfg.max_steps, by_epochs) if n is not None]
        return min(known) if known else None

    def _maybe_resume(self) -> Path | None:
        resume = self.cfg.resume
        if resume == "never":
            if ckpt.find_resume(self.run_dir) is not None:
                raise ValueError(f"train.out_dir: {self.run_dir} already holds a run (last/); with train.resume=never "
                                 f"use a new out_dir or delete the old one, or continue it with train.resume=auto")
            return None
        path = ckpt.find_resume(self.run_dir) if resume == "auto" else Path(resume)
        if path is None:
            return None
        if not (path / "train_state.pt").is_file():
            raise ValueError(f"train.resume: {path} has no train_state.pt (only last/ and step-NNNNNN/ can be resumed)")
        self.model_files.load(self.model, path)
        state = ckpt.load_train_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state["trainer"])
        self.train_batches.load_state_dict(state["data"])
        restore_rng(state["rng"])
        self._drop_samples_after(self.state.step)
        tqdm.write(f"resumed from {path} at step {self.state.step}")
        return path

    def _drop_samples_after(self, step: int) -> None:
        """Forget samples an interrupted session wrote after its last checkpoint (they will be redone)."""
        path = self.run_dir / "samples.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step), encoding="utf-8")

    # ---- one optimizer step --------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """Forward/backward over grad_accum_steps micro-batches, then one optimizer step. Returns the loss (no sync)."""
        cfg, state = self.cfg, self.state
        progress = decay_progress(state.step, self.total_steps, cfg.warmup_steps, state.elapsed, cfg.max_time)
        lr = lr_at(state.step, cfg, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [self.train_batches.next_batch() for _ in range(cfg.grad_accum_steps)]
        n_targets = sum(count_targets(batch[-1]) for batch in micro_batches)
        total_loss = torch.zeros((), device=self.device)
        for batch in micro_batches:
            batch = [t.to(self.device, non_blocking=True) for t in batch]
            with autocast(self.device, self.precision):
                loss = self.loss_fn(self.forward_model, *batch) / n_targets.to(self.device)
            self.scaler.scale(loss).backward()
            total_loss += loss.detach()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += sum(batch[0].numel() for batch in micro_batches)
        self.lr = lr
        return total_loss

    # ---- evaluation and samples ----------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean per-token loss on up to eval_steps validation batches (None without validation data)."""
        if self.val_batches is None:
            return None
        self.model.eval()
        loss_sum, n = 0.0, 0
        for batch in self.val_batches.eval_batches(self.cfg.eval_steps):
            batch = [t.to(self.device) for t in batch]
            with autocast(self.device, self.precision):
                loss_sum += self.loss_fn(self.forward_model, *batch).item()
            n += int(count_targets(batch[-1]))
        self.model.train()
        return loss_sum / n if n else None

    def write_samples(self) -> str:
        cfg = self.cfg
        text = generate_text(self.model, self.tokenizer, cfg.sample_prompt, max_new_tokens=cfg.sample_tokens,
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
                "best_step": s.best_step, "precision": self.precision}

    def save(self) -> None:
        """Write step-NNNNNN/ (with resume state), point last/ at it, prune old step folders."""
        train_state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                       "trainer": self.state.state_dict(), "data": self.train_batches.state_dict(),
                       "rng": capture_rng(), "schedule": {"step": self.state.step, "total_steps": self.total_steps}}
        step_dir = ckpt.save_checkpoint(self.run_dir, f"step-{self.state.step:06d}", self.model, self.tokenizer,
                                        self._meta(), train_state, self.model_files)
        ckpt.link_checkpoint(step_dir, "last")
        ckpt.prune_step_checkpoints(self.run_dir, self.cfg.keep_last)

    def _after_validation(self, val_loss: float) -> None:
        """Best-model tracking and the early-stopping counter."""
        s = self.state
        if val_loss < s.best_val_loss:
            s.best_val_loss, s.best_step, s.evals_since_best = val_loss, s.step, 0
            ckpt.save_checkpoint(self.run_dir, "best", self.model, self.tokenizer, self._meta(),
                                 files=self.model_files)
        else:
            s.evals_since_best += 1

    # ---- the loop ------------------------------------------------------------------------------
    def _stop_reason(self, stop: StopRequested) -> str | None:
        cfg, s = self.cfg, self.state
        if stop.signal_name:
            return f"interrupted ({stop.signal_name})"
        if cfg.max_steps is not None and s.step >= cfg.max_steps:
            return "max_steps reached"
        if cfg.epochs is not None and self.train_batches.epoch_progress >= cfg.epochs:
            return "epochs reached"
        if cfg.max_time is not None and s.elapsed >= cfg.max_time:
            return "max_time reached"
        if cfg.early_stopping_patience is not None and s.evals_since_best >= cfg.early_stopping_patience:
            return f"early stopping (no better val loss in {cfg.early_stopping_patience} evaluations)"
        return None

    def fit(self) -> TrainResult:
        cfg, s = self.cfg, self.state
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=s.step, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 15.0)
        window_loss, window_steps = torch.zeros((), device=self.device), 0
        window_start, window_tokens = time.perf_counter(), s.tokens_seen
        session_start, elapsed_before = time.perf_counter(), s.elapsed
        with StopRequested() as stop:
            stop_reason = self._stop_reason(stop)
            if stop_reason is not None:  # a resumed run that had already finished
                tqdm.write(f"nothing to train: {stop_reason} at step {s.step}. Raise the limit to continue, "
                           f"or start over with --train.resume=never")
            while stop_reason is None:
                window_loss += self.train_step()
                window_steps += 1
                s.elapsed = elapsed_before + time.perf_counter() - session_start  # wall time, evals included
                stop_reason = self._stop_reason(stop)
                last = stop_reason is not None
                evaluate = s.step % cfg.eval_interval == 0 or last
                if s.step % cfg.log_interval == 0 or evaluate:
                    self.last_train_loss = window_loss.item() / window_steps  # the only host sync of a step
                    if not math.isfinite(self.last_train_loss):
                        stop_reason = f"diverged: train loss is {self.last_train_loss} at step {s.step}"
                        self._log(None, tokens_per_sec=None)
                        break
                    now = time.perf_counter()
                    tokens_per_sec = (s.tokens_seen - window_tokens) / max(now - window_start, 1e-9)
                    val_loss = self.validate() if evaluate else None
                    if val_loss is not None:
                        self.last_val_loss = val_loss
                        self._after_validation(val_loss)
                    self._log(val_loss, tokens_per_sec)
                    bar.set_postfix(loss=f"{self.last_train_loss:.4f}", lr=f"{self.lr:.2e}",
                                    tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                    window_loss, window_steps = torch.zeros((), device=self.device), 0
                    window_start, window_tokens = time.perf_counter(), s.tokens_seen
                    stop_reason = stop_reason or self._stop_reason(stop)  # early stopping reacts to this eval
                if cfg.sample_interval and s.step % cfg.sample_interval == 0:
                    self.write_samples()
                if s.step % cfg.save_interval == 0 or stop_reason:
                    self.save()
                bar.update(1)
        bar.close()
        return self._finish(stop_reason)

    def _log(self, val_loss: float | None, tokens_per_sec: float | None) -> None:
        self.metrics.log(step=self.state.step, epoch=self.train_batches.epoch_progress,
                         train_loss=self.last_train_loss, learning_rate=self.lr,
                         tokens_seen=self.state.tokens_seen, tokens_per_sec=tokens_per_sec,
                         grad_norm=float(self.grad_norm), val_loss=val_loss)

    def _finish(self, stop_reason: str) -> TrainResult:
        finite = self.last_train_loss is not None and math.isfinite(self.last_train_loss)
        if self.cfg.sample_interval and self.state.step % self.cfg.sample_interval and finite:
            self.write_samples()  # every run ends with a sample of its final model
        self.metrics.close()
        metrics = self.metrics.to_dict()
        write_plots(self.run_dir, metrics)
        diagnosis = write_diagnosis(self.run_dir, metrics)
        s = self.state
        return TrainResult(run_dir=self.run_dir, steps=s.step, stop_reason=stop_reason,
                           train_loss=self.last_train_loss, val_loss=self.last_val_loss,
                           best_val_loss=s.best_val_loss if math.isfinite(s.best_val_loss) else None,
                           best_step=s.best_step, elapsed=s.elapsed, verdict=diagnosis.verdict)
