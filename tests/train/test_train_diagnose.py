"""Tests for lmforge.train.diagnose: verdicts on synthetic and on real learning curves."""

import json
import math
import random
from pathlib import Path

import pytest

from lmforge.train.diagnose import DIAGNOSIS_FILENAME, VERDICTS, diagnose, write_diagnosis
from lmforge.train.metrics import METRIC_KEYS, MetricsLog

LAST_STEP = 3000


def cosine_lr(step):
    """Warm-free cosine decay from 3e-4 down to 10% of it at LAST_STEP."""
    return 3e-4 * (0.1 + 0.45 * (1 + math.cos(math.pi * step / LAST_STEP)))


def constant_lr(step):
    return 3e-4


def run(train, val, lr=cosine_lr, noise=0.0, seed=0, log_every=20, eval_every=200, last_step=LAST_STEP):
    """Metrics of a synthetic run: train(step) and val(step) give the noiseless losses.

    Each train loss gets `noise` relative Gaussian noise (batch noise); each validation loss
    a third of it, since an evaluation averages many batches.
    """
    rng = random.Random(seed)
    metrics = {key: [] for key in METRIC_KEYS}
    for step in range(0, last_step + 1, log_every):
        evaluated = step % eval_every == 0
        row = {
            "steps": step,
            "epochs": step / 1000,
            "train_loss": train(step) * (1 + rng.gauss(0, noise)),
            "val_loss": val(step) * (1 + rng.gauss(0, noise / 3)) if evaluated else None,
            "val_perplexity": None,
            "learning_rate": lr(step),
            "tokens_seen": step * 4096,
            "tokens_per_sec": 1e4,
            "grad_norm": 1.0,
        }
        for key in METRIC_KEYS:
            metrics[key].append(row[key])
    metrics["nonfinite_steps"] = []
    return metrics


def decaying(floor, scale=8.0, time=300.0):
    """floor + scale * exp(-step / time): a loss that falls fast, then levels off at `floor`."""
    return lambda step: floor + scale * math.exp(-step / time)


def overfitting_val(step):
    """Falls like a normal curve, then climbs 0.3 per 1000 steps after step 1800."""
    return decaying(2.3, time=400)(step) + max(0.0, (step - 1800) / 3000)


def overfitting_train(step):
    return decaying(1.0, time=400)(step) - step / 6000


def blowing_up(floor):
    """Normal until step 2000, then the loss climbs by 0.5 every 100 steps."""
    return lambda step: decaying(floor)(step) + max(0.0, (step - 2000) / 200)


CURVES = {
    "well fit": dict(train=decaying(2.0), val=decaying(2.1)),
    "under-fit": dict(train=decaying(2.0, time=3000), val=decaying(2.05, time=3000)),
    "over-fit": dict(train=overfitting_train, val=overfitting_val),
    "plateau": dict(train=decaying(3.0), val=decaying(3.1), lr=constant_lr),
    "diverging": dict(train=blowing_up(2.0), val=blowing_up(2.1)),
}


@pytest.mark.parametrize("verdict", CURVES)
def test_clean_curves_get_their_verdict(verdict):
    assert diagnose(run(**CURVES[verdict])).verdict == verdict


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("verdict", CURVES)
def test_noisy_curves_keep_their_verdict(verdict, seed):
    assert diagnose(run(**CURVES[verdict], noise=0.04, seed=seed)).verdict == verdict


@pytest.mark.parametrize(("gap", "verdict"), [(0.02, "under-fit"), (0.3, "well fit")])
def test_slow_late_fall_is_under_fit_only_when_val_is_level_with_train(gap, verdict):
    # Both losses fall about 2% across the tail: between "flat" (1%) and "clearly falling" (3%).
    train = decaying(2.0, time=550)

    diagnosis = diagnose(run(train=train, val=lambda step: train(step) + gap))

    assert 0.01 < diagnosis.numbers["val_tail_drop"] < 0.03
    assert diagnosis.verdict == verdict


def test_overfit_names_the_step_of_the_best_validation_loss():
    diagnosis = diagnose(run(**CURVES["over-fit"]))

    assert diagnosis.numbers["val_loss_best_step"] == 1800
    assert "over-fitting since step 1800" in diagnosis.text.lower()
    assert "best/ checkpoint" in diagnosis.text


def test_overfit_needs_a_rise_above_evaluation_noise():
    # Validation creeps up a little, the train loss levels off with it: the gap does not grow.
    small_rise = lambda step: decaying(2.3, time=400)(step) + max(0.0, (step - 1800) / 100_000)  # noqa: E731

    diagnosis = diagnose(run(train=decaying(2.0, time=400), val=small_rise))

    assert diagnosis.verdict != "over-fit"
    assert diagnosis.numbers["val_rise_above_best"] < 0.04


