"""Classification metrics checked against values worked out by hand."""

import pytest

from lmforge.eval.classification import classification_metrics, confusion_matrix, format_metrics

NAMES = ["cat", "dog", "bird"]
# true:  cat cat dog dog bird bird bird
# pred:  cat dog dog dog bird cat  dog
TRUE = [0, 0, 1, 1, 2, 2, 2]
PRED = [0, 1, 1, 1, 2, 0, 1]


def test_confusion_matrix_has_true_classes_as_rows():
    assert confusion_matrix(TRUE, PRED, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 1, 1]]


def test_three_class_metrics_match_hand_computed_values():
    m = classification_metrics(TRUE, PRED, NAMES)
    assert m["accuracy"] == pytest.approx(4 / 7)
    # cat: 1 of 2 predicted cats right, 1 of 2 cats found.  dog: 2 of 4 right, 2 of 2 found.  bird: 1 of 1, 1 of 3.
    assert m["per_class"]["cat"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["dog"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["bird"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m["weighted_f1"] == pytest.approx((0.5 * 2 + 2 / 3 * 2 + 0.5 * 3) / 7)


def test_a_class_never_predicted_or_absent_scores_zero_instead_of_dividing_by_zero():
    m = classification_metrics([0, 0, 1], [0, 0, 0], ["ham", "spam", "other"])
    assert m["per_class"]["spam"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["other"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["ham"]["precision"] == pytest.approx(2 / 3)
    assert classification_metrics([], [], ["a"])["accuracy"] == 0.0


def test_out_of_range_labels_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics([0, 2], [0, 1], ["a", "b"])


def test_the_report_shows_every_class_the_averages_and_the_confusion():
    text = format_metrics(classification_metrics(TRUE, PRED, NAMES))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["cat", "0.500", "0.500", "0.500", "2"]
    assert "accuracy     0.571  (7 examples)" in text and "macro F1     0.556" in text
    assert lines[-1].split() == ["bird", "1", "1", "1"] and lines[-4].split() == NAMES
