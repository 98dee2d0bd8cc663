"""The training metrics log: one row per logged step, kept in run_dir/training_metrics.json.

The file is column-oriented ({"steps": [...], "train_loss": [...], ...}, every list the
same length) so it can be plotted without any reshaping. It is rewritten atomically after
every row, so a run that crashes or is killed always leaves a complete, readable file.
Optionally the same numbers are mirrored to TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILENAME = "training_metrics.json"
METRIC_KEYS = (
    "steps",
    "epochs",
    "train_loss",
    "val_loss",
    "val_perplexity",
    "learning_rate",
    "tokens_seen",
    "tokens_per_sec",
    "grad_norm",
)
NONFINITE_KEY = "nonfinite_steps"
BENCHMARKS_KEY = "benchmarks"  # rows {step, task, metric, value, stderr, chance} of train.eval_tasks
OBJECTIVE_KEY = "objective"  # rows {step, split, name: value, ...} an objective reports (DPO's rewards, ...)

# TensorBoard tag for each metric worth charting (steps is the x axis, not a chart).
_TENSORBOARD_TAGS = {
    "epochs": "train/epoch",
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "val_perplexity": "val/perplexity",
    "learning_rate": "train/learning_rate",
    "tokens_seen": "train/tokens_seen",
    "tokens_per_sec": "train/tokens_per_sec",
    "grad_norm": "train/grad_norm",
}


class MetricsLog:
    """Collects training metrics row by row and keeps training_metrics.json up to date."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILENAME
        self._columns: dict[str, list] = {key: [] for key in METRIC_KEYS}
        self._nonfinite_steps: list[int] = []
        self._benchmarks: list[dict[str, Any]] = []
        self._objective: list[dict[str, Any]] = []
        self._tensorboard = _open_tensorboard(self.run_dir) if tensorboard else None

    def log(
        self,
        *,
        step: int,
        epoch: float,
        train_loss: float,
        learning_rate: float,
        tokens_seen: int,
        tokens_per_sec: float | None = None,
        grad_norm: float | None = None,
        val_loss: float | None = None,
    ) -> None:
        """Append one row and rewrite the metrics file."""
        val_loss = _optional_float(val_loss)
        row = {
            "steps": int(step),
            "epochs": float(epoch),
            "train_loss": float(train_loss),
            "val_loss": val_loss,
            "val_perplexity": perplexity(val_loss),
            "learning_rate": float(learning_rate),
            "tokens_seen": int(tokens_seen),
            "tokens_per_sec": _optional_float(tokens_per_sec),
            "grad_norm": _optional_float(grad_norm),
        }
        if not math.isfinite(row["train_loss"]):
            self._nonfinite_steps.append(row["steps"])
        for key in METRIC_KEYS:
            self._columns[key].append(_json_number(row[key]))
        self._write_tensorboard(row)
        self._save()

    def log_benchmarks(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Add benchmark scores measured at `step` (train.eval_tasks) and rewrite the file."""
        for row in rows:
            self._benchmarks.append({"step": int(step), **{k: _json_number(v) if isinstance(v, float) else v
                                                           for k, v in row.items()}})
            if self._tensorboard is not None and row.get("value") is not None:
                self._tensorboard.add_scalar(f"benchmarks/{row['task']}/{row['metric']}", row["value"], step)
        self._save()

    def log_objective(self, step: int, splits: dict[str, dict[str, float]]) -> None:
        """Add the objective's own statistics at `step`, per split ("train": means since the last row,
        "val": over the evaluation just run), and rewrite the file."""
        for split, values in splits.items():
            self._objective.append({"step": int(step), "split": split,
                                    **{name: _json_number(float(v)) for name, v in values.items()}})
            if self._tensorboard is not None:
                for name, value in values.items():
                    self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        if splits:
            self._save()

    def to_dict(self) -> dict[str, Any]:
        """The log as saved in the file: one list per metric, plus the non-finite steps and benchmark rows."""
        metrics: dict[str, Any] = {key: list(values) for key, values in self._columns.items()}
        metrics[NONFINITE_KEY] = list(self._nonfinite_steps)
        metrics[BENCHMARKS_KEY] = [dict(row) for row in self._benchmarks]
        metrics[OBJECTIVE_KEY] = [dict(row) for row in self._objective]
        return metrics

    @classmethod
    def resume(cls, run_dir: str | Path, up_to_step: int, tensorboard: bool = False) -> MetricsLog:
        """Reopen a run's log, dropping rows after `up_to_step` (the checkpoint being resumed).

        Rows past the checkpoint were logged by the interrupted run and will be logged
        again, so keeping them would leave duplicate steps in the curves.
        """
        log = cls(run_dir, tensorboard=False)
        for stale in log.run_dir.glob(f".{METRICS_FILENAME}.*.tmp"):  # left by a kill during a rewrite
            stale.unlink(missing_ok=True)
        saved = _readable_metrics(log.path)
        if saved is not None:
            keep = [i for i, step in enumerate(saved["steps"]) if step <= up_to_step]
            log._columns = {key: [saved[key][i] for i in keep] for key in METRIC_KEYS}
            log._nonfinite_steps = [s for s in saved[NONFINITE_KEY] if s <= up_to_step]
            log._benchmarks = [row for row in saved[BENCHMARKS_KEY] if row.get("step", 0) <= up_to_step]
            log._objective = [row for row in saved[OBJECTIVE_KEY] if row.get("step", 0) <= up_to_step]
            log._save()
        if tensorboard:
            # purge_step hides the events the interrupted run wrote after the checkpoint.
            log._tensorboard = _open_tensorboard(log.run_dir, purge_step=up_to_step + 1)
        return log

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any (the JSON file is always current)."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def _write_tensorboard(self, row: dict[str, Any]) -> None:
        if self._tensorboard is None:
            return
        for key, tag in _TENSORBOARD_TAGS.items():
            if row[key] is not None:
                self._tensorboard.add_scalar(tag, row[key], global_step=row["steps"])

    def _save(self) -> None:
        # One metric per line keeps the file small yet still readable in an editor.
        lines = [f"  {json.dumps(key)}: {json.dumps(values, allow_nan=False)}"
                 for key, values in self.to_dict().items()]
        _write_atomically(self.path, "{\n" + ",\n".join(lines) + "\n}\n")


def _readable_metrics(path: Path) -> dict[str, Any] | None:
    """The saved log, or None when there is none; a damaged one (edited by hand, written by a full disk)
    is kept beside as *.damaged and the curve starts again from the checkpoint: losing the log must not
    stop the run that can still continue."""
    if not path.exists():
        return None
    try:
        return load_metrics(path)
    except ValueError as error:
        damaged = path.with_name(path.name + ".damaged")
        os.replace(path, damaged)
        logger.warning("%s; kept it as %s and starting the metrics log afresh", error, damaged.name)
        return None


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when the loss is missing or the result is not a finite number."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:  # exp(loss) > ~1e308: meaningless, and JSON has no inf
        return None


def load_metrics(run_dir_or_file: str | Path) -> dict[str, Any]:
    """Read training_metrics.json from a run directory (or the file itself)."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.is_file():
        raise ValueError(
            f"No training metrics at {path}. Pass a run directory that holds "
            f"{METRICS_FILENAME} (it is written while a model trains)."
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it or restore it "
                         "from a backup.") from error
    _check_columns(metrics, path)
    metrics.setdefault(NONFINITE_KEY, [])
    for key in (BENCHMARKS_KEY, OBJECTIVE_KEY):
        if not isinstance(metrics.setdefault(key, []), list):
            raise ValueError(f"{path} is damaged: {key} must be a list of rows.")
    return metrics


