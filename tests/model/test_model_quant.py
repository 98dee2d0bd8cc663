"""Weight-only int8 (model/quant.py): close to fp32, a quarter of the memory, a kernel that works here."""

import copy
import json

import pytest
import torch
import torch.nn as nn

from lmforge.cli.main import main
from lmforge.generate.engine import generate_tokens
from lmforge.generate.params import SamplingParams
from lmforge.model import quant
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.quant import DECODE_ROWS, KERNELS, Int8Embedding, Int8Linear, quantize_model, quantized_bytes
from lmforge.tokenizer import CharTokenizer
from lmforge.train.checkpoint import save_checkpoint
from lmforge.utils.compiler import compiler_problem
from tests.testdata import SHAKESPEARE

# int8 rounds each weight by at most half a step of max|row| / 127. Measured as max |int8 - fp32| logit
# over the std of the fp32 logits: 0.4-0.7% for the trained model below, 3-4.5% for random-init ones
# (their logits are all near zero, so the same rounding is a larger share of their spread).
TRAINED_TOLERANCE = 0.02
RANDOM_TOLERANCE = 0.06
NEW_TOKENS = 60
LEAN_KERNELS = [name for name, k in KERNELS.items() if k.extra_bytes_per_weight == 0 and name != "compiled"]


def tiny_model(bias=True, tied=True, n_embd=64, vocab_size=65) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=n_embd, block_size=32, bias=bias,
                           tie_embeddings=tied)).eval()


@pytest.fixture(scope="module")
def trained():
    """A tiny character model trained for a few seconds on Shakespeare: peaked logits, like a real model's."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000]
    tokenizer = CharTokenizer.train([text])
    data = torch.tensor(tokenizer.encode(text))
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(len(data) - 33, (16,), generator=generator)
        x = torch.stack([data[s:s + 32] for s in starts])
        y = torch.stack([data[s + 1:s + 33] for s in starts])
        loss = model(x, targets=y) / y.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 3.0  # well below a uniform guess (ln 65 = 4.2): it learnt something
    return model.eval(), tokenizer, data


def quantized(model: GPT, kernel: str = "auto") -> GPT:
    model = copy.deepcopy(model)
    quantize_model(model, kernel=kernel)
    return model


def logits_error(model: GPT, ids: torch.Tensor) -> float:
    with torch.no_grad():
        reference = model(ids)
        return ((quantized(model)(ids) - reference).abs().max() / reference.std()).item()


@pytest.mark.parametrize("bias, tied", [(True, True), (False, False)])
def test_int8_logits_stay_close_to_fp32(bias, tied):
    model = tiny_model(bias=bias, tied=tied)
    ids = torch.randint(65, (2, 32), generator=torch.Generator().manual_seed(1))
    assert logits_error(model, ids) < RANDOM_TOLERANCE


def test_int8_logits_of_a_trained_model_stay_close(trained):
    model, _, data = trained
    assert logits_error(model, data[:64].view(2, 32)) < TRAINED_TOLERANCE


def test_greedy_text_matches_fp32_or_parts_only_at_a_near_tie(trained):
    """Token for token against fp32; a first difference is allowed only where fp32's top two logits were
    closer than int8's error can move them (after it the two texts continue from different contexts)."""
    model, tokenizer, _ = trained
    prompt = tokenizer.encode("KING RICHARD:\n")
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0)
    reference = [step[0] for step in generate_tokens(model, [prompt], params)]
    int8 = [step[0] for step in generate_tokens(quantized(model), [prompt], params)]
    differs = [i for i, (a, b) in enumerate(zip(reference, int8)) if a != b]
    if differs:
        first = differs[0]
        context = torch.tensor([(prompt + reference[:first])[-32:]])
        with torch.no_grad():
            logits = model(context)
        top2 = logits[0, -1].topk(2).values
        gap = (top2[0] - top2[1]).item()
        assert gap < 2 * TRAINED_TOLERANCE * logits.std().item(), (
            f"int8 chose another token at step {first} although fp32's top two logits were {gap:.3f} apart")


@pytest.mark.parametrize("kernel", LEAN_KERNELS + ["bf16-copy"])
@pytest.mark.parametrize("rows", [1, 3, DECODE_ROWS + 1])
def test_every_kernel_computes_the_dequantized_product(kernel, rows):
    linear = nn.Linear(48, 40)
    layer = Int8Linear.from_linear(linear)
    layer.use(KERNELS[kernel])
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.dequantized(torch.float32), linear.bias)
        tolerance = 2e-2 if kernel == "bf16-copy" else 1e-4
        torch.testing.assert_close(layer(x), expected, atol=tolerance, rtol=tolerance)
        assert (layer(x) - linear(x)).abs().max() < 0.05  # and close to the fp32 layer it came from