def test_flat_validation_with_a_growing_gap_is_starting_to_overfit():
    # Validation stops improving (it even creeps up a little, less than the 4% rise rule)
    # while the train loss keeps falling: the gap opens, the model has begun to memorise.
    small_rise = lambda step: decaying(2.3, time=400)(step) + max(0.0, (step - 1800) / 100_000)  # noqa: E731

    diagnosis = diagnose(run(train=overfitting_train, val=small_rise))

    assert diagnosis.numbers["val_rise_above_best"] < 0.04
    assert diagnosis.verdict == "over-fit"
    assert "starting to over-fit since step" in diagnosis.text.lower()
    assert "Stop about here" in diagnosis.text
    assert "plateau" not in diagnosis.text.lower()


def test_stalled_learning_with_a_decayed_schedule_is_a_plateau():
    # Stuck near 7.5 from step ~300 on: barely below where it started, although the LR decayed.
    metrics = run(train=decaying(7.5, scale=3, time=100), val=decaying(7.6, scale=3, time=100))

    diagnosis = diagnose(metrics)

    assert diagnosis.verdict == "plateau"
    assert "stalled" in diagnosis.text


def test_stalled_is_judged_against_the_start_of_the_run_not_the_first_evaluation():
    # The first evaluation (step 200) comes after the fast early drop from about ln(vocab).
    metrics = run(train=decaying(7.5, scale=3, time=100), val=decaying(7.6, scale=3, time=100))

    diagnosis = diagnose(metrics)

    assert diagnosis.numbers["train_loss_first"] == pytest.approx(10.5)
    assert "where training started (10.500" in diagnosis.text


def test_barely_learning_at_a_tiny_constant_learning_rate_is_a_plateau_that_needs_a_higher_one():
    # The loss creeps down from its start and is still far from learned: the learning rate is too small.
    metrics = run(train=lambda step: 4.2 - step / 10_000, val=lambda step: 4.21 - step / 10_000,
                  lr=lambda step: 1e-5)

    diagnosis = diagnose(metrics)

    assert diagnosis.verdict == "plateau"
    assert "barely learned" in diagnosis.text
    assert "Check the learning rate (this run peaked at 1.00e-05)" in diagnosis.text
    assert "At a high learning rate" not in diagnosis.text


def test_plateau_at_a_high_learning_rate_suggests_decaying_it():
    diagnosis = diagnose(run(**CURVES["plateau"]))

    assert "Decay the learning rate" in diagnosis.text


def test_nan_at_the_end_is_diverging_from_that_step():
    metrics = run(**CURVES["well fit"])
    metrics["train_loss"][-3:] = [float("nan")] * 3

    diagnosis = diagnose(metrics)

    assert diagnosis.verdict == "diverging"
    assert diagnosis.numbers["first_nonfinite_step"] == LAST_STEP - 40
    assert f"step {LAST_STEP - 40}" in diagnosis.text


def test_nan_written_by_the_metrics_log_is_seen_as_diverging(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(0, 100, 10):
        loss = 3.0 - step / 100 if step < 70 else float("inf")
        log.log(step=step, epoch=step / 50, train_loss=loss, learning_rate=1e-3, tokens_seen=step,
                val_loss=3.1 - step / 100 if step % 20 == 0 else None)

    diagnosis = write_diagnosis(tmp_path)

    assert diagnosis.verdict == "diverging"
    assert diagnosis.numbers["first_nonfinite_step"] == 70


def test_diverging_reports_where_the_loss_was_lowest():
    diagnosis = diagnose(run(**CURVES["diverging"], noise=0.02))

    assert 1800 <= diagnosis.numbers["train_loss_min_step"] <= 2200
    assert "Lower the learning rate" in diagnosis.text


def test_losses_rising_together_is_instability_not_overfitting():
    rising = lambda step: decaying(2.0)(step) + max(0.0, (step - 2000) / 5000)  # noqa: E731

    diagnosis = diagnose(run(train=rising, val=lambda step: rising(step) + 0.1))

    assert diagnosis.verdict == "diverging"


def test_divergence_is_found_even_without_validation():
    metrics = run(**CURVES["diverging"], eval_every=10**9)  # only step 0 is evaluated
    metrics["val_loss"] = [None] * len(metrics["steps"])

    assert diagnose(metrics).verdict == "diverging"


def test_no_validation_at_all_is_too_short_to_judge():
    metrics = run(**CURVES["well fit"])
    metrics["val_loss"] = [None] * len(metrics["steps"])

    diagnosis = diagnose(metrics)

    assert diagnosis.verdict == "too short to judge"
    assert "no validation loss" in diagnosis.text.lower()
    assert diagnosis.numbers["val_loss_final"] is None


def test_two_evaluations_are_too_short_to_judge():
    diagnosis = diagnose(run(**CURVES["under-fit"], last_step=200, eval_every=200))

    assert diagnosis.numbers["val_points"] == 2
    assert diagnosis.verdict == "too short to judge"


def test_empty_metrics_are_too_short_to_judge():
    diagnosis = diagnose({key: [] for key in METRIC_KEYS})

    assert diagnosis.verdict == "too short to judge"
    assert diagnosis.text.startswith("Verdict: too short to judge\n")


def test_numbers_behind_the_verdict_are_reported():
    numbers = diagnose(run(**CURVES["under-fit"])).numbers

    assert numbers["val_loss_initial"] == pytest.approx(10.05)
    assert numbers["val_loss_initial_step"] == 0
    assert numbers["val_loss_final_step"] == LAST_STEP
    assert numbers["val_loss_best"] == numbers["val_loss_final"]  # still falling: best is the last
    assert numbers["val_perplexity_final"] == pytest.approx(math.exp(numbers["val_loss_final"]))
    assert numbers["train_slope_per_1k_steps"] < 0 and numbers["val_slope_per_1k_steps"] < 0
    assert abs(numbers["train_val_gap"]) < 0.1
    assert numbers["learning_rate_final"] == pytest.approx(3e-5)


def test_write_diagnosis_writes_the_text_with_the_verdict_first(tmp_path):
    diagnosis = write_diagnosis(tmp_path, run(**CURVES["over-fit"]))

    text = (tmp_path / DIAGNOSIS_FILENAME).read_text()
    assert text == diagnosis.text
    assert text.splitlines()[0] == "Verdict: over-fit"
    assert diagnosis.verdict in VERDICTS


# --- real curves -------------------------------------------------------------------------
# training_metrics.json of real `lmforge train` runs (char-level Shakespeare and Gutenberg
# texts, licence texts with gpt2-tiny), named <expected verdict>__<run>.json; "_" in the
# verdict stands for a space. Each verdict is what the curves show by eye.

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "curves").glob("*.json"))


