"""model.fit_to_budget: the speed probe that picks a model's shape for a time budget."""

import pytest
import torch

from lmforge.model.config import ModelConfig, preset_config
from lmforge.train import sizing
from lmforge.train.config import TrainConfig
from lmforge.train.optim import build_optimizer


def fake_timings(monkeypatch, seconds_per_step: dict):
    """Each ladder shape takes the given seconds per step; params are the real non-embedding counts."""
    timed = []

    def time_steps(config, batch, make_optimizer, device, precision="fp32"):
        timed.append((config.n_layer, config.n_embd))
        params = sizing.GPT(config).num_params(exclude_embeddings=True)
        return seconds_per_step[(config.n_layer, config.n_embd)], params
    monkeypatch.setattr(sizing, "_time_steps", time_steps)
    return timed


def test_the_largest_shape_that_sees_enough_tokens_per_parameter_is_picked(monkeypatch):
    base = preset_config("gpt2-tiny", vocab_size=64)
    # 100 s left, 80% of it for training, 1,000 tokens per step: tokens = 80,000 / seconds per step.
    timed = fake_timings(monkeypatch, {(2, 64): 0.01, (3, 96): 0.02, (4, 128): 0.05, (6, 192): 0.1})
    chosen, trials = sizing.pick_model_size(base, batch=None, seconds_left=100.0, make_optimizer=None,
                                            step_tokens=1000)
    # By hand: 2x64 has 100,096 params outside the embeddings: 8.0M tokens = 80 per param; 3x96 has 335,712:
    # 4.0M tokens = 12 per param, under 20, so the probe stops there (bigger shapes are not even timed).
    assert timed == [(2, 64), (3, 96)]
    assert [t.params for t in trials] == [100_096, 335_712]
    assert trials[0].tokens_per_param == pytest.approx(80e3 / 0.01 / 100_096, rel=1e-3)
    assert (chosen.n_layer, chosen.n_embd, chosen.n_head) == (2, 64, 2)


def test_a_fast_machine_gets_a_bigger_model_and_a_slow_one_the_smallest(monkeypatch):
    base = preset_config("gpt2-tiny", vocab_size=64)
    fast = {(2, 64): 0.0001, (3, 96): 0.0002, (4, 128): 0.0005, (6, 192): 0.01, (8, 256): 0.1}
    fake_timings(monkeypatch, fast)
    chosen, _ = sizing.pick_model_size(base, None, 100.0, None, 1000)
    # 4x128: 793,344 params, 160M tokens = 202 per param; 6x192: 2,669,568 params, 8M tokens = 3 per param.
    assert (chosen.n_layer, chosen.n_embd, chosen.n_head) == (4, 128, 4)

    fake_timings(monkeypatch, {(2, 64): 10.0})
    chosen, trials = sizing.pick_model_size(base, None, 100.0, None, 1000)
    assert len(trials) == 1 and (chosen.n_layer, chosen.n_embd) == (2, 64)  # nothing fits: the smallest


def test_each_shape_is_timed_in_each_precision_and_counted_at_the_fastest(monkeypatch):
    """On an AMX CPU bf16 trains these models 1.1-1.2x faster than fp32; a probe timing fp32 only picked a
    smaller model than the run (which then chose bf16) could train in its budget."""
    base = preset_config("gpt2-tiny", vocab_size=64)
    timings = {("fp32", 2, 64): 0.01, ("bf16", 2, 64): 0.008,
               ("fp32", 3, 96): 0.021, ("bf16", 3, 96): 0.015, ("fp32", 4, 128): 0.06, ("bf16", 4, 128): 0.07}
    calls = []

    def time_steps(config, batch, make_optimizer, device, precision="fp32"):
        calls.append((precision, config.n_layer, config.n_embd))
        return timings[calls[-1]], sizing.GPT(config).num_params(exclude_embeddings=True)
    monkeypatch.setattr(sizing, "_time_steps", time_steps)
    chosen, trials = sizing.pick_model_size(base, None, 100.0, None, 1000, precisions=("fp32", "bf16"))
    # By hand: 3x96 (335,712 params) in bf16 sees 80,000 / 0.015 * 1000 = 5.33M tokens = 15.9 per param: under
    # 20, so the probe stops there and keeps 2x64.
    assert calls == [(p, n, e) for n, e in ((2, 64), (3, 96)) for p in ("fp32", "bf16")]
    assert [(t.precision, t.seconds_per_step) for t in trials] == [("bf16", 0.008), ("bf16", 0.015)]
    assert (chosen.n_layer, chosen.n_embd) == (2, 64)
    # Twice the budget: 3x96 sees 31.8 tokens per param in bf16 (15.2 in fp32 would not have fitted); 4x128 is
    # faster in fp32 here, and that is the time it is counted at (3.4 per param: too few).
    calls.clear()
    chosen, trials = sizing.pick_model_size(base, None, 200.0, None, 1000, precisions=("fp32", "bf16"))
    assert calls == [(p, n, e) for n, e in ((2, 64), (3, 96), (4, 128)) for p in ("fp32", "bf16")]
    assert [(t.precision, t.seconds_per_step) for t in trials] == [("bf16", 0.008), ("bf16", 0.015), ("fp32", 0.06)]
    assert trials[1].tokens_per_param == pytest.approx(160e3 / 0.015 / 335_712, rel=1e-3)
    assert (chosen.n_layer, chosen.n_embd) == (3, 96)