@pytest.mark.skipif(compiler_problem(torch.device("cpu")) is not None, reason="no compiler on this machine")
def test_compiled_kernel_computes_the_dequantized_product():
    layer = Int8Linear.from_linear(nn.Linear(48, 40, bias=False))
    layer.use(KERNELS["compiled"])
    x = torch.randn(1, 48)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ layer.dequantized(torch.float32).t(), atol=1e-4, rtol=1e-4)


def test_the_probe_picks_a_kernel_that_works(monkeypatch):
    def broken(x, layer, prepared):
        raise RuntimeError("no such kernel on this CPU")

    monkeypatch.setitem(KERNELS, "broken", quant.Kernel("broken", broken))
    model = tiny_model()
    report = quantize_model(model)
    assert report.times_ms["broken"] == float("inf")
    assert "compiled" not in report.times_ms  # compiling takes seconds: probed only when asked
    assert report.kernel in KERNELS and report.kernel != "broken"
    assert report.times_ms[report.kernel] < float("inf")
    assert {m.kernel.name for m in model.modules() if isinstance(m, Int8Linear)} == {report.kernel}
    assert report.kernel in report.summary()


def test_a_kernel_with_a_copy_must_win_clearly():
    assert quant._fastest({"int8-mm": 1.0, "dequantize": 2.0, "bf16-copy": 0.95}) == "int8-mm"
    assert quant._fastest({"int8-mm": 1.0, "dequantize": 2.0, "bf16-copy": 0.5}) == "bf16-copy"


@pytest.mark.parametrize("kernel", LEAN_KERNELS)
def test_int8_linear_layers_take_a_quarter_of_fp32(kernel):
    model = tiny_model(n_embd=256)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    fp32_bytes = sum(m.weight.numel() * 4 for m in linears)
    report = quantize_model(model, kernel=kernel)
    assert report.fp32_bytes == fp32_bytes  # the tied embedding is the head's weight: counted once
    assert isinstance(model.tok_emb, Int8Embedding) and model.tok_emb.qweight is model.lm_head.qweight
    # 1 byte per weight plus one 4-byte scale per output row (of 256 or 1024 weights)
    assert report.int8_bytes == quantized_bytes(model) == sum(m.weight.numel() + 4 * m.out_features for m in linears)
    assert 0.25 < report.int8_bytes / fp32_bytes < 0.255


def test_untied_embedding_gets_its_own_int8_rows():
    model = tiny_model(tied=False)
    ids = torch.tensor([[3, 7, 64]])
    expected = model.tok_emb(ids)
    quantize_model(model)
    assert model.tok_emb.qweight is not model.lm_head.qweight
    with torch.no_grad():
        assert (model.tok_emb(ids) - expected).abs().max() < 0.01 * expected.abs().max()


# ---- the commands -----------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, trained):
    model, tokenizer, _ = trained
    return save_checkpoint(tmp_path / "run", "best", model, tokenizer, meta={})


def test_generate_with_int8_names_its_kernel(capfd, checkpoint):
    capfd.readouterr()
    assert main(["generate", str(checkpoint), "--prompt", "ROMEO:", "--quantize", "int8", "--temperature", "0",
                 "--max-new-tokens", "8", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["completion_tokens"] == 8
    assert "decode kernel" in err


def test_eval_with_int8_reports_both_perplexities(capfd, tmp_path, checkpoint):
    text = tmp_path / "heldout.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[-5000:], encoding="utf-8")
    capfd.readouterr()
    assert main(["eval", str(checkpoint), "--data", str(text), "--quantize", "int8", "--json"]) == 0
    report = json.loads(capfd.readouterr()[0])
    assert report["int8"]["tokens"] == report["tokens"]
    assert report["int8"]["kernel"] in KERNELS
    assert report["int8"]["perplexity"] == pytest.approx(report["perplexity"], rel=0.01)  # measured: < 0.1%
    assert main(["eval", str(checkpoint), "--data", str(text), "--quantize", "int8"]) == 0
    assert "int8 changes perplexity by" in capfd.readouterr()[0]
