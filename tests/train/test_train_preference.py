"""DPO and ORPO through `lmforge finetune` on a tiny model: they learn a preference that can be learnt, log and
plot rewards, resume exactly, work with LoRA (whose reference is the base), and the diagnosis reads them."""

import math
import random

import pytest

from lmforge.train.diagnose_preference import preference_notes

from .test_train_finetune import base, finetune, metrics, one_thread, write_jsonl  # noqa: F401 (fixtures)


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Questions with a polite answer (chosen) and a rude one (rejected): a difference a small model can see."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"prompt": f"add {a}+{b}?", "chosen": f"it is {a + b}, thanks!",
                     "rejected": f"{a + b}. go away"})
    return rows


def objective_rows(run_dir, split):
    return [row for row in metrics(run_dir)["objective"] if row["split"] == split]


def test_dpo_learns_the_preference_and_reports_rewards(tmp_path, base):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(120))
    result, setup = finetune(tmp_path, base, "dpo", data, **{"train.max_steps": 40, "train.lr": "3e-3", "train.log_interval": 1,
                                                             "finetune.preference.beta": 0.5})
    train, val = objective_rows(result.run_dir, "train"), objective_rows(result.run_dir, "val")
    assert len(val) == 4 and len(train) >= 4
    m = metrics(result.run_dir)
    assert m["train_loss"][0] == pytest.approx(math.log(2), abs=0.05)  # the policy starts as the reference
    assert val[-1]["reward_accuracy"] > 0.9 and val[-1]["reward_margin"] > val[0]["reward_margin"]
    assert (result.run_dir / "training_curve.png").exists()
    diagnosis = (result.run_dir / "diagnosis.txt").read_text()
    assert "Preference:" in diagnosis and "validation reward accuracy" in diagnosis
    assert all(p.ref_logps is not None for p in setup.train_batches.pairs)


def test_a_dpo_run_resumes_exactly(tmp_path, base):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(60))
    common = {"train.max_steps": 12, "train.save_interval": 6, "train.log_interval": 1, "train.lr": "3e-3",
              "model.dropout": 0.1}  # dropout: the random state must resume too
    straight, _ = finetune(tmp_path / "a", base, "dpo", data, **common)
    resumed, _ = finetune(tmp_path / "b", base, "dpo", data, **common,
                          **{"train.resume": straight.run_dir / "step-000006"})
    a, b = metrics(straight.run_dir), metrics(resumed.run_dir)
    assert b["steps"] == list(range(7, 13))
    assert b["train_loss"] == a["train_loss"][6:]
    assert objective_rows(resumed.run_dir, "train")[-1] == objective_rows(straight.run_dir, "train")[-1]


def test_lora_dpo_takes_the_base_as_its_reference(tmp_path, base):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(60))
    result, _ = finetune(tmp_path, base, "dpo", data, "lora", **{"train.max_steps": 10, "train.lr": "1e-2",
                                                                 "train.log_interval": 1,
                                                                 "finetune.lora.dropout": 0.0})
    first = objective_rows(result.run_dir, "train")[0]
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)  # fresh adapters: the policy is the base
    assert metrics(result.run_dir)["train_loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert objective_rows(result.run_dir, "train")[-1]["reward_margin"] > 0


def test_orpo_trains_without_a_reference(tmp_path, base):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(120))
    result, setup = finetune(tmp_path, base, "orpo", data, **{"train.max_steps": 40, "train.lr": "3e-3"})
    val = objective_rows(result.run_dir, "val")
    assert val[-1]["reward_accuracy"] > 0.9 and val[-1]["nll"] < val[0]["nll"]
    assert all(p.ref_logps is None for p in setup.train_batches.pairs)  # ORPO never computes one


def test_preference_diagnosis_names_a_frozen_policy_and_likelihood_displacement():
    def row(step, split, chosen, rejected, accuracy):
        return {"step": step, "split": split, "reward_chosen": chosen, "reward_rejected": rejected,
                "reward_margin": chosen - rejected, "reward_accuracy": accuracy}

    frozen = {"objective": [row(s, "train", 0.0, 0.0, 0.0) for s in range(1, 9)]}
    assert "never moved away from the reference" in preference_notes(frozen)[0]
    falling = {"objective": [row(s, "train", -0.1 * s, -0.3 * s, 1.0) for s in range(1, 9)]
               + [row(8, "val", -0.8, -2.0, 0.52)]}
    text = preference_notes(falling)[0]
    assert "likelihood displacement" in text and "about chance" in text and "memorised" in text
    assert preference_notes({"objective": []}) == [] and preference_notes({}) == []


@pytest.mark.parametrize("problem, message", [
    ([{"prompt": "q", "chosen": "same", "rejected": "same"}] * 3, "no pair left to train on"),
    ([{"text": "not a pair"}], "does not look like preference data"),
])
def test_the_preflight_stops_data_that_cannot_teach(tmp_path, base, problem, message):
    data = write_jsonl(tmp_path / "bad.jsonl", problem)
    with pytest.raises(ValueError, match=message):
        finetune(tmp_path, base, "dpo", data)


def test_running_means_gathered_over_ranks_are_the_means_of_all_values():
    import torch

    from lmforge.train.preference import RunningMeans

    ranks = [RunningMeans(), RunningMeans()]
    ranks[0].add("train", {"reward": torch.tensor([1.0, 2.0, 3.0])})
    ranks[1].add("train", {"reward": torch.tensor([10.0])})
    ranks[1].add("val", {"reward": torch.tensor([4.0, 6.0])})
    with ranks[0].ignoring():  # a padding repeat: left out
        ranks[0].add("val", {"reward": torch.tensor([100.0])})
    totals = []
    for means in ranks:  # what gather_objects hands back: every rank's totals (collected here one by one)
        means.take(gather=lambda own: totals.append(own) or [own])
    gathered = RunningMeans().take(gather=lambda own: totals)
    assert gathered == {"train": {"reward": 16.0 / 4}, "val": {"reward": 5.0}}
