"""Time budgets: a max_time run's length in steps, fitted once from the measured speed of its first steps.

A time budget can drive the learning-rate schedule in two ways:
  * follow the clock: the decay's progress is elapsed / max_time. Every step's learning rate then depends
    on how fast the machine happened to be at that moment, so a resumed run cannot replay the schedule;
  * fit once: time the first steps, turn the remaining budget into a step count, and from then on train
    exactly like a step-budget run. The count is saved with the training state, so resume stays exact.
lmforge fits once. The fit also pays for what the run will do besides training steps: periodic
evaluations, samples and checkpoints, and the final evaluation, sample, checkpoint, plots and diagnosis,
so that all of it ends inside max_time.

Machines do not keep one speed: a laptop throttles once it is hot, a shared server gets a neighbour, and
the first steps of a run are often faster than later ones. So the plan is checked once more, half-way
through: the speed since the fit (many steps, the plan's own evaluations and samples included) gives a
corrected step count, which is saved as well. The schedule's horizon moves then, by a few percent at
most in practice. A hard stop at max_time stays as the last safety net.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The first step of a session pays for allocations (and compilation): speed is measured from the end of it.
FIT_AFTER_SHARE = 0.05    # fit once measuring took this share of the budget, over at least MIN_MEASURED_STEPS
MIN_MEASURED_STEPS = 10   # ... or over MIN_MEASURED_STEPS_SLOW when that took twice the share (slow steps)
MIN_MEASURED_STEPS_SLOW = 3
HEADROOM = 0.03           # plan to end this share of the budget early: speed wobbles from step to step
RECHECK_TOLERANCE = 0.01  # the half-way check changes the plan only when it is off by more than this
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
        measured, seconds = self.measured_steps(step), self.measured_seconds(elapsed)
        if measured >= MIN_MEASURED_STEPS and seconds >= FIT_AFTER_SHARE * max_time:
            return True
        # Slow steps (a big model): fit on fewer steps rather than spend much of the budget measuring.
        return measured >= MIN_MEASURED_STEPS_SLOW and seconds >= 2 * FIT_AFTER_SHARE * max_time

    def measured_seconds(self, elapsed: float) -> float:
        return 0.0 if self.first is None else elapsed - self.first[1]

    def seconds_per_step(self, step: int, elapsed: float) -> float:
        first_step, first_elapsed = self.first
        return (elapsed - first_elapsed) / max(1, step - first_step)


def fit_total_steps(step: int, elapsed: float, max_time: float, seconds_per_step: float, work: PeriodicWork) -> int:
    """The run's length in steps: the steps done plus as many more as the rest of the budget holds, after
    keeping back the headroom and the final evaluation, sample, checkpoint and report. At least one more."""
    remaining = max_time * (1 - HEADROOM) - elapsed - work.at_the_end()
    more = math.floor(remaining / (seconds_per_step + work.per_step()))
    return step + max(1, more)


def recheck_step(fitted_at: int, fitted_steps: int) -> int:
    """The step at which the plan is checked again: half-way from the fit to the planned end."""
    return fitted_at + max(1, (fitted_steps - fitted_at) // 2)


def corrected_total_steps(planned: int, step: int, elapsed: float, max_time: float, seconds_per_step: float,
                          final_seconds: float) -> int:
    """The half-way check: the plan again from the speed since the fit (whose seconds per step already
    include the periodic evaluations, samples and checkpoints) and the final work's seconds; kept when
    within RECHECK_TOLERANCE."""
    remaining = max_time * (1 - HEADROOM) - elapsed - final_seconds
    corrected = step + max(1, math.floor(remaining / seconds_per_step))
    return planned if abs(corrected - planned) <= RECHECK_TOLERANCE * planned else corrected


def estimate_save_seconds(n_params: int, optimizer_moments: int = 2) -> float:
    """Checkpoint write time: fp32 weights plus the optimizer's moments, at a conservative disk speed."""
    return n_params * 4 * (1 + optimizer_moments) / SAVE_BYTES_PER_SECOND + 0.2
