"""Training plots: loss and learning rate per step, and loss per epoch, saved as PNG files.

The plots read the column dict written by `lmforge.train.metrics` (missing or non-finite
values are None there). matplotlib is imported inside the functions so `import lmforge`
stays fast, and figures are drawn straight onto an Agg (PNG) canvas instead of through
pyplot: that works on a headless server and never switches the plotting backend of the
caller, such as a notebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.train.metrics import NONFINITE_KEY, load_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAINING_CURVE_FILENAME = "training_curve.png"
LOSS_BY_EPOCH_FILENAME = "loss_by_epoch.png"

TRAIN_COLOR = "tab:blue"
VAL_COLOR = "tab:orange"


@dataclass(frozen=True)
class EpochSummary:
    """The losses of one epoch."""

    epoch: int  # 1-based, as people count epochs
    mean_train_loss: float | None  # None when no train loss of the epoch was finite
    last_val_loss: float | None  # None when the epoch had no evaluation
    partial: bool  # the log ends before this epoch was finished


def epoch_index(epoch: float) -> int:
    """0-based epoch a row belongs to: floor(epoch), except at exact epoch boundaries.

    A row logged at epoch 2.0 is the last step of the second epoch, so it counts toward
    index 1, not 2; plain floor() would invent a third epoch holding a single row. The
    rounding absorbs float error such as 2.9999999 for what is really 3.0.
    """
    return max(math.ceil(round(epoch, 6)) - 1, 0)


def summarize_epochs(metrics: dict[str, Any]) -> list[EpochSummary]:
    """Mean train loss and last validation loss of every epoch that has rows."""
    train_by_epoch: dict[int, list[float]] = {}
    last_val_by_epoch: dict[int, float | None] = {}
    for epoch, train, val in zip(metrics["epochs"], metrics["train_loss"], metrics["val_loss"]):
        index = epoch_index(epoch)
        train_by_epoch.setdefault(index, [])
        last_val_by_epoch.setdefault(index, None)
        if _is_finite(train):
            train_by_epoch[index].append(train)
        if _is_finite(val):
            last_val_by_epoch[index] = val
    epochs_trained = max(metrics["epochs"], default=0.0)
    return [
        EpochSummary(
            epoch=index + 1,
            mean_train_loss=sum(losses) / len(losses) if losses else None,
            last_val_loss=last_val_by_epoch[index],
            partial=epochs_trained < index + 1 - 1e-6,
        )
        for index, losses in sorted(train_by_epoch.items())
    ]


def plot_training_curve(metrics: dict[str, Any], path: str | Path) -> Path:
    """Save training_curve_figure() as a PNG at `path`."""
    return _save(training_curve_figure(metrics), path)


def plot_loss_by_epoch(metrics: dict[str, Any], path: str | Path) -> Path:
    """Save loss_by_epoch_figure() as a PNG at `path`."""
    return _save(loss_by_epoch_figure(metrics), path)


def training_curve_figure(metrics: dict[str, Any]) -> Figure:
    """Train and validation loss (top) and learning rate on a log scale (bottom) against step."""
    if not metrics.get("steps"):
        return _no_data_figure("Training curve")
    accuracies = _benchmark_accuracies(metrics)
    rewards = _objective_rows(metrics, "reward_accuracy")
    grpo = _objective_rows(metrics, "reward_mean").get("train", [])
    ratios = [3, 1] + [2] * bool(accuracies) + [2] * bool(rewards) + [2] * bool(grpo)
    figure = _new_figure(figsize=(9, 3 + 2 * len(ratios)))
    axes = figure.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    _draw_losses(axes[0], metrics)
    _draw_learning_rate(axes[1], metrics)
    if accuracies:
        _draw_benchmarks(axes[2], accuracies)
    if rewards:
        _draw_rewards(axes[-1], metrics)
    if grpo:
        _draw_grpo(axes[-1], grpo)
    return figure


def loss_by_epoch_figure(metrics: dict[str, Any]) -> Figure:
    """Mean train loss and last validation loss of each epoch, against the epoch number."""
    if not metrics.get("steps"):
        return _no_data_figure("Loss by epoch")
    summaries = summarize_epochs(metrics)
    epochs = [summary.epoch for summary in summaries]
    figure = _new_figure(figsize=(8, 5))
    axes = figure.subplots()
    axes.plot(epochs, _as_floats(s.mean_train_loss for s in summaries), "o-",
              color=TRAIN_COLOR, label="train loss (mean over the epoch)")
    val_points = [(s.epoch, s.last_val_loss) for s in summaries if s.last_val_loss is not None]
    if val_points:
        axes.plot(*zip(*val_points), "s-", color=VAL_COLOR, label="val loss (last evaluation of the epoch)")
    axes.set_title(_epoch_plot_title(summaries, epochs_trained=max(metrics["epochs"])))
    if len(summaries) == 1 and summaries[0].partial:
        axes.set_xticks([1], ["1 (partial)"])
    else:
        axes.xaxis.set_major_locator(_integer_ticks())
    axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    _label(axes, xlabel="epoch", ylabel=_loss_name(metrics))
    return figure


def write_plots(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> list[Path]:
    """Write training_curve.png and loss_by_epoch.png into run_dir; metrics default to its file."""
    run_dir = Path(run_dir)
    if metrics is None:
        metrics = load_metrics(run_dir)
    return [
        plot_training_curve(metrics, run_dir / TRAINING_CURVE_FILENAME),
        plot_loss_by_epoch(metrics, run_dir / LOSS_BY_EPOCH_FILENAME),
    ]


def _epoch_plot_title(summaries: list[EpochSummary], epochs_trained: float) -> str:
    last = summaries[-1]
    if len(summaries) == 1 and last.partial:
        return f"Loss by epoch: partial epoch only ({epochs_trained:.2f} of the first epoch)"
    note = f"; epoch {last.epoch} is partial" if last.partial else ""
    return f"Loss by epoch ({epochs_trained:.2f} epochs trained{note})"


def _draw_losses(axes, metrics: dict[str, Any]) -> None:
    steps = metrics["steps"]
    axes.plot(steps, _as_floats(metrics["train_loss"]), color=TRAIN_COLOR, linewidth=1, label="train loss")
    val_points = [(step, loss) for step, loss in zip(steps, metrics["val_loss"]) if _is_finite(loss)]
    if val_points:
        axes.plot(*zip(*val_points), "o-", color=VAL_COLOR, markersize=4, label="val loss")
    nonfinite_steps = metrics.get(NONFINITE_KEY) or []
    if nonfinite_steps:
        # A NaN loss leaves a gap in the line; the marker says why the line stops.
        axes.axvline(nonfinite_steps[0], color="tab:red", linestyle="--",
                     label=f"loss not finite from step {nonfinite_steps[0]}")
    axes.set_title("Loss")
    _label(axes, xlabel=None, ylabel=_loss_name(metrics))


def _draw_learning_rate(axes, metrics: dict[str, Any]) -> None:
    learning_rates = _as_floats(metrics["learning_rate"])
    axes.plot(metrics["steps"], learning_rates, color="tab:green", label="learning rate")
    # A log scale shows warmup and decay clearly, but needs at least one positive value.
    if any(rate > 0 for rate in learning_rates):
        axes.set_yscale("log")
    axes.set_title("Learning rate schedule")
    _label(axes, xlabel="step", ylabel="learning rate")


def _benchmark_accuracies(metrics: dict[str, Any]) -> dict[str, list[dict]]:
    """train.eval_tasks accuracy rows by task (the "acc" metric of multiple-choice tasks)."""
    by_task: dict[str, list[dict]] = {}
    for row in metrics.get("benchmarks") or []:
        if row.get("metric") == "acc" and _is_finite(row.get("value")):
            by_task.setdefault(row["task"], []).append(row)
    return by_task


def _draw_benchmarks(axes, accuracies: dict[str, list[dict]]) -> None:
    """Each task's accuracy with its standard error, and its chance level as a dashed line of the same colour."""
    for index, (task, rows) in enumerate(sorted(accuracies.items())):
        color = f"C{(index + 3) % 10}"
        axes.errorbar([r["step"] for r in rows], [r["value"] for r in rows],
                      yerr=[r.get("stderr") or 0.0 for r in rows], fmt="o-", color=color, markersize=4,
                      capsize=2, label=task)
        if rows[-1].get("chance") is not None:
            axes.axhline(rows[-1]["chance"], color=color, linestyle="--", linewidth=1)
    axes.set_title("Benchmarks (train.eval_tasks): accuracy, dashed = chance")
    _label(axes, xlabel="step", ylabel="accuracy")


