"""GRPO: reinforcement learning with verifiable rewards, as a batch source and a loss of the one training loop.

Group Relative Policy Optimization (Shao et al., DeepSeekMath 2024) needs no value model. For each
prompt it samples a group of G completions from the current policy, scores each with reward
functions (here: Python functions, e.g. "is the answer right?"), and uses the group itself as the
baseline: a completion's advantage is its reward minus the group's mean, divided by the group's
standard deviation. Completions better than their siblings are made more likely, worse ones less.

    loss = -(1/N) sum over completion tokens of min(ratio x A, clip(ratio, 1 - eps, 1 + eps) x A)
           + beta x KL(policy || reference)  (per token, the k3 estimator exp(d) - d - 1, d = ref - policy)

with N the completion tokens of the whole step (DAPO's normalisation: no bias towards short or long
answers; the loop divides by the count of targets). Each batch is sampled by the policy being trained
and used for one update, so ratio = pi / pi_old is 1 in value and its gradient is that of log pi: the
clipping matters only when a batch is reused (not done here).

`GroupSampler` is the loop's batch source: it samples with lmforge's KV-cached generation (each
completion from its own seeded generator, drawn from the sampler's, which checkpoints save: resume is
exact), ends each completion at end-of-text, scores it and returns tensors. `GRPOLoss` is the loss;
it logs reward, KL, entropy and completion length for the loop.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..adapt.lora import adapters_disabled
from ..data.sft import ExampleBatches, pad_rows
from ..generate.engine import evaluation_mode, generate_tokens
from ..generate.params import SamplingParams
from ..model.chunked_loss import IGNORE_INDEX
from ..model.linear import plain_products
from ..tokenizer.base import Tokenizer
from .preference import RunningMeans

RewardFunction = Callable[[str, str, dict], float]  # (prompt text, completion text, the record) -> reward


def load_reward_functions(names: list[str]) -> list[RewardFunction]:
    """Import each "module:function" (a module on the Python path, e.g. lmforge.train.rewards:arithmetic)."""
    if not names:
        raise ValueError("finetune.grpo.rewards: name at least one reward function, as module:function")
    functions = []
    for name in names:
        module_name, _, attribute = name.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"finetune.grpo.rewards: {name!r} is not module:function")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"finetune.grpo.rewards: cannot import {name!r} ({exc})") from exc
        if not callable(function):
            raise ValueError(f"finetune.grpo.rewards: {name!r} is not a function")
        functions.append(function)
    return functions


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards of G completions for each of P prompts -> advantages: (r - group mean) / (group std + 1e-4).

    The standard deviation is the unbiased one, as trl's; a group whose completions all score the same
    gets advantage 0 everywhere (nothing to learn from it)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.size(1) > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + 1e-4)


@dataclass
class SamplingSettings:
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0


class FrozenCopy:
    """The reference as a frozen copy of the starting model (full fine-tuning changes every weight)."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if next(self.model.parameters()).device != x.device:
            self.model.to(x.device)  # copied before the trainer moved the policy (e.g. to the GPU): follow it
        return self.model(x)


