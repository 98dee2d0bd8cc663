"""Tests for lmforge.train.plots: the training-curve and loss-by-epoch PNGs."""

import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from lmforge.train import plots as plots_module
from lmforge.train.metrics import METRIC_KEYS, MetricsLog
from lmforge.train.plots import (
    EpochSummary,
    loss_by_epoch_figure,
    plot_loss_by_epoch,
    plot_training_curve,
    summarize_epochs,
    training_curve_figure,
    write_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_metrics(epochs, train_loss, val_loss=None, learning_rate=None):
    """A metrics dict like the one training_metrics.json holds, one row per epoch value."""
    rows = len(epochs)
    metrics = {key: [None] * rows for key in METRIC_KEYS}
    metrics.update(steps=[10 * (i + 1) for i in range(rows)], epochs=list(epochs),
                   train_loss=list(train_loss), val_loss=list(val_loss or [None] * rows),
                   learning_rate=list(learning_rate or [1e-3] * rows),
                   tokens_seen=[640 * (i + 1) for i in range(rows)], nonfinite_steps=[])
    return metrics


def assert_real_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # a drawn figure, not an empty canvas
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim >= 2 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_write_plots_reads_the_run_folder_and_writes_both_pngs(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(0, 300, 10):
        log.log(step=step, epoch=step / 100, train_loss=4 * math.exp(-step / 100) + 1,
                learning_rate=1e-3 * (1 - step / 400), tokens_seen=step * 64,
                val_loss=4 * math.exp(-step / 100) + 1.2 if step % 50 == 0 else None)

    paths = write_plots(tmp_path)

    assert [path.name for path in paths] == ["training_curve.png", "loss_by_epoch.png"]
    for path in paths:
        assert_real_png(path)


@pytest.mark.parametrize(("plot", "figure"), [(plot_training_curve, training_curve_figure),
                                              (plot_loss_by_epoch, loss_by_epoch_figure)])
def test_empty_metrics_give_a_no_data_figure(tmp_path, plot, figure):
    empty = {key: [] for key in METRIC_KEYS}

    assert_real_png(plot(empty, tmp_path / "plot.png"))
    assert [text.get_text() for text in figure(empty).axes[0].texts] == ["no data yet"]


def test_missing_val_losses_and_nan_train_losses_still_plot(tmp_path):
    metrics = make_metrics(epochs=[0.5, 1.0, 1.5, 2.0], train_loss=[3.0, None, float("nan"), 2.0])
    metrics["nonfinite_steps"] = [20, 30]

    paths = write_plots(tmp_path, metrics)

    for path in paths:
        assert_real_png(path)


def test_training_curve_has_loss_panel_and_log_scale_learning_rate_panel():
    metrics = make_metrics(epochs=[0.25, 0.5, 0.75, 1.0], train_loss=[4.0, 3.0, 2.5, 2.2],
                           val_loss=[None, 3.2, None, 2.6], learning_rate=[1e-4, 1e-3, 5e-4, 1e-4])

    loss_axes, lr_axes = training_curve_figure(metrics).axes

    assert [line.get_label() for line in loss_axes.get_lines()] == ["train loss", "val loss"]
    val_line = loss_axes.get_lines()[1]
    assert list(val_line.get_xdata()) == [20, 40]  # only the rows that were evaluated
    assert lr_axes.get_yscale() == "log"
    assert lr_axes.get_xlabel() == "step"


def test_learning_rate_of_zero_everywhere_keeps_a_linear_scale():
    metrics = make_metrics(epochs=[0.5, 1.0], train_loss=[3.0, 2.0], learning_rate=[0.0, 0.0])

    assert training_curve_figure(metrics).axes[1].get_yscale() == "linear"


def test_epochs_bucket_rows_and_average_train_loss():
    metrics = make_metrics(
        epochs=[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5],
        train_loss=[4.0, 3.0, 2.0, 1.0, 2.0, 2.0, 1.0, 1.0, 0.5],
        val_loss=[None, 3.5, None, 3.0, None, 2.6, None, None, None],
    )

    summaries = summarize_epochs(metrics)

    assert summaries == [
        EpochSummary(epoch=1, mean_train_loss=2.5, last_val_loss=3.0, partial=False),
        EpochSummary(epoch=2, mean_train_loss=1.5, last_val_loss=2.6, partial=False),
        EpochSummary(epoch=3, mean_train_loss=0.5, last_val_loss=None, partial=True),
    ]


def test_nonfinite_train_losses_are_left_out_of_the_epoch_mean():
    metrics = make_metrics(epochs=[0.2, 0.4, 0.6], train_loss=[3.0, float("nan"), None])

    assert summarize_epochs(metrics)[0].mean_train_loss == 3.0


def test_less_than_one_epoch_is_one_point_labelled_partial(tmp_path):
    metrics = make_metrics(epochs=[0.1, 0.2, 0.3], train_loss=[3.0, 2.0, 1.0], val_loss=[None, None, 2.5])

    assert summarize_epochs(metrics) == [EpochSummary(epoch=1, mean_train_loss=2.0, last_val_loss=2.5,
                                                      partial=True)]
    axes = loss_by_epoch_figure(metrics).axes[0]
    assert "partial" in axes.get_title()
    assert [label.get_text() for label in axes.get_xticklabels()] == ["1 (partial)"]
    assert_real_png(plot_loss_by_epoch(metrics, tmp_path / "epochs.png"))


def test_importing_the_module_does_not_import_matplotlib():
    source_root = Path(plots_module.__file__).parents[2]  # the folder holding lmforge/
    code = "import sys, lmforge.train.plots; print('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=env)

    assert result.stdout.strip() == "False"
