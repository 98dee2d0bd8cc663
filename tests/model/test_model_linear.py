"""The decode-time layout choice of lmforge's Linear changes speed, never results."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.model import linear as linear_module
from lmforge.model.linear import Linear


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(linear_module, "_weight_major_choice", {})


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("force", [True, False])
def test_both_layouts_give_the_linear_result(bias, force, monkeypatch):
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    x = torch.randn(3, 1, 48)  # 3 sequences, one new token each: a decode step
    monkeypatch.setattr(linear_module, "_probe", lambda *args: force)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (3, 1, 80) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_training_and_long_inputs_never_probe(monkeypatch):
    calls = []
    monkeypatch.setattr(linear_module, "_probe", lambda *args: calls.append(args) or True)
    layer = Linear(16, 16)
    layer(torch.randn(2, 16)).sum().backward()  # autograd on: always F.linear
    with torch.no_grad():
        layer(torch.randn(4, 32, 16))  # 128 rows: a prefill, not a decode step
    assert calls == []
    with torch.no_grad():
        layer(torch.randn(4, 1, 16))
        layer(torch.randn(4, 1, 16))
    assert len(calls) == 1  # probed once for this (shape, dtype, rows, threads), then remembered


def test_it_is_still_an_nn_linear_with_the_same_state_dict():
    layer = Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}