def test_the_precisions_the_probe_tries_are_the_ones_the_run_may_choose(monkeypatch):
    from lmforge.train import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert precision.candidate_precisions("auto", cpu) == ("fp32", "bf16")
    assert precision.candidate_precisions("fp32", cpu) == ("fp32",)
    assert precision.candidate_precisions("bf16", cpu) == ("bf16",)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert precision.candidate_precisions("auto", cpu) == ("fp32",)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        precision.candidate_precisions("fp16", cpu)
    # On a GPU, auto is the GPU's half precision, as the run will resolve it (no probe there).
    cuda = torch.device("cuda")
    for supported, expected in ((True, ("bf16",)), (False, ("fp16",))):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, s=supported, **kwargs: s)
        assert precision.candidate_precisions("auto", cuda) == expected
    assert precision.candidate_precisions("auto", torch.device("mps")) == ("fp32",)


def test_the_run_trains_in_the_precision_its_shape_was_sized_for(tmp_path, monkeypatch):
    """With train.precision auto the probe times both precisions; the run then uses the faster one for the chosen
    shape (a second probe could pick the other when they are close, and the model would be sized too big)."""
    from lmforge.train import pretrain

    class OneBatch:
        def __init__(self, *args, **kwargs):
            pass

        def eval_batches(self, n):
            yield torch.zeros(8, 16, dtype=torch.long), torch.zeros(8, 16, dtype=torch.long)

    timings = {"fp32": 0.004, "bf16": 0.003}
    monkeypatch.setattr(pretrain, "TokenBatches", OneBatch)
    monkeypatch.setattr(sizing, "_time_steps", lambda config, batch, make_optimizer, device, precision: (
        timings[precision] * config.n_layer, sizing.GPT(config).num_params(exclude_embeddings=True)))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=None, max_time=60.0, reuse_memory=False)
    monkeypatch.setattr(pretrain, "candidate_precisions", lambda requested, device: ("fp32", "bf16"))
    chosen, measured = pretrain.size_to_budget(preset_config("gpt2-tiny"), cfg, tmp_path, 64, torch.device("cpu"), 9.0)
    # By hand: 7.2 s of training, 16 x 256 = 4,096 tokens per step; 2x64 in bf16 (6 ms) sees 4.9M tokens = 49 per
    # param; 3x96 (9 ms) 3.3M = 9.8, too few: 2x64 is chosen, and its faster precision with it.
    assert (chosen.n_layer, chosen.n_embd) == (2, 64)
    assert measured == ("bf16", "auto: the size probe's training steps, fp32 8.0 ms/step, bf16 6.0 ms/step")
    monkeypatch.setattr(pretrain, "candidate_precisions", lambda requested, device: ("fp32",))
    assert pretrain.size_to_budget(preset_config("gpt2-tiny"), cfg, tmp_path, 64, torch.device("cpu"), 9.0)[1] is None


def test_a_step_is_timed_in_the_precision_asked_for_and_the_median_of_the_timed_steps_counts(monkeypatch):
    base = preset_config("gpt2-tiny", vocab_size=64, block_size=16)
    x = torch.randint(0, 64, (2, 16))
    seen_dtypes = []
    real_loss = sizing.lm_loss_sum

    def loss_sum(model, inputs, targets):
        seen_dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return real_loss(model, inputs, targets)
    monkeypatch.setattr(sizing, "lm_loss_sum", loss_sum)
    # Each timed step reads the clock twice; the three steps take 5, 1 and 2 s: the median is 2.
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 22.0])
    monkeypatch.setattr(sizing, "clock", lambda: next(clock))
    seconds, params = sizing._time_steps(sizing.ladder_config(base, 2, 64), (x, x.roll(-1, 1)),
                                         lambda m: build_optimizer(m, TrainConfig(), torch.device("cpu")),
                                         torch.device("cpu"), "bf16")
    assert seconds == 2.0 and params == sizing.GPT(sizing.ladder_config(base, 2, 64)).num_params(True)
    assert seen_dtypes == [torch.bfloat16] * (sizing.WARMUP_STEPS + sizing.PROBE_STEPS)


