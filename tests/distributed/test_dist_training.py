"""Two ranks (torchrun, gloo on CPU) train exactly what one process with the same global batch trains.

One torchrun launch runs every distributed scenario in order (see dist_rank_program.py); the
single-process references run in this process. Rank r of 2 reads micro-batches r, r + 2, ... of the
epoch, so 2 ranks x 2 micro-batches of 4 (grad_accum_steps=2) read the same sequences per step as
1 process x 4 micro-batches of 4: the global batch of 16 is the same, and so must be the losses, the
gradient norms and the weights. (Accumulating exercises DDP's no_sync and FSDP's deferred reduce.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.train.checkpoint import load_model_from_checkpoint, load_train_state, read_meta
from tests.distributed.dist_rank_program import build_trainer

pytestmark = pytest.mark.slow
PROGRAM = Path(__file__).with_name("dist_rank_program.py")


def launch_two_ranks(plan: dict, folder: Path) -> None:
    plan_file = folder / "plan.json"
    plan_file.write_text(json.dumps(plan, default=str))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(PROGRAM), str(plan_file)]
    proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def runs(dist_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_runs")
    build_trainer(dist_data, root / "single", grad_accum_steps=4, max_steps=9).fit()
    build_trainer(dist_data, root / "one_to_two", grad_accum_steps=4, max_steps=3).fit()
    accumulate = {"grad_accum_steps": 2}
    plan = {"data": dist_data, "runs": [
        {"run_dir": root / "ddp", "strategy": "ddp", "train": accumulate},
        {"run_dir": root / "fsdp", "strategy": "fsdp", "train": {**accumulate, "sample_interval": 3}},
        {"run_dir": root / "ddp_straight", "strategy": "ddp", "dropout": 0.1},
        {"run_dir": root / "ddp_interrupted", "strategy": "ddp", "dropout": 0.1, "interrupt": {"rank": 1, "step": 3}},
        {"run_dir": root / "ddp_interrupted", "strategy": "ddp", "dropout": 0.1, "train": {"resume": "auto"}},
        {"run_dir": root / "fsdp_resumed", "strategy": "fsdp", "train": {**accumulate, "max_steps": 3}},
        {"run_dir": root / "fsdp_resumed", "strategy": "fsdp", "train": {**accumulate, "resume": "auto"}},
        {"run_dir": root / "one_to_two", "strategy": "ddp", "train": {**accumulate, "resume": "auto"}},
        {"run_dir": root / "timed", "strategy": "ddp", "train": {"max_steps": None, "max_time": 0.5}},
    ]}
    launch_two_ranks(plan, root)
    # Back to one process: continue the FSDP run's consolidated checkpoint (step 6) to step 9.
    build_trainer(dist_data, root / "two_to_one", grad_accum_steps=4, max_steps=9,
                  resume=str(root / "fsdp" / "last")).fit()
    return root


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_metrics.json").read_text())


def rank_results(run_dir: Path, n: int = 0) -> list[dict]:
    return [json.loads((run_dir / f"result-rank{rank}-{n}.json").read_text()) for rank in (0, 1)]


def assert_same_curve(got: dict, want: dict, steps: list[int]) -> None:
    rows = [want["steps"].index(step) for step in steps]
    assert got["steps"] == steps
    # grad_norm too: AdamW and clipping ignore a gradient's scale, so only the norm shows a wrong normalisation.
    for key in ("train_loss", "val_loss", "grad_norm", "tokens_seen"):
        expected = [want[key][i] for i in rows]
        assert [v is None for v in got[key]] == [v is None for v in expected], key  # validation at the same steps
        numbers = [(a, b) for a, b in zip(got[key], expected) if b is not None]
        assert [a for a, _ in numbers] == pytest.approx([b for _, b in numbers], rel=1e-5, abs=1e-6), key


def assert_close_weights(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    # Softmax ignores a shift shared by all keys, so the key bias's true gradient is 0: what it gets is
    # rounding noise, which AdamW (dividing by its own size) turns into steps of ~1e-6 in either direction.
    atol = 1e-5 if name.endswith("attn.k.bias") else 1e-6
    torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=name)


def assert_same_weights(ckpt_a: Path, ckpt_b: Path) -> None:
    a, b = load_file(str(ckpt_a / "model.safetensors")), load_file(str(ckpt_b / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert_close_weights(name, a[name], b[name])


def test_ddp_matches_one_process_with_the_same_global_batch(runs):
    assert_same_curve(metrics(runs / "ddp"), metrics(runs / "single"), steps=list(range(1, 7)))
    assert_same_weights(runs / "ddp" / "step-000006", runs / "single" / "step-000006")
    first, second = rank_results(runs / "ddp")
    assert first == second  # both ranks saw the same summed losses and stopped together
    assert first["stop_reason"] == "max_steps reached" and first["steps"] == 6
    meta = read_meta(runs / "ddp" / "last")
    assert (meta["world_size"], meta["global_batch"]) == (2, 16)


def test_fsdp_matches_one_process_with_the_same_global_batch(runs):
    assert_same_curve(metrics(runs / "fsdp"), metrics(runs / "single"), steps=list(range(1, 7)))
    assert_same_weights(runs / "fsdp" / "step-000006", runs / "single" / "step-000006")
    best_step = read_meta(runs / "fsdp" / "best")["step"]
    assert_same_weights(runs / "fsdp" / "best", runs / "single" / f"step-{best_step:06d}")
    samples = [json.loads(line) for line in (runs / "fsdp" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [3, 6]  # written once (rank 0), from the gathered whole model


def test_interrupt_on_one_rank_stops_every_rank_and_the_resumed_run_is_exact(runs):
    stopped, resumed = rank_results(runs / "ddp_interrupted", 0), rank_results(runs / "ddp_interrupted", 1)
    assert [r["stop_reason"] for r in stopped] == ["interrupted (SIGINT)"] * 2  # only rank 1 got the signal
    assert [r["steps"] for r in stopped] == [3, 3]
    assert all(r["resumed_from"] and r["steps"] == 6 for r in resumed)
    straight, continued = metrics(runs / "ddp_straight"), metrics(runs / "ddp_interrupted")
    assert continued["steps"] == straight["steps"] == list(range(1, 7))
    assert continued["train_loss"] == straight["train_loss"]  # exact: weights, AdamW, data and dropout RNG resumed
    assert continued["val_loss"] == straight["val_loss"]


def test_fsdp_resumes_from_its_own_checkpoint(runs):
    assert load_train_state(runs / "fsdp_resumed" / "step-000003")["world_size"] == 2
    assert metrics(runs / "fsdp_resumed")["train_loss"] == metrics(runs / "fsdp")["train_loss"]


def test_fsdp_checkpoint_loads_and_resumes_in_one_process(runs):
    model = load_model_from_checkpoint(runs / "fsdp" / "last")
    single = load_model_from_checkpoint(runs / "single" / "step-000006")
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        assert_close_weights(name, p, q)
    saved_optimizer = load_train_state(runs / "fsdp" / "last")["optimizer"]
    assert "blocks.0.attn.q.weight" in saved_optimizer["state"]  # whole state, keyed by parameter name
    # One process, grad_accum_steps=4: the same global batch of 16, continuing at the same sample.
    assert_same_curve(metrics(runs / "two_to_one"), metrics(runs / "single"), steps=[7, 8, 9])


def test_one_process_checkpoint_resumes_on_two_ranks(runs):
    first, second = rank_results(runs / "one_to_two")
    assert first["resumed_from"] and first["steps"] == second["steps"] == 6
    assert_same_curve(metrics(runs / "one_to_two"), metrics(runs / "single"), steps=list(range(1, 7)))


def test_ranks_agree_on_the_clock_so_a_time_limit_stops_them_together(runs):
    first, second = rank_results(runs / "timed")
    assert first["stop_reason"] == second["stop_reason"]
    assert first["stop_reason"].startswith("max_time reached")
    assert first["steps"] == second["steps"] > 0
