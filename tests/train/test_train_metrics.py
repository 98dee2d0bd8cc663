"""Tests for lmforge.train.metrics: the training_metrics.json log."""

import json
import logging
import math

import numpy as np
import pytest

from lmforge.train import metrics as metrics_module
from lmforge.train.metrics import METRIC_KEYS, METRICS_FILENAME, MetricsLog, load_metrics, perplexity


def strict_json(path):
    """Parse a file as standard JSON, failing on the NaN/Infinity extensions Python accepts."""
    def reject(constant):
        raise AssertionError(f"{path} holds {constant}, which is not valid JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def log_rows(log, steps, val_every=None, **overrides):
    for step in steps:
        row = dict(step=step, epoch=step / 100, train_loss=5.0 - step / 100, learning_rate=1e-3,
                   tokens_seen=step * 64, tokens_per_sec=1000.0, grad_norm=0.5)
        if val_every and step % val_every == 0:
            row["val_loss"] = 5.5 - step / 100
        row.update(overrides)
        log.log(**row)


def test_file_has_every_key_and_equal_list_lengths(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, range(0, 50, 10), val_every=20)

    saved = strict_json(tmp_path / METRICS_FILENAME)

    assert set(saved) == set(METRIC_KEYS) | {"nonfinite_steps", "benchmarks", "objective"}
    assert {len(saved[key]) for key in METRIC_KEYS} == {5}
    assert saved["steps"] == [0, 10, 20, 30, 40]
    assert saved["tokens_seen"] == [0, 640, 1280, 1920, 2560]
    assert saved == log.to_dict()


def test_val_perplexity_is_exp_of_val_loss_and_null_without_evaluation(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, [0, 10, 20], val_every=20)

    saved = load_metrics(tmp_path)

    assert saved["val_loss"] == [5.5, None, 5.3]
    assert saved["val_perplexity"][0] == pytest.approx(math.exp(5.5))
    assert saved["val_perplexity"][1] is None


def test_perplexity_that_overflows_is_written_as_null(tmp_path):
    assert perplexity(1000.0) is None
    log = MetricsLog(tmp_path)
    log.log(step=1, epoch=0.1, train_loss=3.0, learning_rate=1e-3, tokens_seen=10, val_loss=1000.0)

    saved = strict_json(tmp_path / METRICS_FILENAME)

    assert saved["val_loss"] == [1000.0]
    assert saved["val_perplexity"] == [None]


def test_nonfinite_train_loss_is_written_as_null_and_recorded(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, [0, 10])
    log_rows(log, [20], train_loss=float("nan"), grad_norm=float("inf"))
    log_rows(log, [30], train_loss=float("inf"))

    saved = strict_json(tmp_path / METRICS_FILENAME)

    assert saved["train_loss"] == [5.0, 4.9, None, None]
    assert saved["grad_norm"][2] is None
    assert saved["nonfinite_steps"] == [20, 30]


def test_numpy_scalars_are_written_as_plain_numbers(tmp_path):
    log = MetricsLog(tmp_path)
    log.log(step=np.int64(3), epoch=np.float32(0.5), train_loss=np.float32(2.5), learning_rate=1e-3,
            tokens_seen=np.int64(100), val_loss=np.float32(3.0), grad_norm=np.float64(1.5))

    saved = strict_json(tmp_path / METRICS_FILENAME)

    assert saved["steps"] == [3] and saved["val_loss"] == [3.0] and saved["grad_norm"] == [1.5]


def test_every_rewrite_leaves_no_temporary_file(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, range(0, 100, 10), val_every=30)

    assert [path.name for path in tmp_path.iterdir()] == [METRICS_FILENAME]


def test_a_failed_rewrite_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)
    log_rows(log, [0, 10])
    before = (tmp_path / METRICS_FILENAME).read_text()

    def crash(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(metrics_module.os, "replace", crash)
    with pytest.raises(OSError):
        log_rows(log, [20])

    assert (tmp_path / METRICS_FILENAME).read_text() == before
    assert [path.name for path in tmp_path.iterdir()] == [METRICS_FILENAME]


def test_resume_drops_rows_after_the_checkpoint_step(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, range(0, 60, 10), val_every=20)
    log_rows(log, [60], train_loss=float("nan"))
    log.close()

    resumed = MetricsLog.resume(tmp_path, up_to_step=30)

    assert resumed.to_dict()["steps"] == [0, 10, 20, 30]
    assert resumed.to_dict()["nonfinite_steps"] == []
    assert load_metrics(tmp_path)["steps"] == [0, 10, 20, 30]  # the file is truncated at once
    log_rows(resumed, [40])
    saved = load_metrics(tmp_path)
    assert saved["steps"] == [0, 10, 20, 30, 40]
    assert saved["val_loss"] == [5.5, None, 5.3, None, None]


def test_resume_without_a_file_starts_an_empty_log(tmp_path):
    resumed = MetricsLog.resume(tmp_path / "new_run", up_to_step=100)

    assert resumed.to_dict()["steps"] == []
    assert not (tmp_path / "new_run" / METRICS_FILENAME).exists()


def test_load_metrics_accepts_the_file_or_its_folder(tmp_path):
    log_rows(MetricsLog(tmp_path), [0, 10])

    assert load_metrics(tmp_path) == load_metrics(tmp_path / METRICS_FILENAME)


def test_load_metrics_without_a_file_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=METRICS_FILENAME):
        load_metrics(tmp_path)