def _loss_name(metrics: dict[str, Any]) -> str:
    """What the loss axis measures: cross-entropy, unless an objective of its own logged statistics (DPO's loss
    is a log-sigmoid of reward margins, GRPO's a policy-gradient surrogate)."""
    return "loss" if metrics.get("objective") else "cross-entropy loss"


def _objective_rows(metrics: dict[str, Any], name: str) -> dict[str, list[dict]]:
    """The objective's rows holding `name` (e.g. DPO's reward_accuracy), by split (train, val)."""
    by_split: dict[str, list[dict]] = {}
    for row in metrics.get("objective") or []:
        if _is_finite(row.get(name)):
            by_split.setdefault(row["split"], []).append(row)
    return by_split


def _draw_rewards(axes, metrics: dict[str, Any]) -> None:
    """Preference tuning: reward accuracy (left axis, chance 0.5 dashed) and reward margin (right axis)."""
    colors = {"train": TRAIN_COLOR, "val": VAL_COLOR}
    margin_axes = axes.twinx()
    for split, rows in sorted(_objective_rows(metrics, "reward_accuracy").items()):
        steps = [r["step"] for r in rows]
        axes.plot(steps, [r["reward_accuracy"] for r in rows], "o-" if split == "val" else "-",
                  color=colors.get(split), markersize=3, label=f"{split} reward accuracy")
        margin_axes.plot(steps, [r.get("reward_margin") for r in rows], ":", color=colors.get(split),
                         label=f"{split} reward margin")
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_ylim(0, 1.02)
    margin_axes.set_ylabel("reward margin (dotted)")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title("Preference: reward accuracy (chance 0.5 dashed) and margin")
    _label(axes, xlabel="step", ylabel="reward accuracy")


