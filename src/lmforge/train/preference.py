"""Preference objectives: DPO (with IPO as an option) and ORPO, as loss functions of the one training loop.

DPO (Rafailov et al. 2023). RLHF maximises reward minus beta x KL(policy || reference); the policy that
does it best is pi*(y|x) = ref(y|x) exp(r(x, y) / beta) / Z(x), so a reward is implied by any policy:
r(x, y) = beta log(pi(y|x) / ref(y|x)) + beta log Z(x). Put that into the Bradley-Terry model of
which answer people prefer, P(chosen > rejected) = sigmoid(r_chosen - r_rejected), and Z cancels:

    loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))])

where log pi(y) sums the log-probabilities of the answer's tokens. beta x each log-ratio is the
answer's "reward"; reward accuracy is the share of pairs where the chosen one's is higher; the
margin is their difference. IPO (Azar et al. 2023) regresses the (per-token) difference of log-ratios
to 1 / (2 beta) instead, which cannot be pushed to infinity on pairs that are already separated.

ORPO (Hong et al. 2024) needs no reference model: the SFT loss on the chosen answer plus
lambda x -log sigmoid(log odds(c) - log odds(r)), odds(y) = p(y) / (1 - p(y)) with p(y) the
geometric mean of the answer's token probabilities (exp of the mean log-probability).

Batches come from data.preference.PreferenceBatches: (x, y, y_all, ref_logps, pairs), chosen rows first.
Each loss returns a sum over pairs (the loop divides by the number of pairs) and keeps running means
of its statistics for the loop to log (`take_metrics`), separately for training and validation
batches (the model's mode tells them apart).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..model.chunked_loss import IGNORE_INDEX

DPO_LOSSES = ("sigmoid", "ipo")


def answer_logps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities (N,) of each row's target tokens (y != IGNORE_INDEX), and how many there are."""
    logits = model(x).float()  # (N, T, V); fp32: a log-softmax over the vocabulary loses too much in bf16
    scored = y != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(dim=-1), -1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * scored).sum(dim=-1), scored.sum(dim=-1)


class RunningMeans:
    """Means of named per-pair values since they were last taken, for training and validation apart."""

    def __init__(self):
        self._clear()
        self._ignoring = False

    def _clear(self) -> None:
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "val": defaultdict(float)}
        self._counts = {"train": 0, "val": 0}

    def add(self, split: str, values: dict[str, torch.Tensor]) -> None:
        if self._ignoring:
            return
        for name, value in values.items():
            self._sums[split][name] += float(value.detach().double().sum())
        self._counts[split] += len(next(iter(values.values())))

    @contextmanager
    def ignoring(self) -> Iterator[None]:
        """Values added inside are left out: a distributed validation pads a rank's share with a repeated batch
        (distributed.collectives.round_robin), which must not count twice."""
        before, self._ignoring = self._ignoring, True
        try:
            yield
        finally:
            self._ignoring = before  # restored, not reset: blocks may nest

    def take(self, gather: Callable[[object], list] | None = None) -> dict[str, dict[str, float]]:
        """{"train": {name: mean}, "val": {...}} of the splits seen since the last call; then start afresh.

        gather (distributed.collectives.gather_objects) collects every rank's sums and counts, so that in a
        distributed run the means cover all ranks' examples (every rank must call take then)."""
        totals = {split: (self._counts[split], dict(self._sums[split])) for split in self._counts}
        self._clear()
        sums: dict[str, dict[str, float]] = {split: defaultdict(float) for split in totals}
        counts = dict.fromkeys(totals, 0)
        for part in gather(totals) if gather is not None else [totals]:
            for split, (count, named) in part.items():
                counts[split] += count
                for name, total in named.items():
                    sums[split][name] += total
        return {split: {name: total / counts[split] for name, total in named.items()}
                for split, named in sums.items() if counts[split]}


