"""Generation with a compiled decode step gives the eager engine's tokens, and falls back where it cannot compile."""

import pytest
import torch

from lmforge.generate import engine as engine_module
from lmforge.generate.engine import Engine, compile_problem, generate_tokens
from lmforge.generate.params import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, tie_embeddings=False, vocab_size=50)
FAMILIES = {
    "gpt2": dict(TINY),
    "llama": dict(TINY, n_kv_head=2, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False),
}
CAN_COMPILE = compile_problem(torch.nn.Linear(1, 1)) is None


def tiny_model(family: str) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**FAMILIES[family])).eval()


def token_rows(model: GPT, prompts: list[list[int]], params: SamplingParams, compile: bool) -> list[list[int]]:
    return [list(row) for row in zip(*generate_tokens(model, prompts, params, compile=compile))]


@pytest.mark.skipif(not CAN_COMPILE, reason="no C++ compiler for torch.compile")  # CI installs g++ with Python
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_decoding_gives_the_eager_tokens(family):
    model = tiny_model(family)
    # Two prompts of different lengths (padding and per-row positions), 30 new tokens in a 16-token window
    # (the window slides), then a single prompt (no padding, another batch size): every case a graph meets.
    cases = [([[3, 1, 4, 1, 5], [9, 2]], 30), ([[7, 7, 2]], 12)]
    for prompts, n in cases:
        params = SamplingParams(temperature=0, max_new_tokens=n)
        assert token_rows(model, prompts, params, compile=True) == token_rows(model, prompts, params, compile=False)
    # Sampling reads the same logits: seeded draws agree too.
    sampled = SamplingParams(temperature=1.0, top_k=10, max_new_tokens=10)
    draws = [[torch.Generator().manual_seed(5)] for _ in range(2)]
    compiled = [row for row in zip(*generate_tokens(model, [[1, 2]], sampled, draws[0], compile=True))]
    eager = [row for row in zip(*generate_tokens(model, [[1, 2]], sampled, draws[1], compile=False))]
    assert compiled == eager


def test_without_a_compiler_the_engine_warns_and_runs_eagerly(monkeypatch):
    monkeypatch.setattr(engine_module, "compiler_problem", lambda device: "no C++ compiler found")
    chars = CharTokenizer.train(["abcdefghij"])
    model = GPT(ModelConfig(**dict(TINY, vocab_size=chars.vocab_size))).eval()
    with pytest.warns(UserWarning, match="without compiling: no C\\+\\+ compiler"):
        engine = Engine(model, chars, compile=True)
    assert engine.compile is False
    params = SamplingParams(temperature=0, max_new_tokens=5)
    assert engine.generate(["abc"], params) == Engine(model, chars).generate(["abc"], params)