def _draw_grpo(axes, rows: list[dict]) -> None:
    """GRPO: mean reward +- its batch spread (left axis); KL to the reference and entropy (right axis)."""
    steps = [r["step"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    spread = [r.get("reward_std") or 0.0 for r in rows]
    axes.plot(steps, mean, "-", color=TRAIN_COLOR, label="mean reward")
    axes.fill_between(steps, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)],
                      color=TRAIN_COLOR, alpha=0.15)
    other = axes.twinx()
    other.plot(steps, [r["kl"] for r in rows], ":", color="tab:red", label="KL to reference")
    other.plot(steps, [r["entropy"] for r in rows], "--", color="tab:green", label="entropy")
    other.set_ylabel("KL (dotted), entropy (dashed)")
    axes.legend(loc="upper left", fontsize="small")
    other.legend(loc="upper right", fontsize="small")
    axes.set_title("GRPO: mean reward (band: spread in the batch), KL and entropy per token")
    _label(axes, xlabel="step", ylabel="reward")


def _label(axes, xlabel: str | None, ylabel: str) -> None:
    if xlabel:
        axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)  # whole epoch numbers, thinned out for long runs


def _no_data_figure(title: str) -> Figure:
    figure = _new_figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.set_title(title)
    axes.text(0.5, 0.5, "no data yet", ha="center", va="center", fontsize=16, color="gray",
              transform=axes.transAxes)
    axes.set_axis_off()
    return figure


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure; savefig then renders a PNG
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _as_floats(values) -> list[float]:
    """None becomes NaN, which matplotlib draws as a gap in the line."""
    return [math.nan if value is None else float(value) for value in values]


def _is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
