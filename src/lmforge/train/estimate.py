"""Before training: how big is the model, how much memory will a step need, how long will it take?

Memory of one training step, in the order the bytes appear:

  weights      every parameter, 4 bytes (fp32 master weights, also under bf16 autocast)
  gradients    one per trainable parameter, 4 bytes
  optimizer    AdamW keeps two moments per trainable parameter: 8 bytes (8-bit AdamW: 2 bytes)
  activations  what the forward pass keeps for the backward pass. Per block and token, the inputs
               of every matmul and nonlinearity: norm inputs and outputs (4C), q, k, v and the
               attention output (4C), the MLP's hidden activations (2 x hidden, 3-4 x hidden for
               SwiGLU) -- about 16C numbers for a GPT-2 block. Then the logits: B x T x V numbers,
               whose log-softmax cross-entropy keeps, plus their gradient in the backward pass (2 copies).
               bf16 autocast stores most of them in 2 bytes instead of 4.
  runtime      the Python process and its libraries (about 300 MB for torch on CPU)

Time of one step: a training step costs about 6 FLOPs per parameter per token (2 forward, 4
backward) plus attention's 12 x layers x context x width per token (the estimate of the PaLM paper
and nanoGPT). Dividing by the machine's matmul speed (measured here on a square matmul) times the
share of it that real training reaches (MFU, assumed below) gives the step time.

Numbers are estimates: check them against a measured run (docs/estimate.md shows one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..model.chunked_loss import chunk_rows, worth_chunking
from ..model.config import ModelConfig
from ..model.gpt import GPT
from .config import TrainConfig

RUNTIME_BYTES = 300 * 2**20
# Typical shares of the matmul ceiling that training reaches (MFU). CPU fp32: GPT-2 124M at batch 4 x 256
# measured 4.7 s/step = 45% of 372 GFLOP/s on a 2-core Xeon; bf16 reaches a smaller share of its much
# higher ceiling (casts and non-matmul work do not speed up). GPU: a common figure for a good run.
ASSUMED_MFU = {("cpu", "fp32"): 0.6, ("cpu", "bf16"): 0.2, ("cuda", "bf16"): 0.4, ("cuda", "fp16"): 0.4,
               ("cuda", "fp32"): 0.4}
LOGIT_COPIES = 2  # at the peak: the log-softmax cross-entropy saved, and the gradient of the logits


@dataclass
class Estimate:
    params: int
    trainable_params: int
    non_embedding_params: int
    tokens_per_step: int
    memory: dict[str, int] = field(default_factory=dict)  # bytes by part
    flops_per_step: float = 0.0
    matmul_flops_per_s: float = 0.0
    assumed_mfu: float = 0.0
    step_seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(self.memory.values())


def count_params(model_cfg: ModelConfig) -> tuple[int, int]:
    """(all, non-embedding) parameters, from a model built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    return model.num_params(), model.num_params(exclude_embeddings=True)


def activation_bytes(model_cfg: ModelConfig, batch: int, precision: str, checkpointing: bool = False) -> int:
    """Bytes the forward pass of one micro-batch keeps for the backward pass (see the module docstring)."""
    tokens = batch * model_cfg.block_size
    width, hidden, vocab = model_cfg.n_embd, model_cfg.hidden_dim, model_cfg.vocab_size
    mlp = (4 if model_cfg.mlp == "swiglu" else 2) * hidden
    per_token_per_block = 8 * width + mlp
    if model_cfg.dropout > 0:
        per_token_per_block += 3 * width  # dropout masks (1 byte each, counted loosely as numbers)
    element = 2 if precision in ("bf16", "fp16") else 4
    if checkpointing:  # each block keeps its input; one block at a time is rebuilt in backward
        blocks = (model_cfg.n_layer * width + per_token_per_block) * tokens * element
    else:
        blocks = model_cfg.n_layer * tokens * per_token_per_block * element
    if worth_chunking(tokens, vocab):
        # model/chunked_loss.py: one chunk of fp32 log-probabilities and its 16/32-bit copy, and the
        # gradients of the hidden states and of the output weight, instead of all the logits
        logits = chunk_rows(vocab) * vocab * (4 + element) + tokens * width * 4 + vocab * width * element
    else:
        logits = LOGIT_COPIES * tokens * vocab * 4  # the loss is computed in fp32
    return blocks + logits


def flops_per_token(model_cfg: ModelConfig, params: int) -> float:
    attention = 12 * model_cfg.n_layer * model_cfg.block_size * model_cfg.n_embd
    return 6 * params + attention


def matmul_flops_per_s(device: torch.device, precision: str, size: int = 2048) -> float:
    """Measured FLOP/s of a square matmul in the run's precision on `device` (best of a few, after a warm-up)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up: thread pools and kernel choice
    best = math.inf
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def estimate_run(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device, precision: str,
                 matmul_speed: float | None = None) -> Estimate:
    """Parameters, memory and step time of a training run with these configs on `device`."""
    params, non_embedding = count_params(model_cfg)
    micro_tokens = train_cfg.batch_size * model_cfg.block_size
    step_tokens = micro_tokens * train_cfg.grad_accum_steps
    optimizer_bytes = 2 if train_cfg.optimizer != "adamw" else 8
    memory = {
        "weights": 4 * params,
        "gradients": 4 * params,
        "optimizer": optimizer_bytes * params,
        "activations": activation_bytes(model_cfg, train_cfg.batch_size, precision,
                                        train_cfg.activation_checkpointing),
    }
    if precision in ("bf16", "fp16"):
        memory["weight copies"] = 2 * params  # autocast keeps 16-bit copies of the weights for the step
    if device.type == "cpu":
        memory["runtime"] = RUNTIME_BYTES
    speed = matmul_speed if matmul_speed is not None else matmul_flops_per_s(device, precision)
    mfu = ASSUMED_MFU.get((device.type, precision), 0.3)
    flops = flops_per_token(model_cfg, params) * step_tokens
    return Estimate(params=params, trainable_params=params, non_embedding_params=non_embedding,
                    tokens_per_step=step_tokens, memory=memory, flops_per_step=flops,
                    matmul_flops_per_s=speed, assumed_mfu=mfu, step_seconds=flops / (speed * mfu))


def suggest_batch(model_cfg: ModelConfig, train_cfg: TrainConfig, precision: str, budget_bytes: int,
                  fixed_bytes: int) -> tuple[int, int] | None:
    """The largest micro-batch whose activations fit `budget_bytes` next to `fixed_bytes`, and the
    accumulation that keeps the configured batch (batch_size x grad_accum_steps); None if even 1 does not fit."""
    one, two = (activation_bytes(model_cfg, b, precision, train_cfg.activation_checkpointing) for b in (1, 2))
    per_sequence = max(1, two - one)  # what each further sequence adds (the chunked loss has a fixed part)
    room = budget_bytes - fixed_bytes - (one - per_sequence)
    if room < per_sequence:
        return None
    wanted = train_cfg.batch_size * train_cfg.grad_accum_steps
    micro = min(wanted, room // per_sequence)
    return int(micro), math.ceil(wanted / micro)


def available_memory(device: torch.device) -> int:
    """Bytes the run may use: free GPU memory, or the machine's available RAM on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the available memory (/proc/meminfo)")
