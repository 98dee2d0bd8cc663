"""Learning-curve diagnosis: read a run's loss curves and say in plain words what they show.

The rules below are the ones a practitioner applies by eye, made explicit, and were tuned on
real runs (tests/train/fixtures/curves) as well as textbook shapes. All comparisons use means
over windows of points, never single points, so batch noise cannot flip a verdict. "The
start" is the first logged train loss (about ln(vocabulary size) for an untrained model),
not the first evaluation, which comes only after the fast early drop. The rules are tried in
this order and the first one that matches wins:

1. diverging: a train loss became NaN/inf; or the smoothed train loss climbed far above the
   lowest it had been before (a blow-up, even if it came back down later); or both losses
   have been rising together.
2. too short to judge: fewer than MIN_VAL_POINTS validation evaluations.
2b. split problem: with dropout off, the validation loss stayed below the train loss beyond noise
   (at most evaluations of the second half, and at the end by more than NO_GAP and SPLIT_NOISE_SIGMAS
   standard errors). A model cannot do better on unseen text than on its training text unless the
   validation text is easier or leaks from training, so the curves say nothing about generalisation.
3. over-fit: the smoothed validation loss rose more than OVERFIT_RISE above its best while
   the train loss did not rise; or (starting to over-fit) validation stopped improving, it
   fell less than FLAT_DROP over the tail, while over the second half of the run the train
   loss fell more than GAP_GROWTH (of the validation loss) further than validation did: the
   train-val gap is growing.
4. under-fit: over the tail both losses still fell by more than UNDERFIT_DROP.
5. plateau: the model has barely learned anything: validation is still at BARELY_LEARNED of
   the start or above, and not falling fast (at most UNDERFIT_DROP over the tail).
6. under-fit: validation is level with train (within NO_GAP: nothing is being memorised yet)
   and both still fall a little: more than FLAT_DROP over the tail or more than STALL_DROP
   over the second half.
7. plateau: the learning rate was never decayed; or validation is level with train and has
   stopped falling (learning stalled: the model is not memorising, it is not learning).
8. well fit: anything else: flat or nearly flat at the end of a decayed schedule, with a
   train-val gap that exists but is not growing fast.

Whatever the verdict, the advice to train longer is given only when the run was still improving as it
ended: the slope of the train loss over the last part, fitted by least squares, is below zero by more
than IMPROVING_T standard errors. Otherwise the curve has flattened and more steps would add little.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lmforge.train.diagnose_preference import grpo_notes, preference_notes
from lmforge.train.metrics import NONFINITE_KEY, load_metrics, perplexity

DIAGNOSIS_FILENAME = "diagnosis.txt"
VERDICTS = ("diverging", "split problem", "over-fit", "under-fit", "plateau", "well fit", "too short to judge")

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
# "The second half of the run": long enough to see a slow trend even in a short run, whose
# last quarter may hold only two evaluations and is flattened by the learning-rate decay.
LATE_FRACTION = 0.5
# Diverging: the smoothed train loss climbed this fraction above the lowest it had been
# before. A healthy train loss only goes down (slowly, at the end), so a 15% climb is a
# blow-up, not noise...
DIVERGENCE_RISE = 0.15
# ...and at least this many nats above it, so that runs already near zero loss, where
# tiny wiggles are large fractions, are not called diverging.
DIVERGENCE_MIN_RISE_NATS = 0.1
# Over-fit: smoothed validation loss this far above its best. Evaluation noise is
# usually around 1%, so 4% is a real rise, not a wobble.
OVERFIT_RISE = 0.04
# Starting to over-fit: over the second half of the run the train loss fell this much more
# than the validation loss (as a share of the validation loss): the gap is opening. In the
# real fixture runs, those starting to memorise show 4-16%, well-fit ones about 2%.
GAP_GROWTH = 0.03
# "Validation stopped improving at step N": the first evaluation within this share of the
# best one (closer than that is evaluation noise).
STOPPED_IMPROVING = 0.01
# Under-fit: a loss that fell by more than this across the tail is still clearly learning.
UNDERFIT_DROP = 0.03
# A loss that fell by less than this across the tail is flat.
FLAT_DROP = 0.01
# Losses that fell by less than this across the whole second half have stalled.
STALL_DROP = 0.01
# Validation within this share of train (over the last window of evaluations): no
# generalisation gap at all, the model is not memorising anything yet. (Real well-fit runs
# end with a gap of about 4%; real under-fit and stalled ones within 3%.)
NO_GAP = 0.03
# Plateau: validation still above this share of the start (the first logged train loss)
# at the end of a run that is no longer clearly falling: the model has barely learned.
BARELY_LEARNED = 0.85
# Plateau: a final learning rate at or above this share of the peak was never decayed.
PLATEAU_LR_RATIO = 0.5
# Well fit, but validation this far above train: the model is starting to memorise.
LARGE_GAP = 0.10
# Split problem: validation below train by more than this many standard errors of the train loss around
# the last evaluations (and by more than NO_GAP), at SPLIT_PERSISTENT of the second half's evaluations.
SPLIT_NOISE_SIGMAS = 3.0
SPLIT_PERSISTENT = 0.8
# Still improving: the tail's least-squares slope is this many standard errors below zero. Logged train
# losses are correlated from step to step, so the threshold is higher than the textbook 2.
IMPROVING_T = 3.0

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
    epochs_final: float | None
    first_nonfinite_step: int | None


@dataclass(frozen=True)
class _Trend:
    """How a loss moved across a stretch: mean of its first half vs mean of its second half."""

    drop: float  # relative fall, 0.05 = fell 5%; negative when it rose
    fall: float  # the same in nats
    slope_per_1k_steps: float


@dataclass(frozen=True)
class _Measurements:
    """Every number the verdict is based on; becomes Diagnosis.numbers (None = not available)."""

    first_step: int
    last_step: int
    tail_start_step: int  # the tail trend columns measure from here to the end
    late_start_step: int  # the late (second-half) columns measure from here to the end
    epochs_final: float | None = None
    first_nonfinite_step: int | None = None
    train_window: int | None = None  # rows in each train-loss averaging window
    train_loss_first: float | None = None  # the first logged train loss: where the run started
    train_loss_first_step: int | None = None
    train_loss_start: float | None = None  # mean of the first window
    train_loss_min: float | None = None  # lowest window mean
    train_loss_min_step: int | None = None
    train_loss_recent: float | None = None  # mean of the last window
    train_climb: float | None = None  # largest relative climb of a window mean above an earlier one
    train_climb_from_step: int | None = None
    train_climb_from_loss: float | None = None
    train_climb_to_step: int | None = None
    train_climb_to_loss: float | None = None
    train_tail_drop: float | None = None
    train_slope_per_1k_steps: float | None = None
    train_late_drop: float | None = None  # relative fall of the train loss over the second half
    train_late_fall: float | None = None  # the same in nats
    train_tail_slope_t: float | None = None  # the tail's least-squares slope in standard errors (< 0: falling)
    train_noise: float | None = None  # standard error of the train loss mean around the last evaluations
    val_below_train_share: float | None = None  # share of the second half's evaluations below train
    dropout: float | None = None  # the model's dropout (None: not known)
    val_points: int = 0
    val_window: int | None = None  # evaluations in each validation averaging window
    val_loss_initial: float | None = None
    val_loss_initial_step: int | None = None
    val_loss_best: float | None = None
    val_loss_best_step: int | None = None
    val_loss_final: float | None = None
    val_loss_final_step: int | None = None
    val_stopped_improving_step: int | None = None  # first evaluation within STOPPED_IMPROVING of the best
    val_rise_above_best: float | None = None  # last window mean vs best window mean, relative
    val_tail_drop: float | None = None
    val_slope_per_1k_steps: float | None = None
    val_late_drop: float | None = None  # relative fall of validation loss over the second half
    val_late_fall: float | None = None  # the same in nats
    val_perplexity_final: float | None = None
    val_perplexity_best: float | None = None
    train_loss_at_best_val: float | None = None  # train window mean up to the best evaluation
    train_val_gap: float | None = None  # last val window minus train over the same steps
    gap_growth: float | None = None  # train_late_fall - val_late_fall: how much the gap opened
    learning_rate_peak: float | None = None
    learning_rate_final: float | None = None


def diagnose(metrics: dict[str, Any], dropout: float | None = None) -> Diagnosis:
    """Judge a run from its metrics dict (as written by lmforge.train.metrics) and the model's dropout
    (a train loss measured with dropout on sits above the validation loss; None = not known)."""
    measured = replace(_measure(_read_curves(metrics)), dropout=dropout)
    verdict = _classify(measured)
    explanation, remedies = _EXPLAINERS[verdict](measured)
    benchmarks = _benchmark_notes(metrics) + preference_notes(metrics) + grpo_notes(metrics)
    text = "\n\n".join([f"Verdict: {verdict}", explanation, _describe_numbers(measured), *benchmarks,
                        "What to try:\n" + "\n".join(f"- {remedy}" for remedy in remedies)])
    return Diagnosis(verdict=verdict, text=text + "\n", numbers=asdict(measured))


def _benchmark_notes(metrics: dict[str, Any]) -> list[str]:
    """What the train.eval_tasks accuracies say, beside the loss: one paragraph, or none without benchmarks."""
    by_task: dict[str, list[dict]] = {}
    for row in metrics.get("benchmarks") or []:
        if row.get("metric") == "acc" and row.get("value") is not None:
            by_task.setdefault(row["task"], []).append(row)
    val = [v for v in metrics.get("val_loss") or [] if v is not None and math.isfinite(v)]
    loss_fell = len(val) >= 2 and val[-1] < val[0]
    lines = []
    for task, rows in sorted(by_task.items()):
        first, last = rows[0], rows[-1]
        chance, stderr = last.get("chance"), last.get("stderr") or 0.0
        where = f"{task}: accuracy {last['value']:.3f} +- {stderr:.3f} at step {last['step']}"
        if chance is not None and abs(last["value"] - chance) < 2 * stderr:
            why = (f"the validation loss fell from {val[0]:.3f} to {val[-1]:.3f} while this accuracy stayed within "
                   "noise of chance: the model has learned what the loss measures, not (yet) what this task tests. "
                   "Train longer or larger, or measure it on a task closer to its data" if loss_fell else
                   "within noise of chance")
            lines.append(f"{where} (chance {chance:.3f}); {why}.")
        else:
            lines.append(f"{where} (chance {chance if chance is None else round(chance, 3)}), from "
                         f"{first['value']:.3f} at step {first['step']}.")
    return ["Benchmarks:\n" + "\n".join(f"- {line}" for line in lines)] if lines else []


def write_diagnosis(run_dir: str | Path, metrics: dict[str, Any] | None = None,
                    dropout: float | None = None) -> Diagnosis:
    """Diagnose a run (metrics default to its training_metrics.json, dropout to its config.yaml's
    model.dropout) and write diagnosis.txt."""
    run_dir = Path(run_dir)
    if dropout is None:
        dropout = _configured_dropout(run_dir)
    diagnosis = diagnose(load_metrics(run_dir) if metrics is None else metrics, dropout)
    (run_dir / DIAGNOSIS_FILENAME).write_text(diagnosis.text, encoding="utf-8")
    return diagnosis


def _configured_dropout(run_dir: Path) -> float | None:
    """model.dropout from the run's config.yaml, if it has one."""
    try:
        import yaml
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        value = config["model"]["dropout"]
        return float(value) if value is not None else None
    except (OSError, KeyError, TypeError, ValueError, ImportError, AttributeError):
        return None


