"""What the objective's own numbers say about a preference-tuning (DPO, ORPO) or GRPO run: a paragraph of diagnosis.txt.

Read from the `objective` rows of training_metrics.json (train/preference.py logs them): per split,
the mean reward of chosen and rejected answers, their margin and the reward accuracy. The problems
named, with what to do:
* the policy never left the reference (every reward exactly 0): nothing trained;
* the margin never moved: the learning rate is too low for this beta, or beta too high;
* validation reward accuracy within noise of 0.5: no preference learnt that carries to new prompts;
* the chosen answers' reward falling while the margin grows: both answers lose probability and the
  rejected ones lose more ("likelihood displacement"): the model unlearns what it should say;
* training accuracy far above validation accuracy: the pairs are memorised, not generalised.
For GRPO (rows with reward_mean, kl, entropy, completion_length):
* reward hacking: the reward rises while the KL to the reference explodes or the completions grow long;
* entropy collapse: the policy's entropy falls to a small share of where it started;
* no learning signal: the reward does not move.
"""

from __future__ import annotations

import math
from typing import Any


def preference_notes(metrics: dict[str, Any]) -> list[str]:
    """One "Preference:" paragraph, or none for runs without reward rows."""
    train = _rows(metrics, "train")
    if len(train) < 2:
        return []
    val = _rows(metrics, "val")
    lines = [_summary(train, val)]
    if all(abs(r["reward_chosen"]) < 1e-9 and abs(r["reward_rejected"]) < 1e-9 for r in train[1:]):
        lines.append("every reward is exactly 0 after the first step: the policy never moved away from the "
                     "reference. Check that something trains (train.lr > 0; with LoRA, that the adapters are on the "
                     "model) and that chosen and rejected answers differ.")
        return [_paragraph(lines)]
    first, late = _mean(train[:max(1, len(train) // 4)], "reward_margin"), train[-max(1, len(train) // 4):]
    late_margin, spread = _mean(late, "reward_margin"), _spread(late, "reward_margin")
    if abs(late_margin - first) <= max(0.01, 2 * spread / math.sqrt(len(late))):
        lines.append(f"the reward margin did not move ({first:.3f} at the start, {late_margin:.3f} at the end): raise "
                     "train.lr, or lower finetune.preference.beta (a smaller beta lets the log-ratios, and so the "
                     "margin, grow further before the loss is satisfied).")
    if val:
        accuracy = val[-1]["reward_accuracy"]
        if abs(accuracy - 0.5) < 0.05:
            lines.append(f"validation reward accuracy is {accuracy:.2f}, about chance: what was learnt does not carry "
                         "to held-out prompts. More pairs, more steps, or pairs whose difference the model can see.")
        train_accuracy = _mean(late, "reward_accuracy")
        if train_accuracy - accuracy > 0.25:
            lines.append(f"training reward accuracy ({train_accuracy:.2f}) is far above validation ({accuracy:.2f}): "
                         "the pairs are being memorised. Fewer epochs, a larger beta, or more data.")
    chosen_start, chosen_end = _mean(train[:max(1, len(train) // 4)], "reward_chosen"), _mean(late, "reward_chosen")
    if chosen_end < chosen_start - 0.05 and chosen_end < 0 and late_margin > first:
        lines.append(f"the chosen answers' reward fell ({chosen_start:.3f} -> {chosen_end:.3f}) while the margin grew: "
                     "both answers are becoming less likely, the rejected ones faster (likelihood displacement). "
                     "Lower train.lr, raise beta, or use ORPO (task: orpo), whose SFT term holds the chosen answers up.")
    return [_paragraph(lines)]


def _summary(train: list[dict], val: list[dict]) -> str:
    last = train[-1]
    text = (f"at step {last['step']}: training reward accuracy {last['reward_accuracy']:.2f}, margin "
            f"{last['reward_margin']:.3f} (chosen {last['reward_chosen']:.3f}, rejected {last['reward_rejected']:.3f})")
    if val:
        text += (f"; validation reward accuracy {val[0]['reward_accuracy']:.2f} at step {val[0]['step']} -> "
                 f"{val[-1]['reward_accuracy']:.2f} at step {val[-1]['step']}, margin {val[-1]['reward_margin']:.3f}")
    return text + "."


def _rows(metrics: dict[str, Any], split: str) -> list[dict]:
    return [r for r in metrics.get("objective") or []
            if r.get("split") == split and all(isinstance(r.get(k), (int, float)) for k in
                                               ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"))]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _spread(rows: list[dict], key: str) -> float:
    mean = _mean(rows, key)
    return math.sqrt(sum((r[key] - mean) ** 2 for r in rows) / max(1, len(rows) - 1))


def _paragraph(lines: list[str]) -> str:
    return "Preference:\n" + "\n".join(f"- {line}" for line in lines)


def grpo_notes(metrics: dict[str, Any]) -> list[str]:
    """One "GRPO:" paragraph for runs that log reward_mean, or none."""
    rows = [r for r in metrics.get("objective") or [] if r.get("split") == "train"
            and all(isinstance(r.get(k), (int, float)) for k in ("reward_mean", "kl", "entropy", "completion_length"))]
    if len(rows) < 4:
        return []
    quarter = max(1, len(rows) // 4)
    start, end = rows[:quarter], rows[-quarter:]
    reward = (_mean(start, "reward_mean"), _mean(end, "reward_mean"))
    kl = (_mean(start, "kl"), _mean(end, "kl"))
    entropy = (_mean(start, "entropy"), _mean(end, "entropy"))
    length = (_mean(start, "completion_length"), _mean(end, "completion_length"))
    lines = [f"mean reward {reward[0]:.3f} -> {reward[1]:.3f}, KL to the reference {kl[0]:.4f} -> {kl[1]:.4f}, "
             f"entropy {entropy[0]:.3f} -> {entropy[1]:.3f}, completion length {length[0]:.1f} -> {length[1]:.1f} "
             f"tokens (first and last quarter of the logged steps)."]
    rose = reward[1] > reward[0] + 2 * _spread(end, "reward_mean") / math.sqrt(len(end))
    if rose and (kl[1] > 1.0 or length[1] > 2 * max(length[0], 1.0)):
        lines.append("the reward rose while the policy moved far from the reference (KL above 1 per token) or its "
                     "answers grew long: check samples for reward hacking (answers that please the reward function "
                     "without doing the task). Raise finetune.grpo.beta, lower train.lr, or tighten the reward.")
    if entropy[1] < 0.2 * entropy[0]:
        lines.append("the entropy collapsed to a fifth of its start or less: the policy samples nearly one answer per "
                     "prompt, groups stop differing and GRPO loses its signal. Raise the sampling temperature, lower "
                     "train.lr, or stop earlier.")
    if not rose and kl[1] > 0.5:
        lines.append(f"the policy moved away from the reference (KL {kl[1]:.2f} per token) without any gain in reward: "
                     "the steps are too large for the signal. Lower train.lr or use more prompts per step "
                     "(train.batch_size).")
    if not rose:
        lines.append("the mean reward did not rise beyond noise. If every completion of a group scores the same there "
                     "is nothing to learn from it: start from a model that sometimes succeeds (SFT first), sample more "
                     "per prompt (group_size) or at a higher temperature, or give partial credit in the reward.")
    return ["GRPO:\n" + "\n".join(f"- {line}" for line in lines)]
