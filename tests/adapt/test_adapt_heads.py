"""Classification heads: GPT.hidden_states, last-real-token selection, freezing modes, saving, learning."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.adapt.heads import ClassifierModel, freeze_for_classification, last_index_from_lengths
from lmforge.adapt.lora import apply_lora
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from tests.model.families import tiny_families

FAMILIES = tiny_families()


def make_classifier(family: str, num_classes: int = 3, **overrides) -> ClassifierModel:
    torch.manual_seed(0)
    return ClassifierModel.from_config(ModelConfig(**{**FAMILIES[family], **overrides}), num_classes)


def right_padded(sequences: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, sequences))
    idx = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    return idx, last_index_from_lengths(torch.tensor([len(s) for s in sequences]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_is_the_lm_head_over_the_hidden_states(family):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**FAMILIES[family]))
    idx = torch.randint(0, 50, (2, 16))
    hidden = model.hidden_states(idx)
    assert hidden.shape == (2, 16, 32)
    assert torch.equal(model(idx), model.lm_head(hidden))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_rows_classify_like_the_sequence_alone(family):
    model = make_classifier(family)
    sequences = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 2], [11], [3, 3, 6, 1, 9]]
    idx, last = right_padded(sequences, pad=17)
    logits = model(idx, last)
    assert logits.shape == (4, 3)
    for row, seq in enumerate(sequences):
        alone = model(torch.tensor([seq]))  # no padding: last_index defaults to T - 1
        torch.testing.assert_close(logits[row], alone[0], atol=1e-5, rtol=0)
    # Reading the final column instead (padding) gives different answers: the index matters.
    assert not torch.allclose(model(idx), logits, atol=1e-3)


def test_last_index_is_validated():
    model = make_classifier("gpt2")
    with pytest.raises(ValueError, match="last_index"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.tensor([4, 5]))


def trainable_names(model: ClassifierModel) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freezing_modes():
    model = make_classifier("llama")
    counts = freeze_for_classification(model, "none")
    assert trainable_names(model) == {"head.weight", "head.bias"}
    assert counts.trainable == 32 * 3 + 3

    counts = freeze_for_classification(model, 1)
    names = trainable_names(model)
    assert {"head.weight", "body.final_norm.weight"} <= names
    assert all(n.startswith(("head.", "body.final_norm.", "body.blocks.1.")) for n in names)
    assert any(n.startswith("body.blocks.1.") for n in names)
    block = sum(p.numel() for p in model.body.blocks[1].parameters())
    assert counts.trainable == block + 32 + 32 * 3 + 3

    counts = freeze_for_classification(model, "all")
    assert counts.trainable == counts.total == sum(p.numel() for p in model.parameters())
    assert str(counts).endswith("(100.00%)")

    for bad in ("some", 3, -1, True):
        with pytest.raises(ValueError, match="'all', 'none' or a block count in 0..2"):
            freeze_for_classification(model, bad)


@pytest.mark.parametrize("tie", [True, False])
def test_state_dict_has_clear_names_and_rebuilds_from_config(tie):
    model = make_classifier("gpt2", num_classes=4, tie_embeddings=tie)
    state = model.state_dict()
    assert {"head.weight", "head.bias", "body.tok_emb.weight", "body.blocks.0.attn.q.weight"} <= set(state)
    assert not any("lm_head" in name for name in state)
    assert state["head.weight"].shape == (4, 32)
    rebuilt = ClassifierModel.from_config(model.config, 4)
    rebuilt.load_state_dict(state)  # strict
    idx = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(rebuilt(idx), model(idx))


def test_lora_adapts_the_classifier_body_while_its_head_trains():
    model = make_classifier("llama")
    report = apply_lora(model, ("q", "v"), r=2, also_train=("head",))
    assert all(name.startswith("body.blocks.") for name in report.wrapped)
    assert {n for n in trainable_names(model) if "lora_" not in n} == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="no module named 'classifier'"):
        apply_lora(make_classifier("llama"), ("q",), also_train=("classifier",))
    with pytest.raises(ValueError, match="'lm_head'.*does not exist"):
        apply_lora(make_classifier("llama"), ("lm_head",))


def toy_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 sequences use tokens 1..4, class 1 tokens 5..8; lengths 2..10, right-padded with 0.

    Few distinct tokens, so that a probe of an untrained body can generalise from train to test rows.
    """
    labels = torch.randint(0, 2, (n,), generator=generator)
    sequences = []
    for label in labels.tolist():
        length = int(torch.randint(2, 11, (1,), generator=generator))
        low = 1 + 4 * label
        sequences.append(torch.randint(low, low + 4, (length,), generator=generator).tolist())
    idx, last = right_padded(sequences)
    return idx, last, labels


def accuracy(model: ClassifierModel, batch) -> float:
    idx, last, labels = batch
    with torch.no_grad():
        return (model(idx, last).argmax(-1) == labels).float().mean().item()


def test_training_the_head_learns_a_separable_task():
    model = make_classifier("gpt2", num_classes=2)
    freeze_for_classification(model, "none")
    generator = torch.Generator().manual_seed(0)
    train, test = toy_batch(32, generator), toy_batch(64, generator)
    before = accuracy(model, test)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    idx, last, labels = train
    for _ in range(15):
        loss = F.cross_entropy(model(idx, last), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy(model, test)
    assert after >= 0.9 and after > before + 0.2