def expected_verdict(path):
    return path.name.split("__")[0].replace("_", " ")


def test_real_curves_cover_every_verdict():
    assert {expected_verdict(path) for path in FIXTURES} == set(VERDICTS)


@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
def test_real_curves_get_their_verdict(path):
    metrics = json.loads(path.read_text())
    # Fixtures whose verdict depends on it record the run's dropout beside the metrics.
    diagnosis = diagnose(metrics, dropout=metrics.get("dropout"))

    assert diagnosis.verdict == expected_verdict(path)
    assert diagnosis.text.startswith(f"Verdict: {diagnosis.verdict}\n")


def test_real_early_memorisation_is_not_called_a_plateau():
    # The reviewer's run: 300 steps on 58k tokens, train still falling, gap 0.1 -> 1.0.
    diagnosis = diagnose(json.loads((FIXTURES[0].parent / "over-fit__licences_gpt2tiny_300steps.json").read_text()))

    assert "Starting to over-fit since step 250" in diagnosis.text
    assert "bigger model" not in diagnosis.text


# --- validation easier than training; still improving or flattened ------------------------


def test_validation_below_train_beyond_noise_with_dropout_off_is_a_split_problem():
    curves = run(train=decaying(3.0), val=decaying(2.5), noise=0.01)
    diagnosis = diagnose(curves, dropout=0.0)
    assert diagnosis.verdict == "split problem"
    assert "leakage" in diagnosis.text and "data.val_fraction" in diagnosis.text
    assert diagnosis.numbers["val_below_train_share"] == 1.0
    assert diagnosis.numbers["train_val_gap"] == pytest.approx(-0.5, abs=0.02)


def test_validation_below_train_is_not_a_split_problem_with_dropout_on_or_unknown():
    curves = run(train=decaying(3.0), val=decaying(2.5), noise=0.01)
    assert diagnose(curves, dropout=0.1).verdict != "split problem"  # dropout inflates the train loss
    assert diagnose(curves).verdict != "split problem"  # not known: no claim


def test_validation_a_little_below_train_within_noise_is_not_a_split_problem():
    curves = run(train=decaying(2.0), val=decaying(1.98), noise=0.01)  # 1% below: under NO_GAP
    assert diagnose(curves, dropout=0.0).verdict != "split problem"


def test_validation_below_train_only_briefly_is_not_a_split_problem():
    # Below train at the end only; above it for most of the second half.
    val = lambda step: decaying(2.2)(step) - (0.4 if step >= 2800 else 0.0)  # noqa: E731
    curves = run(train=decaying(2.0), val=val)
    diagnosis = diagnose(curves, dropout=0.0)
    assert diagnosis.numbers["val_below_train_share"] < 0.8
    assert diagnosis.verdict != "split problem"


def slowly_falling(floor, per_step):
    return lambda step: decaying(floor)(step) - per_step * step


def test_more_steps_are_advised_only_while_the_loss_still_clearly_falls():
    falling = diagnose(run(train=slowly_falling(2.0, 1e-5), val=slowly_falling(2.1, 1e-5)))
    assert falling.verdict == "well fit"
    assert "still improving when the schedule ended" in falling.text and "A longer run" in falling.text
    assert falling.numbers["train_tail_slope_t"] < -3

    # The same slow fall hidden in batch noise (1%): within noise of flat, so no advice to train longer.
    noisy = diagnose(run(train=slowly_falling(2.0, 1e-5), val=slowly_falling(2.1, 1e-5), noise=0.01, seed=3))
    assert noisy.verdict == "well fit"
    assert "still improving" not in noisy.text and "more steps alone will not help much" in noisy.text


def test_under_fit_says_whether_the_run_was_still_improving():
    still = diagnose(run(**CURVES["under-fit"]))
    assert still.verdict == "under-fit" and "still improving when the schedule ended" in still.text
    assert "Train longer" in still.text
