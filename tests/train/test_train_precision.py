"""precision: auto picks what is faster here, says why, and a resumed run keeps its precision."""

import torch

from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.train import precision as precision_module
from lmforge.train.objectives import lm_loss_sum
from lmforge.train.precision import choose_precision, precision_of_resumed_run

CPU = torch.device("cpu")


def tiny_model_and_batch(dropout=0.0):
    model = GPT(preset_config("gpt2-tiny", vocab_size=40, n_layer=1, n_embd=32, block_size=16, dropout=dropout))
    x = torch.randint(0, 40, (2, 16))
    return model, (x, x)


def test_an_explicit_precision_is_kept():
    model, batch = tiny_model_and_batch()
    assert choose_precision("fp32", model, batch, CPU, lm_loss_sum) == ("fp32", "as configured")
    assert choose_precision("bf16", model, batch, CPU, lm_loss_sum)[0] == "bf16"


def test_auto_is_fp32_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    model, batch = tiny_model_and_batch()
    assert choose_precision("auto", model, batch, CPU, lm_loss_sum) == ("fp32", "auto: this CPU has no native bf16")


def test_auto_keeps_the_faster_precision_of_the_probe(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    model, batch = tiny_model_and_batch()
    for fast in ("fp32", "bf16"):
        monkeypatch.setattr(precision_module, "step_time",
                            lambda m, b, d, p, f, fast=fast: 0.01 if p == fast else 0.02)
        chosen, why = choose_precision("auto", model, batch, CPU, lm_loss_sum)
        assert chosen == fast and "fp32 " in why and "bf16 " in why


def test_the_probe_leaves_no_trace(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    model, batch = tiny_model_and_batch(dropout=0.1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    choose_precision("auto", model, batch, CPU, lm_loss_sum)  # runs real forward+backward passes
    assert torch.equal(torch.rand(3), expected)  # the random stream is where it was
    assert all(p.grad is None for p in model.parameters())


def test_the_probe_leaves_no_trace_in_an_objectives_statistics(monkeypatch):
    """DPO counts rewards per batch it sees; the probe's passes are not training and must not be counted."""
    from lmforge.train.preference import DPOLoss

    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    model, (x, _) = tiny_model_and_batch()
    y = x.clone()
    y[:, :8] = -100  # the prompt: not a target
    loss_fn = DPOLoss(beta=0.1)
    batch = (x, y, x, torch.zeros(2), torch.tensor([[0, 1]]))  # one pair: row 0 chosen, row 1 rejected
    loss_fn(model, *batch)
    counted = loss_fn.take_metrics()
    assert set(counted) == {"train"}  # the objective does count the batches it is given
    choose_precision("auto", model, batch, CPU, loss_fn)
    assert loss_fn.take_metrics() == {}


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path):
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer import CharTokenizer
    from lmforge.train import checkpoint as ckpt

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12))
    ckpt.save_checkpoint(tmp_path, "last", model, CharTokenizer.train(["abcdefghij"]),
                         {"step": 10, "precision": "bf16"}, {"x": torch.ones(1)})
    assert precision_of_resumed_run(tmp_path, "auto") == "bf16"
    assert precision_of_resumed_run(tmp_path, "never") is None
    assert precision_of_resumed_run(tmp_path / "elsewhere", "auto") is None