# --- reading and measuring the curves ---------------------------------------------------


def _read_curves(metrics: dict[str, Any]) -> _Curves:
    steps = metrics.get("steps") or []
    nonfinite = set(metrics.get(NONFINITE_KEY) or [])
    nonfinite.update(step for step, loss in zip(steps, metrics.get("train_loss", []))
                     if loss is not None and not math.isfinite(loss))
    epochs = [value for _, value in _finite_points(steps, metrics.get("epochs") or [])]
    return _Curves(
        train=_finite_points(steps, metrics.get("train_loss", [])),
        val=_finite_points(steps, metrics.get("val_loss", [])),
        learning_rates=[value for _, value in _finite_points(steps, metrics.get("learning_rate", []))],
        first_step=steps[0] if steps else 0,
        last_step=steps[-1] if steps else 0,
        epochs_final=epochs[-1] if epochs else None,
        first_nonfinite_step=min(nonfinite, default=None),
    )


def _finite_points(steps: list[int], values: list[float | None]) -> Points:
    return [(step, value) for step, value in zip(steps, values) if value is not None and math.isfinite(value)]


def _measure(curves: _Curves) -> _Measurements:
    tail_start = _last_part_start(curves, TAIL_FRACTION)
    late_start = _last_part_start(curves, LATE_FRACTION)
    train, val = _train_numbers(curves, tail_start, late_start), _val_numbers(curves.val, tail_start, late_start)
    gap_growth = None
    if train.get("train_late_fall") is not None and val.get("val_late_fall") is not None:
        gap_growth = train["train_late_fall"] - val["val_late_fall"]
    return _Measurements(
        first_step=curves.first_step,
        last_step=curves.last_step,
        tail_start_step=tail_start,
        late_start_step=late_start,
        epochs_final=curves.epochs_final,
        first_nonfinite_step=curves.first_nonfinite_step,
        **train,
        **val,
        **_gap_numbers(curves),
        **_split_numbers(curves, late_start),
        train_tail_slope_t=_slope_t(_tail(curves.train, tail_start, min_points=4)),
        gap_growth=gap_growth,
        learning_rate_peak=max(curves.learning_rates, default=None),
        learning_rate_final=curves.learning_rates[-1] if curves.learning_rates else None,
    )


