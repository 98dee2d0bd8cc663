"""train.eval_tasks: lm-evaluation-harness tasks scored during training, logged, plotted and diagnosed."""

import json

import pytest

from lmforge.train.diagnose import diagnose
from lmforge.train.plots import training_curve_figure
from tests.train.test_train_loop import make_trainer

lm_eval = pytest.importorskip("lm_eval")

from lmforge.eval.benchmarks import training_benchmark  # noqa: E402  (needs lm_eval)


def test_tasks_run_at_evaluations_and_reach_the_metrics_plot_and_diagnosis(tiny_data, tmp_path):
    calls = []
    real = training_benchmark(["lmforge_python_keyword"], limit=6)

    def benchmark(model, tokenizer):
        assert not model.training  # scored in eval mode (no dropout), put back afterwards
        calls.append(model.training)
        return real(model, tokenizer)

    trainer = make_trainer(tiny_data, tmp_path / "run", max_steps=20, eval_interval=10, eval_tasks_interval=10)
    trainer.benchmark = benchmark
    trainer.fit()
    assert trainer.model.training and len(calls) == 2  # steps 10 and 20
    metrics = json.loads((tmp_path / "run" / "training_metrics.json").read_text())
    rows = [r for r in metrics["benchmarks"] if r["metric"] == "acc"]
    assert [r["step"] for r in rows] == [10, 20]
    assert all(r["task"] == "lmforge_python_keyword" and r["examples"] == 6 and r["chance"] == 0.25 for r in rows)
    assert len(training_curve_figure(metrics).axes) == 3
    assert "Benchmarks:" in (tmp_path / "run" / "diagnosis.txt").read_text()


def test_the_interval_and_the_last_step_decide_when(tiny_data, tmp_path):
    steps = []
    trainer = make_trainer(tiny_data, tmp_path / "run", max_steps=25, eval_interval=5, eval_tasks_interval=10)
    trainer.benchmark = lambda model, tokenizer: steps.append(trainer.state.step) or []
    trainer.fit()
    assert steps == [10, 20, 25]


def test_diagnosis_says_when_loss_falls_and_accuracy_stays_at_chance():
    metrics = {"steps": [100, 200], "epochs": [0.5, 1.0], "train_loss": [4.0, 3.0], "val_loss": [4.1, 3.2],
               "val_perplexity": [None, None], "learning_rate": [1e-3, 1e-4], "tokens_seen": [1, 2],
               "tokens_per_sec": [None, None], "grad_norm": [None, None], "nonfinite_steps": [],
               "benchmarks": [{"step": 100, "task": "t", "metric": "acc", "value": 0.24, "stderr": 0.04,
                               "chance": 0.25, "examples": 100},
                              {"step": 200, "task": "t", "metric": "acc", "value": 0.27, "stderr": 0.045,
                               "chance": 0.25, "examples": 100}]}
    text = diagnose(metrics).text
    assert "stayed within noise of chance" in text and "4.100 to 3.200" in text
    metrics["benchmarks"][-1].update(value=0.6, stderr=0.05)
    assert "from 0.240 at step 100" in diagnose(metrics).text