def test_the_probe_times_real_training_steps():
    base = preset_config("gpt2-tiny", vocab_size=64, block_size=16)
    x = torch.randint(0, 64, (2, 16))
    cfg = TrainConfig()
    chosen, trials = sizing.pick_model_size(base, (x, x.roll(-1, 1)), 0.5, lambda m: build_optimizer(
        m, cfg, torch.device("cpu")), step_tokens=32)
    assert trials and all(t.seconds_per_step > 0 for t in trials)
    assert (chosen.n_layer, chosen.n_embd) in sizing.SIZE_LADDER


def test_a_resumed_run_keeps_the_shape_it_started_with(tmp_path):
    from lmforge.train.pretrain import size_to_budget

    from lmforge.model.gpt import GPT
    from lmforge.tokenizer import CharTokenizer
    from lmforge.train import checkpoint as ckpt

    run = tmp_path / "run"
    model = GPT(ModelConfig(n_layer=3, n_head=3, n_embd=96, block_size=8, vocab_size=12))
    ckpt.save_checkpoint(run, "last", model, CharTokenizer.train(["abcdefghij"]), {"step": 5}, {"x": torch.ones(1)})
    cfg = TrainConfig(out_dir=str(run), max_steps=None, max_time=60.0)
    chosen, measured = size_to_budget(preset_config("gpt2-tiny"), cfg, tmp_path / "no-data", 64, torch.device("cpu"),
                                      50.0)
    assert (chosen.n_layer, chosen.n_embd, chosen.n_head) == (3, 96, 3)
    assert measured is None  # nothing timed: the resumed run's own precision applies (train/precision.py)


def test_fit_to_budget_needs_a_time_budget(tmp_path):
    from lmforge.train.pretrain import size_to_budget

    with pytest.raises(ValueError, match="model.fit_to_budget: needs train.max_time"):
        size_to_budget(preset_config("gpt2-tiny"), TrainConfig(out_dir=str(tmp_path)), tmp_path, 64,
                       torch.device("cpu"), 50.0)


@pytest.mark.parametrize("reuse_memory", [True, False])
def test_the_probe_times_steps_with_the_memory_setting_the_run_will_have(tmp_path, monkeypatch, reuse_memory):
    """The Trainer keeps freed memory (train.reuse_memory); a probe timed before that paid a page fault per big
    tensor per step and measured tiny models 1.5-2.5x slower than they then trained."""
    from lmforge.train import pretrain

    events = []

    class OneBatch:
        def __init__(self, *args, **kwargs):
            pass

        def eval_batches(self, n):
            yield torch.zeros(8, 16, dtype=torch.long), torch.zeros(8, 16, dtype=torch.long)

    monkeypatch.setattr(pretrain, "TokenBatches", OneBatch)
    monkeypatch.setattr(pretrain, "keep_freed_memory", lambda: events.append("keep freed memory"))
    monkeypatch.setattr(sizing, "_time_steps", lambda *args: (events.append("timed"), (10.0, 1000))[1])
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=None, max_time=60.0, reuse_memory=reuse_memory)
    pretrain.size_to_budget(preset_config("gpt2-tiny"), cfg, tmp_path, 64, torch.device("cpu"), 50.0)
    assert events[0] == ("keep freed memory" if reuse_memory else "timed") and "timed" in events


def test_the_probe_leaves_the_runs_random_stream_as_it_found_it(tmp_path, monkeypatch):
    """The run's starting weights depend on the seed and the chosen shape, not on what the probe built."""
    from lmforge.train import pretrain

    class OneBatch:
        def __init__(self, *args, **kwargs):
            pass

        def eval_batches(self, n):
            tokens = torch.arange(34).remainder(64).view(2, 17)  # no random draw here: the test watches the stream
            yield tokens[:, :-1], tokens[:, 1:]

    monkeypatch.setattr(pretrain, "TokenBatches", OneBatch)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=None, max_time=60.0, batch_size=2, reuse_memory=False)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    pretrain.size_to_budget(preset_config("gpt2-tiny", block_size=16), cfg, tmp_path, 64, torch.device("cpu"), 0.5)
    assert torch.equal(torch.get_rng_state(), before)
