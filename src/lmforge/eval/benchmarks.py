"""Running lm-evaluation-harness tasks on an lmforge engine, and reading the scores honestly.

    run_tasks(engine, scorer, ["lmforge-quick"], limit=100)  -> BenchmarkReport

Every score comes with what is needed to judge it: its standard error (from the harness), the number
of examples, and, for multiple-choice tasks, the chance level (the mean of 1 / number of choices over
the examples scored). The report warns when a score is within noise of chance (less than two
standard errors from it), when every choice of every example got the same log-likelihood (the model,
or a server in between, gives no information: a server that drops log-probabilities looks exactly
like this), and when contexts had to be cut to fit the model's window.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from .harness import LMForgeLM

QUICK_TASKS = Path(__file__).parent / "tasks"  # the shipped lmforge-quick tasks (tasks/README.md)

NOISE_STDERRS = 2.0  # a score closer than this many standard errors to chance is not distinguishable from it


@dataclass
class TaskScore:
    task: str
    metric: str               # e.g. "acc", "acc_norm", "exact_match", "word_perplexity"
    value: float
    stderr: float | None      # None where the harness gives none (perplexities)
    examples: int
    chance: float | None      # None where chance has no meaning (perplexity, free generation)

    def near_chance(self) -> bool:
        if self.chance is None or not self.stderr:
            return False
        return abs(self.value - self.chance) < NOISE_STDERRS * self.stderr


@dataclass
class BenchmarkReport:
    scores: list[TaskScore]
    warnings: list[str] = field(default_factory=list)

    def as_text(self) -> str:
        lines = [f"{'task':<32} {'metric':<16} {'value':>9} {'stderr':>8} {'chance':>7} {'n':>6}"]
        for s in self.scores:
            stderr = f"{s.stderr:.4f}" if s.stderr is not None else "-"
            chance = f"{s.chance:.3f}" if s.chance is not None else "-"
            lines.append(f"{s.task:<32} {s.metric:<16} {s.value:>9.4f} {stderr:>8} {chance:>7} {s.examples:>6}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])

    def as_dict(self) -> dict:
        return {"scores": [vars(s) for s in self.scores], "warnings": self.warnings}


def run_tasks(lm: LMForgeLM, tasks: list[str], limit: int | float | None = None, num_fewshot: int | None = None,
              include_path: str | Path | None = None, seed: int = 1234) -> tuple[BenchmarkReport, dict]:
    """Run harness tasks (names, groups, or tasks under include_path / the shipped quick tasks); the report
    and the harness's raw results (with every sample)."""
    from lm_eval import simple_evaluate

    manager = _task_manager(str(include_path) if include_path else None)
    results = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, bootstrap_iters=1000)
    return read_report(results, lm.truncated, lm.truncated_continuations, lm.max_length), results


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None):
    """The harness's task index (it reads thousands of task YAMLs: seconds), made once per include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(QUICK_TASKS)] + ([include_path] if include_path else []))


def read_report(results: dict, truncated: int = 0, truncated_continuations: int = 0,
                context: int | None = None) -> BenchmarkReport:
    """The scores of a harness results dict (simple_evaluate's, with samples), with chance levels and warnings."""
    scores, warnings = [], []
    for task, metrics in results["results"].items():
        samples = results.get("samples", {}).get(task, [])
        chance = _chance(samples)
        for key, value in metrics.items():
            metric, _, _ = key.partition(",")
            if metric.endswith("_stderr") or metric == "sample_len" or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{key.partition(',')[2]}")
            stderr = stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            task_chance = chance if metric in ("acc", "acc_norm") else None
            scores.append(TaskScore(task, metric, float(value), stderr, len(samples), task_chance))
        if samples and _all_loglikelihoods_equal(samples):
            warnings.append(f"{task}: every choice of every example got the same log-likelihood; the scores carry "
                            "no information about the model")
    warnings += [f"{s.task} {s.metric} {s.value:.3f} is within noise of chance ({s.chance:.3f} +- "
                 f"{NOISE_STDERRS:g} x {s.stderr:.3f}, {s.examples} examples)" for s in scores if s.near_chance()]
    if truncated:
        warnings.append(f"{truncated} request(s) were longer than the model's context of {context} tokens and "
                        "were cut on the left")
    if truncated_continuations:
        warnings.append(f"{truncated_continuations} continuation(s) were longer than the context themselves: only "
                        "their last tokens were scored, so those scores are not comparable")
    return BenchmarkReport(scores, warnings)


def _chance(samples: list[dict]) -> float | None:
    """Mean of 1 / number of choices over multiple-choice samples; None for other kinds."""
    counts = [len(s["arguments"]) for s in samples if s.get("arguments") and _is_choice_sample(s)]
    return sum(1 / n for n in counts) / len(counts) if counts else None


def _is_choice_sample(sample: dict) -> bool:
    arguments = sample["arguments"]
    return isinstance(arguments, list) and all(len(a) == 2 and isinstance(a[1], str) for a in arguments) \
        and len(arguments) > 1


def _all_loglikelihoods_equal(samples: list[dict]) -> bool:
    """True when, in every multiple-choice sample, all choices have one and the same log-likelihood."""
    choice_samples = [s for s in samples if s.get("arguments") and _is_choice_sample(s)]
    return bool(choice_samples) and all(len({round(float(r[0][0]), 6) for r in s["resps"]}) == 1
                                        for s in choice_samples)


def training_benchmark(tasks: list[str], limit: int):
    """A function (model, tokenizer) -> score rows, for the training loop (train.eval_tasks)."""
    from ..generate.engine import Engine

    def benchmark(model, tokenizer) -> list[dict]:
        lm = LMForgeLM(Engine(model, tokenizer))
        report, _ = run_tasks(lm, tasks, limit=limit)
        return [{"task": s.task, "metric": s.metric, "value": s.value, "stderr": s.stderr, "chance": s.chance,
                 "examples": s.examples} for s in report.scores]
    return benchmark