def test_load_metrics_rejects_lists_of_different_lengths(tmp_path):
    columns = {key: [1.0, 2.0] for key in METRIC_KEYS}
    columns["train_loss"] = [1.0]
    (tmp_path / METRICS_FILENAME).write_text(json.dumps(columns))

    with pytest.raises(ValueError, match="different lengths"):
        load_metrics(tmp_path)


def test_missing_tensorboard_logs_one_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics_module, "_tensorboard_available", lambda: False)

    with caplog.at_level(logging.WARNING, logger=metrics_module.__name__):
        log = MetricsLog(tmp_path, tensorboard=True)
        log_rows(log, [0, 10, 20])
        log.close()

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "pip install lmforge[track]" in warnings[0]
    assert load_metrics(tmp_path)["steps"] == [0, 10, 20]


def test_resume_keeps_a_damaged_log_aside_and_starts_afresh(tmp_path, caplog):
    log = MetricsLog(tmp_path)
    log_rows(log, [10, 20])
    text = (tmp_path / METRICS_FILENAME).read_text()
    (tmp_path / METRICS_FILENAME).write_text(text[: len(text) // 2])  # e.g. written by a full disk
    (tmp_path / f".{METRICS_FILENAME}.abc123.tmp").write_text("{")  # a rewrite killed half-way

    resumed = MetricsLog.resume(tmp_path, up_to_step=20)

    assert resumed.to_dict()["steps"] == []
    assert (tmp_path / f"{METRICS_FILENAME}.damaged").read_text() == text[: len(text) // 2]
    assert "starting the metrics log afresh" in caplog.text
    assert not list(tmp_path.glob("*.tmp"))
    log_rows(resumed, [30])
    assert load_metrics(tmp_path)["steps"] == [30]


def test_benchmark_rows_are_saved_and_resume_drops_those_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, range(0, 50, 10), val_every=20)
    for step in (20, 40):
        log.log_benchmarks(step, [{"task": "t", "metric": "acc", "value": 0.5, "stderr": 0.05, "chance": 0.25}])
    assert [row["step"] for row in strict_json(tmp_path / METRICS_FILENAME)["benchmarks"]] == [20, 40]
    resumed = MetricsLog.resume(tmp_path, up_to_step=30)
    assert [row["step"] for row in resumed.to_dict()["benchmarks"]] == [20]


def test_objective_rows_are_kept_per_split_and_trimmed_on_resume(tmp_path):
    log = MetricsLog(tmp_path)
    log_rows(log, range(10, 50, 10))
    for step in (10, 20, 30, 40):
        log.log_objective(step, {"train": {"reward_accuracy": step / 100}, "val": {"reward_accuracy": step / 50}})
    log.log_objective(50, {})  # nothing to log: no row
    saved = strict_json(tmp_path / METRICS_FILENAME)["objective"]
    assert [(r["step"], r["split"]) for r in saved[:2]] == [(10, "train"), (10, "val")] and len(saved) == 8
    resumed = MetricsLog.resume(tmp_path, up_to_step=20)
    assert [r["step"] for r in resumed.to_dict()["objective"]] == [10, 10, 20, 20]