def _check_columns(metrics: Any, path: Path) -> None:
    if not isinstance(metrics, dict) or any(not isinstance(metrics.get(key), list) for key in METRIC_KEYS):
        raise ValueError(f"{path} is not a metrics file: it must hold one list for each of "
                         f"{', '.join(METRIC_KEYS)}.")
    lengths = {key: len(metrics[key]) for key in METRIC_KEYS}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path} is damaged: its metric lists have different lengths {lengths}.")


def _optional_float(value: float | None) -> float | None:
    # float() also turns numpy scalars and 0-d tensors into plain numbers json can write.
    return None if value is None else float(value)


def _json_number(value: float | int | None) -> float | int | None:
    """JSON has no NaN or infinity, so non-finite numbers are stored as null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file next to `path`, then swap it in with one rename.

    A reader (or a crash) therefore sees either the old file or the new one, never half
    of one. The temporary file must be in the same folder for os.replace to be atomic.
    """
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes the file private; metrics are not secret
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise


def _tensorboard_available() -> bool:
    return find_spec("tensorboard") is not None


def _open_tensorboard(run_dir: Path, purge_step: int | None = None):
    """A TensorBoard SummaryWriter for run_dir/tensorboard, or None if tensorboard is missing."""
    if not _tensorboard_available():
        logger.warning("TensorBoard logging was asked for but the tensorboard package is missing; "
                       "install it with `pip install lmforge[track]`. Going on without it.")
        return None
    from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked for

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
