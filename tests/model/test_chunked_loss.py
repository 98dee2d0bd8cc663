"""Chunked linear + cross-entropy: the same loss and gradients as the logits-then-cross-entropy way."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.model import chunked_loss
from lmforge.model.chunked_loss import linear_cross_entropy


def reference(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                           reduction="sum")


def inputs(seed=0, batch=3, time=10, width=16, vocab=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, time, width, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, width, generator=g, dtype=torch.float64) * 0.3
    targets = torch.randint(0, vocab, (batch, time), generator=g)
    targets[0, :4] = -100  # ignored positions (padding, masked prompts)
    return hidden, weight, targets


@pytest.mark.parametrize("rows_per_chunk", [7, 64])  # several chunks with a ragged last one; one chunk
def test_loss_and_gradients_match_the_unchunked_loss(monkeypatch, rows_per_chunk):
    monkeypatch.setattr(chunked_loss, "chunk_rows", lambda vocab: rows_per_chunk)
    hidden, weight, targets = inputs()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h1, w1, targets)
    expected = reference(h2, w2, targets)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=1e-6)
    (2.5 * loss).backward()  # an upstream gradient other than 1 must scale the stored gradients
    (2.5 * expected).backward()
    # both take the softmax in fp32 (as training does), so they agree to fp32 rounding
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)
    assert h1.grad[0, :4].abs().max() == 0  # ignored positions get no gradient


@pytest.mark.parametrize("vocab", [64, 65, 127])  # already a multiple of 64; 63 and 1 padding rows
def test_the_vocabulary_padding_changes_neither_the_loss_nor_the_gradients(monkeypatch, vocab):
    """On a GPU the matmuls see the vocabulary padded to a multiple of 64 (aligned rows, fast kernels); the padded
    entries must get probability 0, and the weight's gradient keeps the weight's own shape. Forced on here."""
    monkeypatch.setattr(chunked_loss, "chunk_rows", lambda vocab: 9)
    monkeypatch.setitem(chunked_loss.VOCAB_MULTIPLE, "cpu", 64)
    shapes = []
    real_log_softmax = torch.log_softmax
    monkeypatch.setattr(chunked_loss.torch, "log_softmax",
                        lambda x, **kw: (shapes.append(x.shape[-1]), real_log_softmax(x, **kw))[1])
    hidden, weight, targets = inputs(seed=2, vocab=vocab)
    targets[1, 0] = vocab - 1  # the last real token is a target too
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, expected = linear_cross_entropy(h1, w1, targets), reference(h2, w2, targets)
    assert set(shapes) == {-(-vocab // 64) * 64}
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=1e-6)
    loss.backward()
    expected.backward()
    assert w1.grad.shape == weight.shape
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_it_matches_the_autocast_reference(monkeypatch):
    monkeypatch.setattr(chunked_loss, "chunk_rows", lambda vocab: 8)
    hidden, weight, targets = (t.float() if t.is_floating_point() else t for t in inputs(seed=1))
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h1, w1, targets)
        expected = reference(h2, w2, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-3, atol=1e-3)
    loss.backward()
    expected.backward()
    assert h1.grad.dtype == torch.float32 and w1.grad.dtype == torch.float32
    for mine, theirs in ((h1.grad, h2.grad), (w1.grad, w2.grad)):  # bf16 rounding: compare as a whole
        assert (mine - theirs).norm() / theirs.norm() < 1e-2


def test_without_gradients_it_only_computes_the_loss():
    hidden, weight, targets = inputs(seed=2)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden.requires_grad_(), weight, targets)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(hidden.detach(), weight, targets), rtol=1e-6, atol=1e-6)


def test_only_the_weight_needs_a_gradient():  # e.g. a frozen body under the output layer
    hidden, weight, targets = inputs(seed=3)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    linear_cross_entropy(hidden, w1, targets).backward()
    reference(hidden, w2, targets).backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_logits", [1 << 23, 1000])  # one plain loss; chunks of 64 rows
def test_the_model_given_targets_returns_the_loss_of_its_logits(monkeypatch, chunk_logits):
    monkeypatch.setattr(chunked_loss, "CHUNK_LOGITS", chunk_logits)
    from lmforge.model.config import ModelConfig
    from lmforge.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=300))
    x, y = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    y[1, :5] = -100
    expected = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(model(x, targets=y), expected, rtol=1e-5, atol=1e-5)
