"""train.compile: compiled training matches eager, and a machine without a compiler falls back to eager."""


import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.train import compile as compile_mod
from lmforge.utils import compiler


def test_without_a_cpp_compiler_the_model_runs_eager_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(compiler.shutil, "which", lambda name: None)
    model = torch.nn.Linear(2, 2)
    assert compile_mod.maybe_compile(model, True, torch.device("cpu")) is model
    assert "running eager" in capsys.readouterr().out
    assert compile_mod.maybe_compile(model, False, torch.device("cpu")) is model


@pytest.mark.skipif(compile_mod.compiler_problem(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_compiled_training_steps_match_eager():
    torch.manual_seed(0)
    eager = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    compiled_source = GPT(eager.config)
    compiled_source.load_state_dict(eager.state_dict())
    compiled = compile_mod.maybe_compile(compiled_source, True, torch.device("cpu"), verbose=False)
    assert compiled is not compiled_source
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    for net, source in ((eager, eager), (compiled, compiled_source)):
        opt = torch.optim.SGD(source.parameters(), lr=0.1)
        losses = []
        for _ in range(2):
            loss = net(x, targets=y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        source.losses = losses
    assert compiled_source.losses == pytest.approx(eager.losses, rel=1e-4)
