"""Learning-curve diagnosis: read a run's loss curves and say in plain words what they show.

The rules below are the ones a practitioner applies by eye, made explicit. All comparisons
use means over windows of points, never single points, so batch noise cannot flip a
verdict. The rules are tried in this order and the first one that matches wins:

1. diverging: a train loss became NaN/inf; or the smoothed train loss climbed far back
   up from its minimum; or both losses have been rising together.
2. too short to judge: fewer than MIN_VAL_POINTS validation evaluations.
3. over-fit: the smoothed validation loss rose more than OVERFIT_RISE above its best
   while the train loss did not rise.
4. under-fit: over the tail of the run (its last TAIL_FRACTION of steps) both losses
   still fell by more than UNDERFIT_DROP; or by more than FLAT_DROP with validation
   level with train (no gap at all: nothing is being memorised yet).
5. plateau: the curves are flat but the learning rate was never decayed (the optimizer
   is bouncing around, not settling), or the validation loss has hardly moved for the
   whole second half of the run while it is still high compared with where it started
   (learning stalled early).
6. well fit: flat at the end of a decayed schedule with validation near its best.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from lmforge.train.metrics import NONFINITE_KEY, load_metrics, perplexity

DIAGNOSIS_FILENAME = "diagnosis.txt"
VERDICTS = ("diverging", "over-fit", "under-fit", "plateau", "well fit", "too short to judge")

# Fewer evaluations than this cannot show where the validation loss is heading.
MIN_VAL_POINTS = 3
# Train-loss windows span this fraction of the logged rows: long enough to average out
# batch-to-batch noise, short enough to follow the trend.
TRAIN_WINDOW_FRACTION = 0.1
# Validation windows span this fraction of the evaluations: there are fewer of them, and
# each one already averages many batches.
VAL_WINDOW_FRACTION = 0.2
# "The end of the run", where the recent trend is measured: its last quarter of steps.
TAIL_FRACTION = 0.25
# Diverging: the smoothed train loss sits this fraction above its minimum. A healthy train
# loss only goes down (slowly, at the end), so a 15% climb is a blow-up, not noise...
DIVERGENCE_RISE = 0.15
# ...and at least this many nats above it, so that runs already near zero loss, where
# tiny wiggles are large fractions, are not called diverging.
DIVERGENCE_MIN_RISE_NATS = 0.1
# Over-fit: smoothed validation loss this far above its best. Evaluation noise is
# usually around 1%, so 4% is a real rise, not a wobble.
OVERFIT_RISE = 0.04
# Under-fit: a loss that fell by more than this across the tail is still clearly learning.
UNDERFIT_DROP = 0.03
# A loss that fell by less than this across the tail is flat.
FLAT_DROP = 0.01
# Validation within this fraction of train: no generalisation gap at all.
NO_GAP = 0.02
# Plateau: a final learning rate at or above this share of the peak was never decayed.
PLATEAU_LR_RATIO = 0.5
# Plateau: "flat for long" means the validation loss fell by less than PLATEAU_LATE_DROP
# across this last share of the run...
PLATEAU_LATE_FRACTION = 0.5
PLATEAU_LATE_DROP = 0.02
# ...while it is still above this share of its first value (learned little).
PLATEAU_HIGH_LOSS_RATIO = 0.7
# Well fit, but validation this far above train: the model is starting to memorise.
LARGE_GAP = 0.10

Points = list[tuple[int, float]]


@dataclass(frozen=True)
class Diagnosis:
    """The verdict, a plain-words explanation, and the numbers behind it."""

    verdict: str  # one of VERDICTS
    text: str  # first line "Verdict: <verdict>", then a few short paragraphs
    numbers: dict[str, Any]


@dataclass(frozen=True)
class _Curves:
    """The finite points of each curve (rows with a missing or non-finite value left out)."""

    train: Points
    val: Points
    learning_rates: list[float]
    first_step: int
    last_step: int
    first_nonfinite_step: int | None


@dataclass(frozen=True)
class _Trend:
    """How a loss moved across a stretch: mean of its first half vs mean of its second half."""

    drop: float  # relative fall, 0.05 = fell 5%; negative when it rose
    slope_per_1k_steps: float


@dataclass(frozen=True)
class _Measurements:
    """Every number the verdict is based on; becomes Diagnosis.numbers (None = not available)."""

    first_step: int
    last_step: int
    tail_start_step: int  # the trend columns measure from here to the end
    first_nonfinite_step: int | None = None
    train_window: int | None = None  # rows in each train-loss averaging window
    train_loss_start: float | None = None  # mean of the first window
    train_loss_min: float | None = None  # lowest window mean
    train_loss_min_step: int | None = None
    train_loss_recent: float | None = None  # mean of the last window
    train_tail_drop: float | None = None
    train_slope_per_1k_steps: float | None = None
    val_points: int = 0
    val_window: int | None = None  # evaluations in each validation averaging window
    val_loss_initial: float | None = None
    val_loss_initial_step: int | None = None
    val_loss_best: float | None = None
    val_loss_best_step: int | None = None
    val_loss_final: float | None = None
    val_loss_final_step: int | None = None
    val_rise_above_best: float | None = None  # last window mean vs best window mean, relative
    val_tail_drop: float | None = None
    val_slope_per_1k_steps: float | None = None
    late_start_step: int = 0  # start of the last PLATEAU_LATE_FRACTION of the run
    val_late_drop: float | None = None  # relative fall of validation loss from there on
    val_perplexity_final: float | None = None
    val_perplexity_best: float | None = None
    train_loss_at_best_val: float | None = None  # train window mean up to the best evaluation
    train_val_gap: float | None = None  # final val minus recent train
    learning_rate_peak: float | None = None
    learning_rate_final: float | None = None


def diagnose(metrics: dict[str, Any]) -> Diagnosis:
    """Judge a run from its metrics dict (as written by lmforge.train.metrics)."""
    measured = _measure(_read_curves(metrics))
    verdict = _classify(measured)
    explanation, remedies = _EXPLAINERS[verdict](measured)
    text = "\n\n".join([f"Verdict: {verdict}", explanation, _describe_numbers(measured),
                        "What to try:\n" + "\n".join(f"- {remedy}" for remedy in remedies)])
    return Diagnosis(verdict=verdict, text=text + "\n", numbers=asdict(measured))


def write_diagnosis(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> Diagnosis:
    """Diagnose a run (metrics default to its training_metrics.json) and write diagnosis.txt."""
    run_dir = Path(run_dir)
    diagnosis = diagnose(load_metrics(run_dir) if metrics is None else metrics)
    (run_dir / DIAGNOSIS_FILENAME).write_text(diagnosis.text, encoding="utf-8")
    return diagnosis


# --- reading and measuring the curves ---------------------------------------------------


def _read_curves(metrics: dict[str, Any]) -> _Curves:
    steps = metrics.get("steps") or []
    nonfinite = set(metrics.get(NONFINITE_KEY) or [])
    nonfinite.update(step for step, loss in zip(steps, metrics.get("train_loss", []))
                     if loss is not None and not math.isfinite(loss))
    return _Curves(
        train=_finite_points(steps, metrics.get("train_loss", [])),
        val=_finite_points(steps, metrics.get("val_loss", [])),
        learning_rates=[value for _, value in _finite_points(steps, metrics.get("learning_rate", []))],
        first_step=steps[0] if steps else 0,
        last_step=steps[-1] if steps else 0,
        first_nonfinite_step=min(nonfinite, default=None),
    )


def _finite_points(steps: list[int], values: list[float | None]) -> Points:
    return [(step, value) for step, value in zip(steps, values) if value is not None and math.isfinite(value)]


def _measure(curves: _Curves) -> _Measurements:
    tail_start = _last_part_start(curves, TAIL_FRACTION)
    late_start = _last_part_start(curves, PLATEAU_LATE_FRACTION)
    return _Measurements(
        first_step=curves.first_step,
        last_step=curves.last_step,
        tail_start_step=tail_start,
        late_start_step=late_start,
        first_nonfinite_step=curves.first_nonfinite_step,
        **_train_numbers(curves, tail_start),
        **_val_numbers(curves.val, tail_start, late_start),
        **_gap_numbers(curves),
        learning_rate_peak=max(curves.learning_rates, default=None),
        learning_rate_final=curves.learning_rates[-1] if curves.learning_rates else None,
    )


def _last_part_start(curves: _Curves, fraction: float) -> int:
    """The step where the last `fraction` of the run begins."""
    return round(curves.last_step - fraction * (curves.last_step - curves.first_step))


def _train_numbers(curves: _Curves, tail_start: int) -> dict[str, Any]:
    if not curves.train:
        return {}
    window = _window_size(len(curves.train), TRAIN_WINDOW_FRACTION)
    smoothed = _rolling_means(curves.train, window)
    min_step, min_loss = min(smoothed, key=lambda point: point[1])
    trend = _trend(_tail(curves.train, tail_start, min_points=4))
    return {
        "train_window": window,
        "train_loss_start": smoothed[0][1],
        "train_loss_min": min_loss,
        "train_loss_min_step": min_step,
        "train_loss_recent": smoothed[-1][1],
        "train_tail_drop": trend.drop if trend else None,
        "train_slope_per_1k_steps": trend.slope_per_1k_steps if trend else None,
    }


def _val_numbers(val: Points, tail_start: int, late_start: int) -> dict[str, Any]:
    if not val:
        return {}
    best_step, best_loss = min(val, key=lambda point: point[1])
    window = _window_size(len(val), VAL_WINDOW_FRACTION)
    smoothed_losses = [loss for _, loss in _rolling_means(val, window)]
    trend = _trend(_tail(val, tail_start, min_points=2))
    late_trend = _trend(_tail(val, late_start, min_points=2))
    return {
        "val_points": len(val),
        "val_window": window,
        "val_loss_initial": val[0][1],
        "val_loss_initial_step": val[0][0],
        "val_loss_best": best_loss,
        "val_loss_best_step": best_step,
        "val_loss_final": val[-1][1],
        "val_loss_final_step": val[-1][0],
        "val_rise_above_best": smoothed_losses[-1] / min(smoothed_losses) - 1,
        "val_tail_drop": trend.drop if trend else None,
        "val_slope_per_1k_steps": trend.slope_per_1k_steps if trend else None,
        "val_late_drop": late_trend.drop if late_trend else None,
        "val_perplexity_final": perplexity(val[-1][1]),
        "val_perplexity_best": perplexity(best_loss),
    }


def _gap_numbers(curves: _Curves) -> dict[str, Any]:
    """Train loss where validation was best, and how far validation now sits above train."""
    if not curves.train or not curves.val:
        return {}
    window = _window_size(len(curves.train), TRAIN_WINDOW_FRACTION)
    best_val_step, _ = min(curves.val, key=lambda point: point[1])
    # The train window ending at the best evaluation (or the first window, if none came before).
    up_to_best = [loss for step, loss in curves.train if step <= best_val_step][-window:]
    at_best = up_to_best or [loss for _, loss in curves.train[:window]]
    recent_train = _mean([loss for _, loss in curves.train[-window:]])
    return {
        "train_loss_at_best_val": _mean(at_best),
        "train_val_gap": curves.val[-1][1] - recent_train,
    }


def _window_size(count: int, fraction: float) -> int:
    return max(1, round(count * fraction))


def _rolling_means(points: Points, window: int) -> Points:
    """Mean of every run of `window` consecutive points, placed at the step in its middle."""
    return [(points[start + window // 2][0], _mean([loss for _, loss in points[start:start + window]]))
            for start in range(len(points) - window + 1)]


def _tail(points: Points, tail_start: int, min_points: int) -> Points:
    """The points from tail_start on, widened to the last `min_points` if there are too few."""
    tail = [point for point in points if point[0] >= tail_start]
    return tail if len(tail) >= min_points else points[-min_points:]


def _trend(points: Points) -> _Trend | None:
    if len(points) < 2:
        return None
    first, second = points[:len(points) // 2], points[len(points) // 2:]
    first_loss, second_loss = _mean([loss for _, loss in first]), _mean([loss for _, loss in second])
    steps_apart = _mean([step for step, _ in second]) - _mean([step for step, _ in first])
    return _Trend(drop=(first_loss - second_loss) / abs(first_loss),
                  slope_per_1k_steps=1000 * (second_loss - first_loss) / max(steps_apart, 1))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --- the rules ----------------------------------------------------------------------------


def _classify(m: _Measurements) -> str:
    if m.first_nonfinite_step is not None or _train_blew_up(m) or _both_rising(m):
        return "diverging"
    if m.val_points < MIN_VAL_POINTS:
        return "too short to judge"
    if m.val_rise_above_best > OVERFIT_RISE:
        return "over-fit"  # _both_rising() was False, so the train loss did not rise with it
    if _still_learning(m):
        return "under-fit"
    if _lr_not_decayed(m) or _stuck(m):
        return "plateau"
    return "well fit"


def _train_blew_up(m: _Measurements) -> bool:
    if m.train_loss_recent is None:
        return False
    rise = m.train_loss_recent - m.train_loss_min
    return rise > DIVERGENCE_RISE * abs(m.train_loss_min) and rise > DIVERGENCE_MIN_RISE_NATS


def _both_rising(m: _Measurements) -> bool:
    if m.val_points < MIN_VAL_POINTS or m.train_loss_recent is None:
        return False
    train_rose = m.train_loss_recent > (1 + OVERFIT_RISE) * m.train_loss_at_best_val
    return m.val_rise_above_best > OVERFIT_RISE and train_rose


def _still_learning(m: _Measurements) -> bool:
    train_drop, val_drop = m.train_tail_drop or 0.0, m.val_tail_drop or 0.0
    if train_drop > UNDERFIT_DROP and val_drop > UNDERFIT_DROP:
        return True
    return _no_gap(m) and train_drop > FLAT_DROP and val_drop > FLAT_DROP


def _no_gap(m: _Measurements) -> bool:
    return m.train_val_gap is not None and abs(m.train_val_gap) < NO_GAP * m.val_loss_final


def _lr_not_decayed(m: _Measurements) -> bool:
    if not m.learning_rate_peak:  # no learning rates logged: cannot tell, assume decayed
        return False
    return m.learning_rate_final >= PLATEAU_LR_RATIO * m.learning_rate_peak


def _stuck(m: _Measurements) -> bool:
    flat_for_long = m.val_late_drop is not None and m.val_late_drop < PLATEAU_LATE_DROP
    still_high = m.val_loss_final >= PLATEAU_HIGH_LOSS_RATIO * m.val_loss_initial
    return flat_for_long and still_high


# --- the words ----------------------------------------------------------------------------


def _explain_diverging(m: _Measurements) -> tuple[str, list[str]]:
    if m.first_nonfinite_step is not None:
        start = m.first_nonfinite_step
        explanation = (f"Training diverged: the train loss became NaN or infinite at step {start}. "
                       "From that point the weights are broken and nothing learned afterwards counts.")
        if m.train_loss_min is not None:
            explanation += (f" Before that, the loss was lowest ({m.train_loss_min:.3f}) "
                            f"around step {m.train_loss_min_step}.")
    elif _train_blew_up(m):
        start = m.train_loss_min_step
        explanation = (f"Training diverged: the train loss was lowest ({m.train_loss_min:.3f}) around "
                       f"step {start} and has climbed back up to {m.train_loss_recent:.3f} since (mean of "
                       f"the last {m.train_window} logged steps), "
                       f"{_share(m.train_loss_recent / m.train_loss_min - 1)} above its minimum. A healthy "
                       "train loss only goes down.")
    else:
        start = m.val_loss_best_step
        explanation = (f"Training is going unstable: since step {start} both losses have been rising, "
                       f"validation from {m.val_loss_best:.3f} to {m.val_loss_final:.3f} and train from "
                       f"{m.train_loss_at_best_val:.3f} to {m.train_loss_recent:.3f}. When the train loss "
                       "rises too, the optimisation is failing; this is not memorisation.")
    return explanation, [
        "Lower the learning rate (try 2-3 times lower).",
        "Use a longer learning-rate warmup.",
        "Clip gradients (a max norm of 1.0 is the usual choice).",
        "On a GPU, train in bf16 instead of fp16, which overflows easily.",
        f"Check the training data for broken or unusual documents near step {start}.",
        f"Restart, or resume from a checkpoint saved before step {start}, with these changes.",
    ]


def _explain_too_short(m: _Measurements) -> tuple[str, list[str]]:
    if m.val_points == 0:
        explanation = ("Too short to judge: no validation loss was recorded, so there is no way to tell "
                       "whether the model learns something general or just memorises its training text.")
    else:
        explanation = (f"Too short to judge: the run has {m.val_points} validation evaluation(s); at least "
                       f"{MIN_VAL_POINTS} are needed to see where the validation loss is heading.")
    return explanation, [
        "Train for more steps.",
        "Evaluate more often (a smaller evaluation interval).",
        "Make sure part of the documents is held out as a validation split.",
    ]


def _explain_overfit(m: _Measurements) -> tuple[str, list[str]]:
    best = m.val_loss_best_step
    explanation = (f"Over-fitting since step {best} (best val {m.val_loss_best:.3f} at step {best}, "
                   f"now {m.val_loss_final:.3f}). Averaged over the last {m.val_window} evaluation(s), the "
                   f"validation loss is {_share(m.val_rise_above_best)} above its best, while the train loss "
                   f"did not go up with it ({m.train_loss_at_best_val:.3f} -> {m.train_loss_recent:.3f}). "
                   "The model is memorising its training documents instead of learning what carries "
                   "over to new text.")
    return explanation, [
        f"The best/ checkpoint already holds the model from step {best}: use that one.",
        f"Stop earlier (early stopping): training past step {best} only made the model worse.",
        "More training data is the best cure.",
        "Regularise: dropout (0.1-0.2) or more weight decay (e.g. 0.1).",
        "A smaller model memorises less.",
    ]


def _explain_underfit(m: _Measurements) -> tuple[str, list[str]]:
    explanation = (f"Under-fit: the model is still learning. Over the last part of the run (from step "
                   f"{m.tail_start_step}) the train loss {_movement(m.train_tail_drop)} and the validation "
                   f"loss {_movement(m.val_tail_drop)}.")
    if _no_gap(m):
        explanation += " Validation is level with train, so the model is not memorising anything yet."
    explanation += " Stopping here leaves easy improvement on the table."
    return explanation, [
        "Train longer (more steps or epochs), for example by resuming from the last checkpoint.",
        "If the loss has fallen slowly all along, a higher learning rate may help.",
        "If it is levelling off at a high value, a bigger model can learn more.",
    ]


def _explain_plateau(m: _Measurements) -> tuple[str, list[str]]:
    if _lr_not_decayed(m):
        lr_share = _share(m.learning_rate_final / m.learning_rate_peak)
        explanation = (f"Plateau: the loss has stopped improving (the train loss "
                       f"{_movement(m.train_tail_drop)} over the last part of the run) while the learning "
                       f"rate is still {m.learning_rate_final:.2e}, {lr_share} of its peak. At a high "
                       "learning rate the optimizer keeps bouncing around the bottom of the valley instead "
                       "of settling into it.")
        return explanation, [
            "Decay the learning rate (a cosine schedule down to about 10% of the peak), or lower it.",
            "Then train again or resume: the loss usually drops further as the learning rate comes down.",
        ]
    explanation = (f"Plateau: the validation loss has hardly moved over the second half of the run (from "
                   f"step {m.late_start_step} it {_movement(m.val_late_drop)}) while it is still high: it is "
                   f"at {m.val_loss_final:.3f}, {_share(m.val_loss_final / m.val_loss_initial)} of where it "
                   f"started ({m.val_loss_initial:.3f}). Learning stalled early.")
    return explanation, [
        "Check the data: a tokenizer that does not fit the text, or very repetitive or random text, "
        "caps how low the loss can go.",
        "If the learning rate was small, try a higher one.",
        "Try a bigger model.",
    ]


def _explain_well_fit(m: _Measurements) -> tuple[str, list[str]]:
    explanation = (f"Well fit: the validation loss ended at {m.val_loss_final:.3f}, close to its best "
                   f"({m.val_loss_best:.3f} at step {m.val_loss_best_step}), the curves have flattened out "
                   f"as the schedule ends, and the train-val gap is {m.train_val_gap:+.3f}.")
    if m.train_val_gap > LARGE_GAP * m.val_loss_final:
        explanation += (" That gap is large: the model is starting to memorise, so more data would help "
                        "more than more steps.")
    return explanation, [
        f"Nothing to fix. Use the best/ checkpoint (step {m.val_loss_best_step}).",
        "To go further, grow the data and the model together; more steps alone will not help much.",
    ]


_EXPLAINERS: dict[str, Callable[[_Measurements], tuple[str, list[str]]]] = {
    "diverging": _explain_diverging,
    "too short to judge": _explain_too_short,
    "over-fit": _explain_overfit,
    "under-fit": _explain_underfit,
    "plateau": _explain_plateau,
    "well fit": _explain_well_fit,
}


def _describe_numbers(m: _Measurements) -> str:
    """The numbers paragraph shared by every verdict, built from whatever was measured."""
    sentences = []
    if m.val_points:
        sentences.append(
            f"Validation loss started at {m.val_loss_initial:.3f} (step {m.val_loss_initial_step}), "
            f"was best at {m.val_loss_best:.3f} (step {m.val_loss_best_step}) and ended at "
            f"{m.val_loss_final:.3f} (step {m.val_loss_final_step}), a perplexity of "
            f"{_number(m.val_perplexity_final)} (best {_number(m.val_perplexity_best)}).")
    if m.train_loss_recent is not None:
        sentences.append(f"The train loss averaged {m.train_loss_recent:.3f} over the last "
                         f"{m.train_window} logged step(s).")
    if m.train_val_gap is not None:
        sentences.append("The train-val gap (final validation minus recent train) is "
                         f"{m.train_val_gap:+.3f}.")
    slopes = [f"the {name} loss changed by {slope:+.3f} per 1000 steps"
              for name, slope in (("train", m.train_slope_per_1k_steps),
                                  ("validation", m.val_slope_per_1k_steps))
              if slope is not None]
    if slopes:
        sentences.append(f"Over the last part of the run (from step {m.tail_start_step}) "
                         + " and ".join(slopes) + ".")
    if m.learning_rate_final is not None:
        sentences.append(f"The learning rate ended at {m.learning_rate_final:.2e} "
                         f"(peak {m.learning_rate_peak:.2e}).")
    return "The numbers: " + (" ".join(sentences) or "nothing has been logged yet.")


def _share(fraction: float) -> str:
    """0.043 -> '4.3%'."""
    return f"{100 * fraction:.1f}%"


def _movement(drop: float) -> str:
    """A relative drop in words: 0.05 -> 'fell 5.0%', -0.02 -> 'rose 2.0%'."""
    return f"fell {_share(drop)}" if drop >= 0 else f"rose {_share(-drop)}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