def _last_part_start(curves: _Curves, fraction: float) -> int:
    """The step where the last `fraction` of the run begins."""
    return round(curves.last_step - fraction * (curves.last_step - curves.first_step))


def _train_numbers(curves: _Curves, tail_start: int, late_start: int) -> dict[str, Any]:
    if not curves.train:
        return {}
    window = _window_size(len(curves.train), TRAIN_WINDOW_FRACTION)
    smoothed = _rolling_means(curves.train, window)
    min_step, min_loss = min(smoothed, key=lambda point: point[1])
    trend = _trend(_tail(curves.train, tail_start, min_points=4))
    late_trend = _trend(_tail(curves.train, late_start, min_points=4))
    return {
        "train_window": window,
        "train_loss_first": curves.train[0][1],
        "train_loss_first_step": curves.train[0][0],
        "train_loss_start": smoothed[0][1],
        "train_loss_min": min_loss,
        "train_loss_min_step": min_step,
        "train_loss_recent": smoothed[-1][1],
        **_largest_climb(smoothed),
        "train_tail_drop": trend.drop if trend else None,
        "train_slope_per_1k_steps": trend.slope_per_1k_steps if trend else None,
        "train_late_drop": late_trend.drop if late_trend else None,
        "train_late_fall": late_trend.fall if late_trend else None,
    }


