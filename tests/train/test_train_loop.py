"""The training loop: gradient accumulation, exact resume, stopping rules, NaN handling, artifacts."""

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from lmforge.data.loader import TokenBatches
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.loop import Trainer
from lmforge.train.objectives import lm_loss_sum

BLOCK = 32


def make_trainer(data_dir, run_dir, loss_fn=lm_loss_sum, dropout=0.0, setup_seconds=0.0, **train):
    tokenizer = load_tokenizer(data_dir)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=tokenizer.vocab_size,
                            dropout=dropout))
    cfg = TrainConfig(**{**dict(out_dir=str(run_dir), max_steps=20, batch_size=4, lr=3e-3, warmup_steps=5,
                                eval_interval=10, eval_steps=4, log_interval=1, sample_interval=0,
                                save_interval=10, resume="never", seed=0), **train})
    batches = TokenBatches(data_dir, "train", BLOCK, cfg.batch_size, seed=cfg.seed)
    val = TokenBatches(data_dir, "val", BLOCK, cfg.batch_size, seed=cfg.seed)
    return Trainer(model, tokenizer, batches, val, cfg, run_dir, torch.device("cpu"), "fp32", loss_fn,
                   setup_seconds=setup_seconds)


def metrics(run_dir):
    return json.loads((run_dir / "training_metrics.json").read_text())


