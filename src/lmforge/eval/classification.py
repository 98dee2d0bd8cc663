"""How good a classifier is: accuracy, per-class precision/recall/F1, and the confusion matrix.

Accuracy alone misleads on imbalanced data: on SMS spam (13% spam) a model that always says "ham"
is 87% accurate and useless. Per class c:

    precision  of the examples predicted c, the share that really are c    (are its alarms right?)
    recall     of the examples that really are c, the share predicted c    (does it find them all?)
    F1         2 * precision * recall / (precision + recall), their harmonic mean
    support    how many examples really are c

Macro F1 averages the classes' F1 equally (a rare class counts as much as a common one);
weighted F1 averages them by support. The confusion matrix has a row per true class and a column
per predicted class: cell [i][j] counts examples of class i predicted as j, so the diagonal holds
the correct answers. A ratio whose denominator is zero (a class never predicted, or absent) is 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """Metrics of predicted class numbers against the true ones; class i is named class_names[i].

    Returns {"accuracy", "macro_f1", "weighted_f1", "total", "per_class": {name: {"precision",
    "recall", "f1", "support"}}, "confusion": rows true x columns predicted, "class_names"}.
    """
    confusion = confusion_matrix(y_true, y_pred, len(class_names))
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    precision = _ratio(correct, confusion.sum(axis=0))
    recall = _ratio(correct, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = int(support.sum())
    return {
        "accuracy": _ratio(correct.sum(), total).item(),
        "macro_f1": float(f1.mean()),
        "weighted_f1": _ratio((f1 * support).sum(), total).item(),
        "total": total,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(class_names)},
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: [i, j] = examples of true class i predicted as class j."""
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"{true.size} true labels but {pred.size} predictions")
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= num_classes):
        raise ValueError(f"labels must be class numbers in [0, {num_classes})")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)  # add.at counts repeated (i, j) pairs; confusion[true, pred] += 1 would not
    return confusion


def _ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator elementwise, 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def format_metrics(metrics: dict) -> str:
    """A readable report: the per-class table, the averages, and the confusion matrix."""
    names = metrics["class_names"]
    width = max(len("weighted F1"), *(len(name) for name in names))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  "
                     f"{row['support']:7d}")
    lines += ["", f"{'accuracy':<{width}}  {metrics['accuracy']:.3f}  ({metrics['total']} examples)",
              f"{'macro F1':<{width}}  {metrics['macro_f1']:.3f}",
              f"{'weighted F1':<{width}}  {metrics['weighted_f1']:.3f}", "",
              "confusion (rows: true class, columns: predicted)"]
    cell = max(*(len(name) for name in names), *(len(str(count)) for row in metrics["confusion"] for count in row))
    lines.append(" " * width + "".join(f"  {name:>{cell}}" for name in names))
    for name, row in zip(names, metrics["confusion"]):
        lines.append(f"{name:<{width}}" + "".join(f"  {count:>{cell}}" for count in row))
    return "\n".join(lines)
