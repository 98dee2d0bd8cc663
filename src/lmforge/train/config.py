"""TrainConfig: how long to train, how big a step is, and how the learning rate moves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    """The optimisation: steps, batches, learning rate, precision, evaluation and checkpoints."""

    out_dir: str = field(default="checkpoints", metadata={"help": "run directory: checkpoints, metrics, plots"})
    # ---- how long
    max_steps: int | None = field(default=1000, metadata={"help": "stop after this many optimizer steps"})
    epochs: float | None = field(default=None, metadata={"help": "stop after this many passes over the training data"})
    max_time: float | None = field(default=None, metadata={
        "help": "wall-clock budget in seconds for the whole run (data preparation, training, final evaluation, "
                "samples and checkpoint): the first steps are timed and the run's step count is fitted to it, "
                "so the learning-rate schedule ends at min_lr when the time is up"})
    # ---- batch
    batch_size: int = field(default=16, metadata={"help": "sequences per micro-batch"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches summed into one optimizer step"})
    # ---- optimizer and schedule
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (reached after warmup)"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the end of the decay"})
    warmup_steps: int = field(default=50, metadata={"help": "steps of linear warmup from 0 to lr"})
    schedule: Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "decay from lr to min_lr after warmup"})
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = field(default="adamw", metadata={
        "help": "adamw; or bitsandbytes' 8-bit AdamW (moments in 8 bits: 4x less optimizer memory), paged = CUDA only"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decoupled weight decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (momentum)"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (second-moment decay)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this; 0 = off"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "auto picks bf16 autocast where it helps, else fp32; fp16 needs CUDA"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (slow first step)"})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each block's activations in backward instead of storing them: less memory, ~30% slower"})
    reuse_memory: bool = field(default=True, metadata={
        "help": "CPU: keep freed memory in the process (glibc malloc) instead of page-faulting big tensors in "
                "every step: faster, a few % more peak memory"})
    # ---- evaluation, samples, early stopping
    eval_interval: int = field(default=100, metadata={"help": "validate every N steps"})
    eval_steps: int = field(default=20, metadata={"help": "validation batches per evaluation"})
    log_interval: int = field(default=10, metadata={"help": "log train loss every N steps"})
    sample_interval: int = field(default=250, metadata={"help": "write sample generations every N steps; 0 = off"})
    sample_prompt: str = field(default="", metadata={"help": "prompt for samples ('' = start of a document)"})
    sample_tokens: int = field(default=128, metadata={"help": "tokens per sample"})
    eval_tasks: str = field(default="", metadata={
        "help": "lm-evaluation-harness tasks to score during training, comma-separated (e.g. lmforge-quick); "
                "'' = none. Needs pip install 'lmforge[lmeval]' (docs/evaluation.md)"})
    eval_tasks_limit: int = field(default=50, metadata={"help": "examples per task at each benchmark"})
    eval_tasks_interval: int = field(default=0, metadata={
        "help": "benchmark every N steps (on an evaluation step) and at the end; 0 = at every evaluation"})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "stop after this many evaluations without a better val loss; null = off"})
    # ---- checkpoints
    save_interval: int = field(default=500, metadata={"help": "write step-NNNNNN/ and last/ every N steps"})
    keep_last: int = field(default=3, metadata={"help": "step-NNNNNN/ folders to keep (older ones are deleted)"})
    resume: str = field(default="auto", metadata={
        "help": "auto = continue from out_dir/last if present; never = start fresh; or a checkpoint path"})
    seed: int = field(default=1337, metadata={"help": "random seed (weights, data order, dropout)"})
    tensorboard: bool = field(default=False, metadata={"help": "also write TensorBoard event files"})

    def validate(self) -> None:
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            raise ValueError("set at least one of max_steps, epochs or max_time, or the run never ends")
        for name in ("max_steps", "epochs", "max_time"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be positive (or null), got {value}")
        positive = ["batch_size", "grad_accum_steps", "eval_interval", "eval_steps", "log_interval", "save_interval"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"min_lr: need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0 or self.keep_last < 0 or self.sample_interval < 0:
            raise ValueError("warmup_steps, keep_last and sample_interval cannot be negative")