def test_accumulating_k_batches_of_b_equals_one_batch_of_kb(tiny_data, tmp_path):
    whole = make_trainer(tiny_data, tmp_path / "a", batch_size=8, grad_accum_steps=1)
    parts = make_trainer(tiny_data, tmp_path / "b", batch_size=4, grad_accum_steps=2)
    loss_whole, loss_parts = whole.train_step(), parts.train_step()
    assert loss_whole.item() == pytest.approx(loss_parts.item(), rel=1e-6)
    for (name, p), q in zip(whole.model.named_parameters(), parts.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_accumulation_normalises_over_all_targets_when_masks_differ(tiny_data, tmp_path):
    """With some labels masked (-100), micro-batches hold unequal token counts; the step must still equal one big batch."""
    def mask_targets(batches):
        next_batch = batches.next_batch

        def masked():
            x, y = next_batch()
            y[::2, : BLOCK // 2] = -100  # every other row loses half its targets
            return x, y
        batches.next_batch = masked

    whole = make_trainer(tiny_data, tmp_path / "a", batch_size=8, grad_accum_steps=1)
    parts = make_trainer(tiny_data, tmp_path / "b", batch_size=2, grad_accum_steps=4)
    mask_targets(whole.train_batches), mask_targets(parts.train_batches)
    whole.train_step(), parts.train_step()
    for p, q in zip(whole.model.parameters(), parts.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_resume_after_interrupt_gives_bit_identical_losses(tiny_data, tmp_path):
    straight = make_trainer(tiny_data, tmp_path / "straight", dropout=0.1, max_steps=40, save_interval=20)
    straight.fit()

    calls = {"n": 0}

    def interrupt_at_step_20(model, x, y):
        calls["n"] += model.training  # validation calls do not count
        if model.training and calls["n"] == 20:  # one micro-batch per step: we are inside step 20
            os.kill(os.getpid(), signal.SIGINT)
        return lm_loss_sum(model, x, y)

    run = tmp_path / "resumed"
    first = make_trainer(tiny_data, run, interrupt_at_step_20, dropout=0.1, max_steps=40, save_interval=20)
    result = first.fit()
    assert result.stop_reason == "interrupted (SIGINT)" and result.steps == 20
    assert json.loads((run / "last" / "meta.json").read_text())["step"] == 20

    second = make_trainer(tiny_data, run, dropout=0.1, max_steps=40, save_interval=20, resume="auto")
    assert second.resumed_from is not None and second.state.step == 20
    second.fit()
    a, b = metrics(tmp_path / "straight"), metrics(run)
    assert a["steps"] == b["steps"] == list(range(1, 41))
    assert a["train_loss"] == b["train_loss"]  # exact equality: same data, RNG, optimizer state
    assert a["val_loss"] == b["val_loss"]


class Crash(Exception):
    """Stands in for kill -9: the process ends in the middle of a step and saves nothing."""


def crashing_at_micro_batch(n):
    calls = {"n": 0}

    def loss_fn(model, x, y):
        calls["n"] += model.training  # validation calls do not count
        if model.training and calls["n"] == n:
            raise Crash
        return lm_loss_sum(model, x, y)
    return loss_fn


def bf16_trainer(data_dir, run_dir, loss_fn=lm_loss_sum, **train):
    trainer = make_trainer(data_dir, run_dir, loss_fn, dropout=0.1, max_steps=30, grad_accum_steps=2,
                           save_interval=10, **train)
    trainer.precision = "bf16"
    return trainer


def test_a_crash_between_saves_with_accumulation_in_bf16_resumes_exactly_from_the_last_save(tiny_data, tmp_path):
    straight = bf16_trainer(tiny_data, tmp_path / "straight")
    straight.fit()
    run = tmp_path / "crashed"
    with pytest.raises(Crash):  # the second micro-batch of step 15: 14 steps done, 4 past the last save
        bf16_trainer(tiny_data, run, crashing_at_micro_batch(2 * 14 + 2)).fit()
    assert json.loads((run / "last" / "meta.json").read_text())["step"] == 10
    assert metrics(run)["steps"][-1] == 14  # the log ran ahead of the checkpoint; resume rewinds it
    resumed = bf16_trainer(tiny_data, run, resume="auto")
    assert resumed.state.step == 10
    resumed.fit()
    a, b = metrics(tmp_path / "straight"), metrics(run)
    assert a["steps"] == b["steps"] == list(range(1, 31))
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_an_interrupt_at_a_step_that_is_not_a_save_step_resumes_exactly(tiny_data, tmp_path):
    straight = bf16_trainer(tiny_data, tmp_path / "straight")
    straight.fit()
    calls = {"n": 0}

    def interrupt_in_step_15(model, x, y):
        calls["n"] += model.training
        if model.training and calls["n"] == 2 * 14 + 1:  # first micro-batch of step 15
            os.kill(os.getpid(), signal.SIGINT)
        return lm_loss_sum(model, x, y)

    run = tmp_path / "interrupted"
    assert bf16_trainer(tiny_data, run, interrupt_in_step_15).fit().steps == 15  # the step completes, then saves
    assert json.loads((run / "last" / "meta.json").read_text())["step"] == 15
    resumed = bf16_trainer(tiny_data, run, resume="auto")
    assert resumed.state.step == 15
    resumed.fit()
    a, b = metrics(tmp_path / "straight"), metrics(run)
    assert a["steps"] == b["steps"] and a["train_loss"] == b["train_loss"]
    assert a["val_loss"][14] is None and b["val_loss"][14] is not None  # the interrupt evaluates before it saves
    assert a["val_loss"][:14] + a["val_loss"][15:] == b["val_loss"][:14] + b["val_loss"][15:]


def test_bf16_precision_runs_the_matmuls_in_bf16_and_fp32_does_not(tiny_data, tmp_path):
    seen = {}
    for precision in ("bf16", "fp32"):
        trainer = make_trainer(tiny_data, tmp_path / precision)
        trainer.precision = precision
        first_linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))

        def record_dtype(module, args, out, precision=precision):
            seen.setdefault(precision, out.dtype)

        handle = first_linear.register_forward_hook(record_dtype)
        trainer.train_step()
        handle.remove()
        assert trainer.model.tok_emb.weight.dtype == torch.float32  # master weights stay fp32 either way
    assert seen == {"bf16": torch.bfloat16, "fp32": torch.float32}


def test_resume_skips_a_damaged_last_and_continues_exactly_from_the_newest_intact_step(tiny_data, tmp_path, capsys):
    straight = make_trainer(tiny_data, tmp_path / "straight", dropout=0.1, max_steps=40)
    straight.fit()
    run = tmp_path / "run"
    with pytest.raises(Crash):
        make_trainer(tiny_data, run, crashing_at_micro_batch(31), dropout=0.1, max_steps=40).fit()
    weights = run / "last" / "model.safetensors"  # a hard link of step-000030's: both are damaged
    with open(weights, "r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    resumed = make_trainer(tiny_data, run, dropout=0.1, max_steps=40, resume="auto")
    out = capsys.readouterr().out
    assert "last/ is damaged (model.safetensors has" in out and "step-000030/ is damaged" in out
    assert "falling back to step-000020/" in out
    assert resumed.state.step == 20
    resumed.fit()
    a, b = metrics(tmp_path / "straight"), metrics(run)
    assert a["steps"] == b["steps"] and a["train_loss"] == b["train_loss"]


def test_an_explicit_resume_of_a_damaged_checkpoint_is_refused(tiny_data, tmp_path):
    run = tmp_path / "run"
    make_trainer(tiny_data, run, max_steps=10).fit()
    (run / "step-000010" / "train_state.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"step-000010 is damaged: train_state.pt has"):
        make_trainer(tiny_data, run, max_steps=20, resume=str(run / "step-000010"))


def test_run_writes_every_artifact(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = make_trainer(tiny_data, run, max_steps=30, sample_interval=15, keep_last=1).fit()
    assert result.stop_reason == "max_steps reached"
    for name in ("training_metrics.json", "training_curve.png", "loss_by_epoch.png", "samples.jsonl", "diagnosis.txt"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["best", "last", "step-000030"]
    assert (run / "last" / "train_state.pt").is_file() and not (run / "best" / "train_state.pt").exists()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [15, 30] and all(isinstance(s["text"], str) for s in samples)
    m = metrics(run)
    assert m["train_loss"][-1] < m["train_loss"][0]
    assert m["val_loss"][9] is not None and m["val_loss"][0] is None
    best_meta = json.loads((run / "best" / "meta.json").read_text())
    assert best_meta["val_loss"] == pytest.approx(min(v for v in m["val_loss"] if v is not None))


def test_epochs_stop_the_run_and_set_the_schedule_length(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path / "run", max_steps=None, epochs=1.0)
    per_epoch = trainer.train_batches.batches_per_epoch
    assert trainer.total_steps == per_epoch
    result = trainer.fit()
    assert result.stop_reason == "epochs reached" and result.steps == per_epoch


class FakeClock:
    """The loop's clock, advanced only by the loss functions below: time budgets become exact arithmetic."""

    def __init__(self, monkeypatch):
        import types

        import lmforge.train.loop as loop_module
        self.now = 0.0
        monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=lambda: self.now))

    def loss_costing(self, train_seconds, eval_seconds):
        """A loss function whose training micro-batches take `train_seconds(step)` and eval batches `eval_seconds`."""
        def loss_fn(model, x, y):
            self.now += train_seconds() if model.training else eval_seconds
            return lm_loss_sum(model, x, y)
        return loss_fn


def test_a_time_budget_is_fitted_from_the_first_steps_and_used_up_ending_at_min_lr(tiny_data, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    run = tmp_path / "run"
    # 0.025 s per step, 0.04 s per evaluation (every 10 steps), 0.5 s of setup, a 10 s budget.
    trainer = make_trainer(tiny_data, run, clock.loss_costing(lambda: 0.025, 0.01), max_steps=None, max_time=10.0,
                           min_lr=1e-4, setup_seconds=0.5, save_interval=1000)
    result = trainer.fit()
    s = trainer.state
    # By hand: speed is measured from the end of step 1; after step k that took 0.025 (k - 1) s plus 0.04 s
    # per evaluation since: 0.49 s at step 19, 0.515 s at step 20, the first to reach 5% of the budget.
    assert s.fitted_at == 20 and s.rechecked
    assert result.steps == s.fitted_steps == trainer.total_steps
    assert result.stop_reason == f"max_time reached: the {s.fitted_steps} steps fitted to the 10 s budget are done"
    # The plan used the budget: training plus the final evaluation (0.04 s) ends inside it, less the 3%
    # headroom, and not much earlier (the fit also reserves real seconds for the checkpoint and report, which
    # take no time on the fake clock; the half-way check keeps a plan that is within 1%).
    end = result.elapsed + 0.04
    assert 10.0 * 0.97 - 0.45 <= end <= 10.0 * 0.97
    m = metrics(run)
    assert m["learning_rate"][-1] == pytest.approx(1e-4)  # the last step trained at min_lr
    assert json.loads((run / "last" / "meta.json").read_text())["step"] == s.fitted_steps


def test_a_run_that_slows_down_is_replanned_half_way_and_still_ends_inside_its_budget(
        tiny_data, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    trainer = make_trainer(tiny_data, tmp_path / "run", max_steps=None, max_time=10.0, save_interval=1000)
    # A laptop that throttles: 0.025 s per step until step 30, then 0.05 s.
    trainer.loss_fn = clock.loss_costing(lambda: 0.025 if trainer.state.step < 30 else 0.05, 0.01)
    planned = {}
    recheck = trainer._recheck_time_budget

    def remember_the_plan(step_clock):
        planned["steps"] = trainer.state.fitted_steps
        recheck(step_clock)
    trainer._recheck_time_budget = remember_the_plan
    result = trainer.fit()
    assert trainer.state.fitted_steps < planned["steps"]  # the half-way check shortened the plan
    assert result.stop_reason.startswith("max_time reached: the")  # ended by the plan, not the hard stop
    assert result.elapsed + 0.04 <= 10.0
    assert metrics(tmp_path / "run")["learning_rate"][-1] == pytest.approx(trainer.cfg.min_lr)


def test_a_fitted_time_budget_is_kept_on_resume_and_the_schedule_follows_it(tiny_data, tmp_path, monkeypatch):
    from lmforge.train.budget import recheck_step
    from lmforge.train.optim import decay_progress, lr_at

    clock = FakeClock(monkeypatch)
    timed = clock.loss_costing(lambda: 0.025, 0.01)
    calls = {"n": 0}

    def interrupt_at_step_25(model, x, y):  # after the fit (at step 20), before the half-way check
        calls["n"] += model.training
        if model.training and calls["n"] == 25:
            os.kill(os.getpid(), signal.SIGINT)
        return timed(model, x, y)

    run = tmp_path / "run"
    first = make_trainer(tiny_data, run, interrupt_at_step_25, max_steps=None, max_time=10.0, save_interval=5)
    assert first.fit().steps == 25
    fitted, fitted_at = first.state.fitted_steps, first.state.fitted_at
    assert fitted_at == 20 and fitted > 25 and not first.state.rechecked
    # The resumed session trains to the saved plan: it does not fit again, and checks it half-way.
    second = make_trainer(tiny_data, run, timed, max_steps=None, max_time=10.0, save_interval=5, resume="auto")
    assert (second.state.fitted_steps, second.state.fitted_at) == (fitted, 20) and second.total_steps == fitted
    result = second.fit()
    final = second.state.fitted_steps
    assert second.state.rechecked and result.steps == final
    m = metrics(run)
    cfg = second.cfg
    assert m["steps"] == list(range(1, final + 1))
    # Step N logs the learning rate of step index N-1. Up to the fit (step 20) the length is unknown and the
    # decay has not started; then the schedule is the fitted plan's, and after the half-way check the final one.
    halfway = recheck_step(fitted_at, fitted)
    for step, lr in zip(m["steps"], m["learning_rate"]):
        horizon = None if step <= 20 else (fitted if step <= halfway else final)
        progress = decay_progress(step - 1, horizon, cfg.warmup_steps)
        assert lr == pytest.approx(lr_at(step - 1, cfg, progress), rel=1e-12)
    assert m["learning_rate"][-1] == pytest.approx(cfg.min_lr)


def test_max_time_is_also_a_hard_stop_when_the_run_slows_down_after_the_half_way_check(
        tiny_data, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    trainer = make_trainer(tiny_data, tmp_path / "run", max_steps=None, max_time=10.0)
    # 0.025 s per step until the half-way check is done, then 0.3 s: the plan no longer fits.
    trainer.loss_fn = clock.loss_costing(lambda: 0.3 if trainer.state.rechecked else 0.025, 0.01)
    result = trainer.fit()
    assert result.stop_reason == f"max_time reached at step {result.steps} of the {trainer.state.fitted_steps} " \
                                 f"fitted (the run slowed down)"
    assert 10.0 <= result.elapsed < 10.0 + 0.3 + 0.04


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    calls = {"n": 0}

    def explodes_at_step_15(model, x, y):
        if model.training:
            calls["n"] += 1
        loss = lm_loss_sum(model, x, y)
        return loss * float("nan") if calls["n"] >= 15 else loss

    run = tmp_path / "run"
    result = make_trainer(tiny_data, run, explodes_at_step_15, max_steps=40).fit()
    assert result.stop_reason.startswith("diverged") and result.steps == 15
    assert json.loads((run / "last" / "meta.json").read_text())["step"] == 10  # the save before the NaN
    assert (run / "diagnosis.txt").read_text().startswith("Verdict: diverging")


def test_early_stopping_when_validation_stops_improving(tiny_data, tmp_path):
    evals = {"n": 0}

    def val_gets_worse(model, x, y):
        # Validation runs in eval mode (4 batches per evaluation); after the 2nd evaluation it degrades.
        loss = lm_loss_sum(model, x, y)
        if model.training:
            return loss
        evals["n"] += 1
        evaluation = (evals["n"] - 1) // 4 + 1
        return loss * (1.0 if evaluation <= 2 else 1.0 + 0.5 * evaluation)

    run = tmp_path / "run"
    result = make_trainer(tiny_data, run, val_gets_worse, max_steps=200, eval_interval=5,
                          early_stopping_patience=2).fit()
    assert result.stop_reason.startswith("early stopping")
    assert result.steps == 20 and result.best_step == 10
    assert json.loads((run / "best" / "meta.json").read_text())["step"] == 10


def test_warmup_then_cosine_schedule():
    from lmforge.train.optim import lr_at

    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg, 0.0) == pytest.approx(0.1)
    assert lr_at(9, cfg, 0.0) == pytest.approx(1.0)
    assert lr_at(50, cfg, 0.5) == pytest.approx(0.55)
    assert lr_at(100, cfg, 1.0) == pytest.approx(0.1)
    linear = replace(cfg, schedule="linear")
    assert lr_at(50, linear, 0.25) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(50, replace(cfg, schedule="constant"), 0.7) == 1.0


def test_decay_and_no_decay_groups():
    from lmforge.train.optim import param_groups

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.blocks[0].attn.q.weight) in decay_ids
    assert id(model.tok_emb.weight) not in decay_ids and id(model.blocks[0].attn.q.bias) not in decay_ids
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == model.num_params()


def test_adamw_uses_the_fused_kernel_on_cpu_and_matches_the_reference_update():
    from lmforge.train.optim import build_optimizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))
    reference = GPT(model.config)
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    fused = build_optimizer(model, cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(
        [{"params": [dict(reference.named_parameters())[n] for n, _ in _names(model, g)], "weight_decay": g["weight_decay"]}
         for g in fused.param_groups], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    x = torch.randint(0, 20, (2, 8))
    for _ in range(3):
        for net, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def test_bf16_autocast_trains_on_cpu(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path / "run", max_steps=30)
    trainer.precision = "bf16"
    trainer.fit()
    m = metrics(tmp_path / "run")
    assert m["train_loss"][-1] < 0.9 * m["train_loss"][0]
    assert trainer.model.tok_emb.weight.dtype == torch.float32  # autocast: master weights stay fp32


def test_precision_choice():
    from lmforge.utils.device import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, n_params=1_000_000) == "fp32"  # tiny models are faster in fp32 on CPU
    assert resolve_precision("bf16", cpu, n_params=10) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu, n_params=10)


def test_rerunning_a_finished_run_trains_nothing_more(tiny_data, tmp_path):
    run = tmp_path / "run"
    make_trainer(tiny_data, run, max_steps=10).fit()
    again = make_trainer(tiny_data, run, max_steps=10, resume="auto")
    result = again.fit()
    assert result.steps == 10 and result.stop_reason == "max_steps reached"
    assert metrics(run)["steps"][-1] == 10


def test_activation_checkpointing_gives_the_same_losses_with_dropout(tiny_data, tmp_path):
    plain = make_trainer(tiny_data, tmp_path / "plain", dropout=0.1)
    recomputed = make_trainer(tiny_data, tmp_path / "ckpt", dropout=0.1, activation_checkpointing=True)
    assert recomputed.model.activation_checkpointing and not plain.model.activation_checkpointing
    losses = []
    for trainer in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout masks for both, if the recomputation replays them
        losses.append([float(trainer.train_step()) for _ in range(4)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(plain.model.parameters(), recomputed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_keeps_fewer_tensors_for_backward():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=2, n_embd=64, block_size=64, vocab_size=50))
    x = torch.randint(0, 50, (4, 64))

    def saved_bytes(recompute):
        model.activation_checkpointing = recompute
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, targets=x).backward()
        return sum(total)

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_a_torn_last_line_of_samples_jsonl_does_not_stop_a_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    make_trainer(tiny_data, run, max_steps=20, sample_interval=10, save_interval=10).fit()
    with open(run / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 30, "prompt": "", "te')  # a crash in the middle of writing a sample
    resumed = make_trainer(tiny_data, run, max_steps=30, sample_interval=10, save_interval=10, resume="auto")
    resumed.fit()
    lines = (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20, 30]
