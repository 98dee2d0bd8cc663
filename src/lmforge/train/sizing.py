"""Sizing a model to a time budget: a short speed probe picks the width and depth (model.fit_to_budget).

With a fixed budget of compute, a model can be too big as well as too small: a big one sees too few
tokens to learn from, a small one runs out of capacity. Chinchilla (Hoffmann et al., 2022) found that
for a compute-optimal run the tokens trained on should grow with the parameters, about 20 tokens per
parameter. So the probe times a few training steps of each model on a ladder of GPT-2-style shapes,
from small up, works out how many tokens each would see in the budget, and keeps the largest one that
still gets at least TOKENS_PER_PARAM tokens per (non-embedding) parameter. A slow laptop gets a small
model, a fast server a bigger one, each in the same minutes (the idea behind nanochat's speedrun, which
sizes its model by depth for the compute it has).

Measured on the demo (2-core AVX2 CPU, 130 s budgets): a 3 x 96 model reached a validation loss of
4.69 where the 4 x 128 default reached 5.00 (docs/optimization.md).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch

from ..model.config import ModelConfig
from ..model.gpt import GPT
from ..utils.device import autocast
from .objectives import lm_loss_sum

# (n_layer, n_embd) from small to large; heads are 32 wide, as in the gpt2-tiny preset.
SIZE_LADDER = ((2, 64), (3, 96), (4, 128), (6, 192), (8, 256), (12, 384))
HEAD_DIM = 32
TOKENS_PER_PARAM = 20
WARMUP_STEPS = 2         # untimed steps per candidate: the first ones allocate memory and choose kernels
PROBE_STEPS = 3          # timed steps per candidate and precision; their median is the step time
TRAINING_SHARE = 0.8     # of the budget left after the probe: the rest goes to evaluations, samples, the report
clock = time.perf_counter


@dataclass
class SizeTrial:
    n_layer: int
    n_embd: int
    params: int                # outside the embeddings
    timings: dict[str, float]  # seconds per step in each precision tried
    tokens_in_budget: float    # at the fastest of them

    @property
    def precision(self) -> str:
        """The precision this shape trained fastest in."""
        return min(self.timings, key=self.timings.get)

    @property
    def seconds_per_step(self) -> float:
        return self.timings[self.precision]

    @property
    def tokens_per_param(self) -> float:
        return self.tokens_in_budget / self.params


def ladder_config(base: ModelConfig, n_layer: int, n_embd: int) -> ModelConfig:
    return replace(base, n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // HEAD_DIM), n_kv_head=None,
                   mlp_hidden=None)


def pick_model_size(base: ModelConfig, batch: tuple[torch.Tensor, torch.Tensor], seconds_left: float,
                    make_optimizer, step_tokens: int, device: torch.device = torch.device("cpu"),
                    precisions: tuple[str, ...] = ("fp32",)) -> tuple[ModelConfig, list[SizeTrial]]:
    """The largest ladder shape that sees TOKENS_PER_PARAM tokens per parameter in `seconds_left`.

    `batch` is one real micro-batch (inputs, targets); `make_optimizer(model)` builds the run's optimizer;
    `step_tokens` is the tokens of one optimizer step; `precisions` are the ones the run may train in
    (train/precision.py `candidate_precisions`): each shape is timed in each and counted at the fastest,
    the precision the run then trains in. Timing only fp32 made an AMX Xeon, where bf16 ran these
    models' training steps 1.1-1.2x faster, pick a smaller model than it could train.
    Returns the chosen config and every trial, in order.
    """
    started, trials = clock(), []
    for n_layer, n_embd in SIZE_LADDER:
        config = ladder_config(base, n_layer, n_embd)
        timed = {p: _time_steps(config, batch, make_optimizer, device, p) for p in precisions}
        timings = {p: seconds for p, (seconds, _) in timed.items()}
        model_params = next(iter(timed.values()))[1]
        budget = (seconds_left - (clock() - started)) * TRAINING_SHARE
        trials.append(SizeTrial(n_layer, n_embd, model_params, timings,
                                budget / min(timings.values()) * step_tokens))
        if trials[-1].tokens_per_param < TOKENS_PER_PARAM:
            break
    fitting = [t for t in trials if t.tokens_per_param >= TOKENS_PER_PARAM] or trials[:1]
    chosen = fitting[-1]
    return ladder_config(base, chosen.n_layer, chosen.n_embd), trials


def _time_steps(config: ModelConfig, batch, make_optimizer, device: torch.device,
                precision: str = "fp32") -> tuple[float, int]:
    """Seconds per training step (forward, backward, optimizer) of a fresh model of this shape in
    `precision`, and the model's parameters outside the embeddings. The median of the timed steps: the
    first steps after the warm-up still vary by 20% on a 2-core VM (one slow step must not decide)."""
    model = GPT(config).to(device)
    model.train()
    optimizer = make_optimizer(model)
    inputs, targets = (tensor.to(device) for tensor in batch)
    n_targets = targets.numel()

    def step():
        with autocast(device, precision):
            loss = lm_loss_sum(model, inputs, targets) / n_targets
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(WARMUP_STEPS):
        step()
    seconds = []
    for _ in range(PROBE_STEPS):
        _wait_for(device)
        started = clock()
        step()
        _wait_for(device)
        seconds.append(clock() - started)
    return statistics.median(seconds), model.num_params(exclude_embeddings=True)


def _wait_for(device: torch.device) -> None:
    """GPU work runs asynchronously: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