def _largest_climb(smoothed: Points) -> dict[str, Any]:
    """The largest climb of the smoothed train loss above the lowest it had been before."""
    best: dict[str, Any] = {"train_climb": 0.0}
    low_step, low = smoothed[0]
    for step, loss in smoothed:
        if loss < low:
            low_step, low = step, loss
        climb = (loss - low) / abs(low) if low else 0.0
        if loss - low > DIVERGENCE_MIN_RISE_NATS and climb > best["train_climb"]:
            best = {"train_climb": climb, "train_climb_from_step": low_step, "train_climb_from_loss": low,
                    "train_climb_to_step": step, "train_climb_to_loss": loss}
    return best


def _val_numbers(val: Points, tail_start: int, late_start: int) -> dict[str, Any]:
    if not val:
        return {}
    best_step, best_loss = min(val, key=lambda point: point[1])
    window = _window_size(len(val), VAL_WINDOW_FRACTION)
    smoothed_losses = [loss for _, loss in _rolling_means(val, window)]
    trend = _trend(_tail(val, tail_start, min_points=2))
    late_trend = _trend(_tail(val, late_start, min_points=2))
    stopped = next(step for step, loss in val if loss <= best_loss * (1 + STOPPED_IMPROVING))
    return {
        "val_points": len(val),
        "val_window": window,
        "val_loss_initial": val[0][1],
        "val_loss_initial_step": val[0][0],
        "val_loss_best": best_loss,
        "val_loss_best_step": best_step,
        "val_loss_final": val[-1][1],
        "val_loss_final_step": val[-1][0],
        "val_stopped_improving_step": stopped,
        "val_rise_above_best": smoothed_losses[-1] / min(smoothed_losses) - 1,
        "val_tail_drop": trend.drop if trend else None,
        "val_slope_per_1k_steps": trend.slope_per_1k_steps if trend else None,
        "val_late_drop": late_trend.drop if late_trend else None,
        "val_late_fall": late_trend.fall if late_trend else None,
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
    # The gap: the last validation window against the train loss over the same steps (at
    # least a train window), so that neither one noisy evaluation nor one batch decides it.
    last_val = curves.val[-_window_size(len(curves.val), VAL_WINDOW_FRACTION):]
    same_steps = [loss for step, loss in curves.train if step >= last_val[0][0]]
    recent_train = same_steps if len(same_steps) >= window else [loss for _, loss in curves.train[-window:]]
    return {
        "train_loss_at_best_val": _mean(at_best),
        "train_val_gap": _mean([loss for _, loss in last_val]) - _mean(recent_train),
    }


def _split_numbers(curves: _Curves, late_start: int) -> dict[str, Any]:
    """How often validation sat below the train loss around it in the second half, and the train noise."""
    if not curves.train or not curves.val:
        return {}
    window = max(_window_size(len(curves.train), TRAIN_WINDOW_FRACTION), 2)
    below = []
    for val_step, val_loss in [point for point in curves.val if point[0] >= late_start]:
        around = [loss for step, loss in curves.train if step <= val_step][-window:]
        if around:
            below.append(val_loss < _mean(around))
    last_val_step = curves.val[-_window_size(len(curves.val), VAL_WINDOW_FRACTION)][0]
    recent = [loss for step, loss in curves.train if step >= last_val_step]
    recent = recent if len(recent) >= window else [loss for _, loss in curves.train[-window:]]
    noise = statistics.stdev(recent) / math.sqrt(len(recent)) if len(recent) > 1 else None
    return {"val_below_train_share": sum(below) / len(below) if below else None, "train_noise": noise}


def _slope_t(points: Points) -> float | None:
    """The least-squares slope of loss against step, in standard errors (None with too few points)."""
    n = len(points)
    if n < 4:
        return None
    steps, losses = [float(step) for step, _ in points], [loss for _, loss in points]
    mean_step, mean_loss = _mean(steps), _mean(losses)
    sxx = sum((x - mean_step) ** 2 for x in steps)
    if sxx == 0:
        return None
    slope = sum((x - mean_step) * (y - mean_loss) for x, y in zip(steps, losses)) / sxx
    residual = sum((y - mean_loss - slope * (x - mean_step)) ** 2 for x, y in zip(steps, losses))
    standard_error = math.sqrt(residual / (n - 2) / sxx)
    if standard_error == 0:
        return -math.inf if slope < 0 else (math.inf if slope > 0 else 0.0)
    return slope / standard_error


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
    return _Trend(drop=(first_loss - second_loss) / abs(first_loss), fall=first_loss - second_loss,
                  slope_per_1k_steps=1000 * (second_loss - first_loss) / max(steps_apart, 1))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --- the rules ----------------------------------------------------------------------------


def _classify(m: _Measurements) -> str:
    if m.first_nonfinite_step is not None or _train_blew_up(m) or _both_rising(m):
        return "diverging"
    if m.val_points < MIN_VAL_POINTS:
        return "too short to judge"
    if _val_below_train(m):
        return "split problem"
    if m.val_rise_above_best > OVERFIT_RISE:
        return "over-fit"  # _both_rising() was False, so the train loss did not rise with it
    if _gap_opening(m):
        return "over-fit"  # starting to: validation stopped improving while train kept falling
    if _clearly_falling(m):
        return "under-fit"
    if _barely_learned(m):
        return "plateau"
    if _no_gap(m) and _still_falling(m):
        return "under-fit"
    if _lr_not_decayed(m) or _no_gap(m):
        return "plateau"  # the last one: level with train and flat, so learning stalled
    return "well fit"


def _val_below_train(m: _Measurements) -> bool:
    """Validation below train beyond noise for most of the second half, with dropout off."""
    if m.dropout is None or m.dropout > 0 or m.train_val_gap is None or m.val_below_train_share is None:
        return False
    beyond_noise = -m.train_val_gap > max(NO_GAP * abs(m.val_loss_final), SPLIT_NOISE_SIGMAS * (m.train_noise or 0.0))
    return beyond_noise and m.val_below_train_share >= SPLIT_PERSISTENT


def _still_improving(m: _Measurements) -> bool:
    """The train loss was still falling, clearly beyond its noise, when the run ended."""
    return m.train_tail_slope_t is not None and m.train_tail_slope_t < -IMPROVING_T


def _train_blew_up(m: _Measurements) -> bool:
    return (m.train_climb or 0.0) > DIVERGENCE_RISE  # _largest_climb() already required the nats


def _both_rising(m: _Measurements) -> bool:
    if m.val_points < MIN_VAL_POINTS or m.train_loss_recent is None:
        return False
    train_rose = m.train_loss_recent > (1 + OVERFIT_RISE) * m.train_loss_at_best_val
    return m.val_rise_above_best > OVERFIT_RISE and train_rose


def _gap_opening(m: _Measurements) -> bool:
    if m.val_tail_drop is None or m.gap_growth is None:
        return False
    return m.val_tail_drop < FLAT_DROP and m.gap_growth > GAP_GROWTH * m.val_loss_final


def _clearly_falling(m: _Measurements) -> bool:
    return (m.train_tail_drop or 0.0) > UNDERFIT_DROP and (m.val_tail_drop or 0.0) > UNDERFIT_DROP


def _still_falling(m: _Measurements) -> bool:
    """Both losses still falling, a little: over the tail, or over the whole second half."""
    over_tail = min(m.train_tail_drop or 0.0, m.val_tail_drop or 0.0) > FLAT_DROP
    return over_tail or min(m.train_late_drop or 0.0, m.val_late_drop or 0.0) > STALL_DROP


def _no_gap(m: _Measurements) -> bool:
    return m.train_val_gap is not None and abs(m.train_val_gap) < NO_GAP * m.val_loss_final


def _barely_learned(m: _Measurements) -> bool:
    if m.train_loss_first is None or (m.val_tail_drop or 0.0) > UNDERFIT_DROP:  # falling fast: just started
        return False
    return m.val_loss_final >= BARELY_LEARNED * m.train_loss_first


def _lr_not_decayed(m: _Measurements) -> bool:
    if not m.learning_rate_peak:  # no learning rates logged: cannot tell, assume decayed
        return False
    return m.learning_rate_final >= PLATEAU_LR_RATIO * m.learning_rate_peak


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
        start = m.train_climb_from_step
        explanation = (f"Training diverged: the train loss was at {m.train_climb_from_loss:.3f} around "
                       f"step {start} and then climbed to {m.train_climb_to_loss:.3f} around step "
                       f"{m.train_climb_to_step} (means of {m.train_window} logged steps), "
                       f"{_share(m.train_climb)} up. A healthy train loss only goes down.")
        if m.train_climb_to_step < m.last_step:
            explanation += (f" It has come down since (to {m.train_loss_recent:.3f}), but the run was "
                            "unstable and the jump can undo what was learned.")
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


def _explain_split_problem(m: _Measurements) -> tuple[str, list[str]]:
    below = m.val_below_train_share or 0.0
    explanation = (f"Split problem: the validation loss stayed below the train loss at {_share(below)} of the "
                   f"evaluations since step {m.late_start_step} and ended {-m.train_val_gap:.3f} below it "
                   f"(gap {m.train_val_gap:+.3f}; the train loss's own noise there is about "
                   f"{m.train_noise or 0.0:.3f}), with dropout off. A model cannot predict text it has never "
                   "seen better than its training text unless the validation text is easier (a different "
                   "mix of documents: more boilerplate, tables or repeated text) or overlaps the training "
                   "text (leakage: the same or nearly the same documents on both sides). Either way the "
                   "validation loss does not measure how well the model generalises, and verdicts built on it "
                   "(over-fit, well fit) cannot be trusted.")
    if _still_improving(m):
        explanation += f" {_improving_sentence(m)}"
    return explanation, [
        "Hold out a bigger or a different share: raise data.val_fraction, or try another data.seed and see "
        "how much the gap moves (lmforge prepare's stratified split takes validation documents evenly from "
        "every format, folder and size).",
        "Look for leakage: keep exact and near-duplicate removal on in ingest (ingest.clean), and check that "
        "no document appears in both splits (documents.jsonl and meta.json of the prepared data).",
        "Look at what differs: compare a few validation documents with training ones; generated files or "
        "data tables on one side only are a common cause (ingest's code-quality filter drops them from code).",
        "If validation is another kind of text on purpose (a benchmark), read the two losses as two tasks.",
    ]


def _improving_sentence(m: _Measurements) -> str:
    return (f"It was still improving when the schedule ended: over the last part (from step {m.tail_start_step}) "
            f"the train loss fell {-(m.train_slope_per_1k_steps or 0.0):.3f} per 1000 steps, "
            f"{-m.train_tail_slope_t:.1f} standard errors below flat.")


def _explain_overfit(m: _Measurements) -> tuple[str, list[str]]:
    best = m.val_loss_best_step
    if m.val_rise_above_best > OVERFIT_RISE:
        explanation = (f"Over-fitting since step {best} (best val {m.val_loss_best:.3f} at step {best}, "
                       f"now {m.val_loss_final:.3f}). Averaged over the last {m.val_window} evaluation(s), the "
                       f"validation loss is {_share(m.val_rise_above_best)} above its best, while the train "
                       f"loss did not go up with it ({m.train_loss_at_best_val:.3f} -> {m.train_loss_recent:.3f}). "
                       "The model is memorising its training documents instead of learning what carries "
                       "over to new text.")
        stop = f"Stop earlier (early stopping): training past step {best} only made the model worse."
    else:
        since = m.val_stopped_improving_step
        explanation = (f"Starting to over-fit since step {since}: the validation loss has hardly improved since "
                       f"then (best {m.val_loss_best:.3f} at step {best}, now {m.val_loss_final:.3f}), while the "
                       f"train loss kept falling. Over the second half of the run (from step "
                       f"{m.late_start_step}) the train loss {_movement_nats(m.train_late_fall)} but the "
                       f"validation loss {_movement_nats(m.val_late_fall)}, so the train-val gap grew to "
                       f"{m.train_val_gap:+.3f}. "
                       "The model has begun to memorise its training documents; validation has not risen "
                       "much yet, but more steps will not improve it.")
        stop = (f"Stop about here: steps after {since} hardly helped. Early stopping "
                "(train.early_stopping_patience) ends a run once validation stops improving.")
    return explanation, [
        f"The best/ checkpoint already holds the model from step {best}: use that one.",
        stop,
        "More training data is the best cure.",
        "Regularise: dropout (0.1-0.2) or more weight decay (e.g. 0.1).",
        "A smaller model memorises less.",
    ]


def _explain_underfit(m: _Measurements) -> tuple[str, list[str]]:
    explanation = (f"Under-fit: the model is still learning. Over the last part of the run (from step "
                   f"{m.tail_start_step}) the train loss {_movement(m.train_tail_drop)} and the validation "
                   f"loss {_movement(m.val_tail_drop)}")
    if not _clearly_falling(m) and m.train_late_drop is not None and m.val_late_drop is not None:
        explanation += (f"; over the second half (from step {m.late_start_step}) the train loss "
                        f"{_movement(m.train_late_drop)} and validation {_movement(m.val_late_drop)}")
    explanation += "."
    if _no_gap(m):
        explanation += " Validation is level with train, so the model is not memorising anything yet."
    if m.epochs_final is not None and m.epochs_final < 1:
        explanation += f" The run saw only {_share(m.epochs_final)} of its training data."
    if _still_improving(m):
        explanation += f" {_improving_sentence(m)} More steps should still help."
        return explanation, [
            "Train longer (more steps, epochs or train.max_time): the schedule ended while the loss still fell.",
            "If the loss has fallen slowly all along, a higher learning rate may help.",
            "If it is levelling off with validation level with train, a bigger model can learn more.",
        ]
    explanation += (f" But it flattened as the schedule ended (the train loss's slope over the last part is "
                    f"within {IMPROVING_T:g} standard errors of zero), so more steps of the same run would add "
                    "little: the model has room to learn that this schedule did not use.")
    return explanation, [
        "A bigger model (more layers or width) can learn more from the same data.",
        "If the loss has fallen slowly all along, a higher learning rate may help.",
        "A longer run helps only with a schedule stretched to match (a new run, not a resume).",
    ]


def _explain_plateau(m: _Measurements) -> tuple[str, list[str]]:
    start = (f"where training started ({m.train_loss_first:.3f}, the first logged train loss; an untrained "
             "model scores about ln of the vocabulary size)")
    data_remedy = ("Check the data and tokenizer: a tokenizer that does not fit the text, or very repetitive "
                   "or random text, caps how low the loss can go.")
    if _barely_learned(m):
        explanation = (f"Plateau: the model has barely learned anything. The validation loss ended at "
                       f"{m.val_loss_final:.3f}, still {_share(m.val_loss_final / m.train_loss_first)} of {start}.")
        return explanation, [
            f"Check the learning rate (this run peaked at {_lr(m.learning_rate_peak)}): small models usually "
            "train well around 1e-3; far lower makes the loss creep down, far higher keeps it bouncing high.",
            data_remedy,
        ]
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
    explanation = (f"Plateau: learning stalled. Over the second half of the run (from step {m.late_start_step}) "
                   f"the validation loss {_movement(m.val_late_drop)}, and it is level with the train loss "
                   f"(gap {m.train_val_gap:+.3f}): the model is not memorising, it has stopped learning. It "
                   f"ended at {m.val_loss_final:.3f}, {_share(m.val_loss_final / m.train_loss_first)} of {start}.")
    return explanation, [
        "Try a bigger model: this one seems to have learned all it can.",
        "If the learning rate was small, try a higher one.",
        data_remedy,
    ]


def _explain_well_fit(m: _Measurements) -> tuple[str, list[str]]:
    shape = "" if _still_improving(m) else "the curves have flattened out as the schedule ends, "
    explanation = (f"Well fit: the validation loss ended at {m.val_loss_final:.3f}, close to its best "
                   f"({m.val_loss_best:.3f} at step {m.val_loss_best_step}), {shape}and the train-val gap is "
                   f"{m.train_val_gap:+.3f}.")
    if m.train_val_gap > LARGE_GAP * m.val_loss_final:
        explanation += (" That gap is large: the model is starting to memorise, so more data would help "
                        "more than more steps.")
    if _still_improving(m):
        explanation += f" {_improving_sentence(m)}"
        return explanation, [
            f"Use the best/ checkpoint (step {m.val_loss_best_step}).",
            "A longer run (more steps or train.max_time) should still lower the loss a little.",
        ]
    return explanation, [
        f"Nothing to fix. Use the best/ checkpoint (step {m.val_loss_best_step}).",
        "To go further, grow the data and the model together; more steps alone will not help much.",
    ]


_EXPLAINERS: dict[str, Callable[[_Measurements], tuple[str, list[str]]]] = {
    "diverging": _explain_diverging,
    "too short to judge": _explain_too_short,
    "split problem": _explain_split_problem,
    "over-fit": _explain_overfit,
    "under-fit": _explain_underfit,
    "plateau": _explain_plateau,
    "well fit": _explain_well_fit,
}


def _describe_numbers(m: _Measurements) -> str:
    """The numbers paragraph shared by every verdict, built from whatever was measured."""
    sentences = []
    if m.train_loss_first is not None:
        sentences.append(f"The train loss started at {m.train_loss_first:.3f} (step {m.train_loss_first_step}).")
    if m.val_points:
        sentences.append(
            f"The validation loss was {m.val_loss_initial:.3f} at the first evaluation (step "
            f"{m.val_loss_initial_step}), "
            f"was best at {m.val_loss_best:.3f} (step {m.val_loss_best_step}) and ended at "
            f"{m.val_loss_final:.3f} (step {m.val_loss_final_step}), a perplexity of "
            f"{_number(m.val_perplexity_final)} (best {_number(m.val_perplexity_best)}).")
    if m.train_loss_recent is not None:
        sentences.append(f"The train loss averaged {m.train_loss_recent:.3f} over the last "
                         f"{m.train_window} logged step(s).")
    if m.train_val_gap is not None:
        sentences.append(f"The train-val gap (the last {m.val_window} evaluation(s) minus the train loss around "
                         f"them) is {m.train_val_gap:+.3f}.")
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
    if m.epochs_final is not None:
        sentences.append(f"The run covered {m.epochs_final:.2f} epochs.")
    return "The numbers: " + (" ".join(sentences) or "nothing has been logged yet.")


def _share(fraction: float) -> str:
    """0.043 -> '4.3%'."""
    return f"{100 * fraction:.1f}%"


def _movement(drop: float) -> str:
    """A relative drop in words: 0.05 -> 'fell 5.0%', -0.02 -> 'rose 2.0%'."""
    if abs(drop) < 0.0005:
        return "stayed level"
    return f"fell {_share(drop)}" if drop > 0 else f"rose {_share(-drop)}"


def _movement_nats(fall: float) -> str:
    """A fall in nats in words: 0.31 -> 'fell 0.310', -0.05 -> 'rose 0.050'."""
    return f"fell {fall:.3f}" if fall >= 0 else f"rose {-fall:.3f}"


def _lr(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