class AdaptersOff:
    """The reference as the policy with its LoRA adapters switched off (as trl does with peft models):
    fresh adapters add nothing, so the base alone is the starting model, and no second copy of the
    weights is needed. For qlora the reference is the same 4-bit base the policy starts from."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with evaluation_mode(self.policy), adapters_disabled(self.policy):
            return self.policy(x)


class GroupSampler(ExampleBatches):
    """Batches of G sampled completions for each of batch_size prompts: (x, advantages, rewards, ref_logps, y).

    x (P*G, T) prompt + completion (the last token dropped), right-padded; y the completion's tokens as
    targets (IGNORE_INDEX on the prompt and padding); advantages and rewards (P*G,); ref_logps (P*G, T)
    the reference's log-probability of each target (zeros when there is no reference, beta = 0).
    """

    def __init__(self, policy: torch.nn.Module, reference: Callable[[torch.Tensor], torch.Tensor] | None,
                 tokenizer: Tokenizer,
                 prompts: list[list[int]], records: list[dict], rewards: list[RewardFunction],
                 sampling: SamplingSettings, batch_size: int, seed: int):
        super().__init__(len(prompts), batch_size, seed)
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.prompts, self.records, self.rewards, self.sampling = prompts, records, rewards, sampling
        self.generator = torch.Generator().manual_seed(seed)  # draws each completion's own seed

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))

    def _collate(self, items: np.ndarray) -> tuple[torch.Tensor, ...]:
        group = self.sampling.group_size
        rows = [int(i) for i in items for _ in range(group)]  # each prompt G times
        completions = self._sample([self.prompts[i] for i in rows])
        rewards = torch.tensor([self._reward(i, completion) for i, completion in zip(rows, completions)],
                               dtype=torch.float32)
        advantages = group_advantages(rewards.view(-1, group)).flatten()
        sequences = [self.prompts[i] + completion for i, completion in zip(rows, completions)]
        x = pad_rows([s[:-1] for s in sequences], self.tokenizer.eot_id)
        targets = [[IGNORE_INDEX] * (len(self.prompts[i]) - 1) + completion for i, completion in zip(rows, completions)]
        y = pad_rows(targets, IGNORE_INDEX)
        ref_logps = self._reference_logps(x, y)
        return x, advantages, rewards, ref_logps, y

    @torch.no_grad()
    def _sample(self, prompts: list[list[int]]) -> list[list[int]]:
        """One completion per prompt, each from its own generator; cut after its first end-of-text (kept)."""
        s = self.sampling
        params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
        seeds = torch.randint(2 ** 62, (len(prompts),), generator=self.generator).tolist()
        device = next(self.policy.parameters()).device
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        with plain_products():  # the same kernels in every run: a resumed run samples exactly what it would have
            steps = list(generate_tokens(self.policy, prompts, params, generators))
        completions = []
        for row in range(len(prompts)):
            tokens = [step[row] for step in steps]
            end = tokens.index(self.tokenizer.eot_id) + 1 if self.tokenizer.eot_id in tokens else len(tokens)
            completions.append(tokens[:end])
        return completions

    def _reward(self, index: int, completion: list[int]) -> float:
        prompt = self.tokenizer.decode(self.prompts[index])
        text = self.tokenizer.decode([t for t in completion if t != self.tokenizer.eot_id])
        return float(sum(function(prompt, text, self.records[index]) for function in self.rewards))

    @torch.no_grad()
    def _reference_logps(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            return torch.zeros(y.shape)
        device = next(self.policy.parameters()).device
        logits = self.reference(x.to(device)).float()
        return token_logps(logits, y.to(device)).cpu()

    def eval_batches(self, max_batches: int | None = None):
        """The first prompts in stored order, sampled with the generator put back afterwards: looking (e.g. the
        precision probe) does not change what training samples next."""
        saved = self.generator.get_state()
        try:
            batches = [self._collate(np.arange(start, min(start + self.batch_size, self.item_count)))
                       for start in range(0, self.item_count, self.batch_size)[:max_batches]]
        finally:
            self.generator.set_state(saved)
        yield from batches


def token_logps(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target (B, T); 0 where y is IGNORE_INDEX."""
    logps = torch.gather(logits.log_softmax(dim=-1), -1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps * (y != IGNORE_INDEX)


class GRPOLoss:
    """loss_fn(model, x, advantages, rewards, ref_logps, y) -> the clipped GRPO objective (+ beta KL), summed over
    completion tokens (the loop divides by their number)."""

    def __init__(self, beta: float = 0.04, epsilon: float = 0.2):
        if beta < 0 or not 0 < epsilon < 1:
            raise ValueError(f"beta must be >= 0 and epsilon in (0, 1), got {beta} and {epsilon}")
        self.beta, self.epsilon, self.stats = beta, epsilon, RunningMeans()

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, advantages: torch.Tensor, rewards: torch.Tensor,
                 ref_logps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()
        logps = token_logps(logits, y)
        mask = (y != IGNORE_INDEX).float()
        ratio = torch.exp(logps - logps.detach())  # pi / pi_old, with pi_old the policy that sampled this batch
        gain = advantages.to(logps).unsqueeze(1)
        per_token = -torch.min(ratio * gain, torch.clamp(ratio, 1 - self.epsilon, 1 + self.epsilon) * gain)
        delta = ref_logps.to(logps) - logps
        kl = torch.exp(delta) - delta - 1  # k3: an unbiased, always positive estimate of KL(policy || reference)
        if self.beta:
            per_token = per_token + self.beta * kl
        with torch.no_grad():
            lengths = mask.sum(dim=1)
            entropy = -(F.softmax(logits, dim=-1) * F.log_softmax(logits, dim=-1)).sum(-1)
            per_row = lambda t: (t * mask).sum(dim=1) / lengths.clamp(min=1)  # noqa: E731 - mean over a row's tokens
            self.stats.add("train" if model.training else "val", {
                "reward_mean": rewards, "reward_std": rewards.std().expand_as(rewards) if len(rewards) > 1
                else torch.zeros_like(rewards), "completion_length": lengths, "kl": per_row(kl.detach()),
                "entropy": per_row(entropy)})
        return (per_token * mask).sum()

    def take_metrics(self, gather=None) -> dict[str, dict[str, float]]:
        return self.stats.take(gather)