class DPOLoss:
    """loss_fn(model, x, y, y_all, ref_logps, pairs) -> the DPO (or IPO) loss summed over the batch's pairs."""

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid"):
        if loss_type not in DPO_LOSSES:
            raise ValueError(f"DPO loss {loss_type!r}: choose one of {DPO_LOSSES}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.loss_type, self.stats = beta, loss_type, RunningMeans()

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, y_all: torch.Tensor,
                 ref_logps: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        logps, counts = answer_logps(model, x, y)
        ratios = logps - ref_logps.to(logps)  # log pi(y) - log ref(y), chosen rows then rejected rows
        chosen, rejected = ratios.chunk(2)
        if self.loss_type == "sigmoid":
            losses = -F.logsigmoid(self.beta * (chosen - rejected))
        else:  # ipo: per-token log-ratios, as trl does (the IPO authors' choice for answers of different lengths)
            n_chosen, n_rejected = counts.clamp(min=1).chunk(2)
            losses = (chosen / n_chosen - rejected / n_rejected - 1 / (2 * self.beta)) ** 2
        chosen_reward, rejected_reward = self.beta * chosen.detach(), self.beta * rejected.detach()
        logps_chosen, logps_rejected = logps.detach().chunk(2)
        self.stats.add("train" if model.training else "val", {
            "reward_chosen": chosen_reward, "reward_rejected": rejected_reward,
            "reward_margin": chosen_reward - rejected_reward,
            "reward_accuracy": (chosen_reward > rejected_reward).float(),
            "logps_chosen": logps_chosen, "logps_rejected": logps_rejected})
        return losses.sum()

    def take_metrics(self, gather=None) -> dict[str, dict[str, float]]:
        return self.stats.take(gather)


class ORPOLoss:
    """loss_fn(model, x, y, y_all, ref_logps, pairs) -> the ORPO loss summed over the batch's pairs.

    nll_on_prompt: the SFT part scores the prompt's tokens too, as trl's ORPOTrainer does; the paper
    (and lmforge's default, like its SFT) scores the chosen answer only.
    """

    def __init__(self, beta: float = 0.1, nll_on_prompt: bool = False):
        if beta <= 0:
            raise ValueError(f"ORPO's lambda (beta) must be > 0, got {beta}")
        self.beta, self.nll_on_prompt, self.stats = beta, nll_on_prompt, RunningMeans()

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, y_all: torch.Tensor,
                 ref_logps: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()  # (2B, T, V)
        log_probs = logits.log_softmax(dim=-1)
        scored = y != IGNORE_INDEX
        token_logps = torch.gather(log_probs, -1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        mean_logps = (token_logps * scored).sum(dim=-1) / scored.sum(dim=-1).clamp(min=1)  # log of p(y)'s geo-mean
        chosen, rejected = mean_logps.chunk(2)
        # log odds(y) = log p - log(1 - p); log1mexp computes log(1 - exp(a)) for a < 0 without cancelling.
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        ratio = F.logsigmoid(log_odds)
        n_pairs = len(chosen)
        nll_targets = (y_all if self.nll_on_prompt else y)[:n_pairs]
        nll = F.cross_entropy(logits[:n_pairs].flatten(0, 1), nll_targets.flatten(), ignore_index=IGNORE_INDEX)
        chosen_reward, rejected_reward = self.beta * chosen.detach(), self.beta * rejected.detach()
        self.stats.add("train" if model.training else "val", {
            "reward_chosen": chosen_reward, "reward_rejected": rejected_reward,
            "reward_margin": chosen_reward - rejected_reward,
            "reward_accuracy": (chosen_reward > rejected_reward).float(),
            "log_odds_ratio": log_odds.detach(), "nll": nll.detach().expand(n_pairs)})
        # The SFT part is a mean over the chosen tokens of this batch (as trl's); times the pairs, so that the
        # loop's division by the pairs gives back nll - beta x mean(log sigmoid(log odds)).
        return n_pairs * nll - self.beta * ratio.sum()

    def take_metrics(self, gather=None) -> dict[str, dict[str, float]]:
        return self.stats.take(gather)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))
