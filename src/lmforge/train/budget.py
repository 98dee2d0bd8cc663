"""Time budgets: a max_time run's length in steps, fitted once from the measured speed of its first steps.

A time budget can drive the learning-rate schedule in two ways:
  * follow the clock: the decay's progress is elapsed / max_time. Every step's learning rate then depends
    on how fast the machine happened to be at that moment, so a resumed run cannot replay the schedule;
  * fit once: time the first steps, turn the remaining budget into a step count, and from then on train
    exactly like a step-budget run. The count is saved with the training state, so resume stays exact.
lmforge fits once. The fit also pays for what the run will do besides training steps: periodic
evaluations, samples and checkpoints, and the final evaluation, sample, checkpoint, plots and diagnosis,
so that all of it ends inside max_time. A hard stop at max_time stays as a safety net for a machine that
slows down after the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The first step of a session pays for allocations (and compilation): speed is measured from the end of it.
FIT_AFTER_STEPS = 10      # fit once this many steps are measured ...
FIT_AFTER_SHARE = 0.05    # ... or once measuring took this share of the budget, with at least MIN_MEASURED_STEPS
MIN_MEASURED_STEPS = 3
HEADROOM = 0.03           # plan to end this share of the budget early: speed wobbles from step to step
SAVE_BYTES_PER_SECOND = 200e6  # a conservative disk speed for estimating checkpoint writes


@dataclass
class PeriodicWork:
    """Seconds that one evaluation, one sample and one checkpoint take, and how often each happens."""

    eval_seconds: float
    eval_interval: int
    sample_seconds: float
    sample_interval: int  # 0 = no samples
    save_seconds: float
    save_interval: int
    report_seconds: float  # plots and diagnosis, written once at the end

    def per_step(self) -> float:
        seconds = self.eval_seconds / self.eval_interval + self.save_seconds / self.save_interval
        if self.sample_interval:
            seconds += self.sample_seconds / self.sample_interval
        return seconds

    def at_the_end(self) -> float:
        return self.eval_seconds + self.sample_seconds + self.save_seconds + self.report_seconds


class StepClock:
    """Measures seconds per training step from the end of a session's first step."""

    def __init__(self):
        self.first: tuple[int, float] | None = None  # (step, elapsed) after the session's first step

    def observe(self, step: int, elapsed: float) -> None:
        if self.first is None:
            self.first = (step, elapsed)

    def measured_steps(self, step: int) -> int:
        return 0 if self.first is None else step - self.first[0]

    def ready_to_fit(self, step: int, elapsed: float, max_time: float) -> bool:
        measured = self.measured_steps(step)
        if measured >= FIT_AFTER_STEPS:
            return True
        # Slow steps (a big model): fit sooner rather than spend much of the budget measuring.
        return measured >= MIN_MEASURED_STEPS and elapsed - self.first[1] >= FIT_AFTER_SHARE * max_time

    def seconds_per_step(self, step: int, elapsed: float) -> float:
        first_step, first_elapsed = self.first
        return (elapsed - first_elapsed) / max(1, step - first_step)


def fit_total_steps(step: int, elapsed: float, max_time: float, seconds_per_step: float, work: PeriodicWork) -> int:
    """The run's length in steps: the steps done plus as many more as the rest of the budget holds, after
    keeping back the headroom and the final evaluation, sample, checkpoint and report. At least one more."""
    remaining = max_time * (1 - HEADROOM) - elapsed - work.at_the_end()
    more = math.floor(remaining / (seconds_per_step + work.per_step()))
    return step + max(1, more)


def estimate_save_seconds(n_params: int, optimizer_moments: int = 2) -> float:
    """Checkpoint write time: fp32 weights plus the optimizer's moments, at a conservative disk speed."""
    return n_params * 4 * (1 + optimizer_moments) / SAVE_BYTES_PER_SECOND + 0.2
