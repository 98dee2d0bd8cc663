"""DPO and ORPO in lmforge's training loop against trl's trainers: the same tiny GPT-2, the same token ids,
the same optimizer settings; the loss and the rewards of the first steps agree to 1e-5."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from lmforge.data.preference import PreferenceBatches, TokenizedPair, with_reference_logps
from lmforge.data.sft import SFTExample
from lmforge.model.chunked_loss import IGNORE_INDEX
from lmforge.model.hf import load_hf_model
from lmforge.tokenizer import GPT2Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.loop import Trainer
from lmforge.train.preference import DPOLoss, ORPOLoss, answer_logps

trl = pytest.importorskip("trl", reason="trl (the dev extra) is the reference for these tests")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

PAIRS = [
    {"prompt": "Name a colour of the sky.\n", "chosen": " Blue, on a clear day.", "rejected": " Potato."},
    {"prompt": "What is two plus two?\n", "chosen": " Four.", "rejected": " It is five, I think, or six."},
    {"prompt": "Say hello politely.\n", "chosen": " Hello, nice to meet you.", "rejected": " Go away."},
    {"prompt": "Spell cat.\n", "chosen": " C-A-T.", "rejected": " K-A-T, obviously, get it together."},
]
STEPS, LR, BETA = 3, 1e-3, 0.1


@pytest.fixture(scope="module")
def hf_tokenizer():
    """GPT-2's tokenizer for trl, built from the vocabulary lmforge ships (no download): the same ids as lmforge's."""
    from importlib.resources import files

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    assets = files("lmforge") / "tokenizer" / "assets" / "gpt2"
    bpe = Tokenizer(models.BPE.from_file(str(assets / "encoder.json"), str(assets / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eot, bos_token=eot, pad_token=eot)
    text = PAIRS[0]["prompt"] + PAIRS[0]["chosen"]
    assert tokenizer(text)["input_ids"] == GPT2Tokenizer().encode(text)
    return tokenizer


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory, hf_tokenizer):
    """A random tiny GPT-2 in a Hugging Face folder, no dropout (trl turns it off too)."""
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def trl_common(tmp_path) -> dict:
    return dict(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(PAIRS), max_steps=STEPS,
                learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, logging_steps=1, report_to=[], use_cpu=True, seed=0, save_strategy="no",
                beta=BETA, optim="adamw_torch")


def trl_history(trainer) -> list[dict]:
    trainer.train()
    return [row for row in trainer.state.log_history if "loss" in row][:STEPS]


def lmforge_pairs(hf_tokenizer) -> list[TokenizedPair]:
    """The pairs as trl tokenises them: prompt ids, then prompt + answer + end-of-text, answer ids after the prompt's."""
    pairs = []
    for record in PAIRS:
        prompt = hf_tokenizer(record["prompt"])["input_ids"]
        sides = []
        for key in ("chosen", "rejected"):
            ids = hf_tokenizer(record["prompt"] + record[key] + hf_tokenizer.eos_token)["input_ids"]
            assert ids[:len(prompt)] == prompt
            sides.append(SFTExample(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]))
        pairs.append(TokenizedPair(*sides))
    return pairs


def lmforge_run(base_folder, hf_tokenizer, loss_fn, tmp_path, with_reference: bool) -> list[dict]:
    model = load_hf_model(base_folder)
    pairs = lmforge_pairs(hf_tokenizer)
    if with_reference:
        model.eval()
        with torch.no_grad():
            pairs = with_reference_logps(pairs, lambda x, y: answer_logps(model, x, y)[0], batch_size=2)
    cfg = TrainConfig(max_steps=STEPS, batch_size=len(PAIRS), lr=LR, min_lr=LR, warmup_steps=0, weight_decay=0.0,
                      beta2=0.999, grad_clip=1.0, log_interval=1, eval_interval=1000, sample_interval=0,
                      save_interval=1000, precision="fp32", device="cpu", out_dir=str(tmp_path / "run"))
    batches = PreferenceBatches(pairs, len(PAIRS), seed=0, pad_id=GPT2Tokenizer().eot_id)
    Trainer(model, GPT2Tokenizer(), batches, None, cfg, tmp_path / "run", torch.device("cpu"), "fp32",
            loss_fn=loss_fn).fit()
    metrics = json.loads((tmp_path / "run" / "training_metrics.json").read_text())
    rows = [row for row in metrics["objective"] if row["split"] == "train"]
    return [{"loss": loss, "grad_norm": norm, **row} for loss, norm, row in
            zip(metrics["train_loss"], metrics["grad_norm"], rows)]


def trl_dpo(base_folder, hf_tokenizer, tmp_path):
    args = trl.DPOConfig(**trl_common(tmp_path), loss_type="sigmoid", precompute_ref_log_probs=False)
    return trl.DPOTrainer(model=hf_model(base_folder), args=args, train_dataset=datasets.Dataset.from_list(PAIRS),
                          processing_class=hf_tokenizer)


def hf_model(folder):
    """The model for trl. Eager attention: its result does not depend on the module's mode, while PyTorch's fused
    attention picks other kernels in training and evaluation mode; trl runs the policy in the one and its reference
    in the other, and their log-probabilities of the same weights would differ by ~1e-5 relative."""
    return transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager")


def test_dpo_loss_and_rewards_equal_trls_for_a_policy_away_from_its_reference(base_folder, hf_tokenizer, tmp_path):
    """trl's own loss function on trl's own batch, at weights where policy and reference differ."""
    trainer = trl_dpo(base_folder, hf_tokenizer, tmp_path)
    reference = load_hf_model(base_folder)
    pairs = lmforge_pairs(hf_tokenizer)
    with torch.no_grad():
        pairs = with_reference_logps(pairs, lambda x, y: answer_logps(reference.eval(), x, y)[0], batch_size=4)
    inputs = trainer.data_collator(list(trainer.train_dataset))
    for shift in (0.0, 0.02, 0.05):
        torch.manual_seed(1)
        with torch.no_grad():  # move the policy away from the reference, the same way in both libraries
            for parameter in trainer.model.parameters():
                parameter.add_(shift * torch.randn_like(parameter))
        trainer.model.save_pretrained(tmp_path / "policy")
        policy = load_hf_model(tmp_path / "policy").train()
        trainer.model.eval()  # as its reference runs: no other difference between the two forward passes
        trainer._metrics["eval"].clear()
        with torch.no_grad():
            theirs = float(trainer.compute_loss(trainer.model, inputs))
        metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        loss_fn = DPOLoss(BETA)
        batch = PreferenceBatches(pairs, len(PAIRS), pad_id=GPT2Tokenizer().eot_id)._collate(np.arange(len(PAIRS)))
        ours = float(loss_fn(policy, *batch)) / len(PAIRS)
        stats = loss_fn.take_metrics()["train"]
        # trl's policy and its separately loaded reference give the same answers log-probabilities up to ~5e-6
        # relative (at equal weights its margin is -1.4e-5, not 0): rewards agree to 5e-5, the loss to 1e-5.
        assert ours == pytest.approx(theirs, abs=1e-5)
        assert stats["reward_chosen"] == pytest.approx(metrics["rewards/chosen"], abs=5e-5)
        assert stats["reward_rejected"] == pytest.approx(metrics["rewards/rejected"], abs=5e-5)
        assert stats["reward_margin"] == pytest.approx(metrics["rewards/margins"], abs=5e-5)
        if abs(stats["reward_margin"]) > 1e-3:  # accuracy compares rewards: meaningful once they are apart
            assert stats["reward_accuracy"] == pytest.approx(metrics["rewards/accuracies"], abs=1e-6)
    assert abs(stats["reward_margin"]) > 0.01  # the last state is far enough from the reference to mean something


def test_dpo_training_steps_follow_trls(base_folder, hf_tokenizer, tmp_path):
    """Three optimizer steps in both trainers. trl's gradient differs from the plain formula's by 0.08% (norm 0.9547
    against 0.9539 at the first step; lmforge's equals the plain formula's, asserted below), so the later steps
    agree to 3e-4."""
    expected = trl_history(trl_dpo(base_folder, hf_tokenizer, tmp_path))
    got = lmforge_run(base_folder, hf_tokenizer, DPOLoss(BETA), tmp_path, with_reference=True)
    assert len(got) == len(expected) == STEPS
    assert got[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as the reference
    assert got[0]["logps_chosen"] == pytest.approx(expected[0]["logps/chosen"], rel=1e-5)
    for ours, theirs in zip(got, expected):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=3e-4)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=5e-3)
        assert ours["reward_chosen"] == pytest.approx(theirs["rewards/chosen"], abs=3e-4)
        assert ours["reward_rejected"] == pytest.approx(theirs["rewards/rejected"], abs=3e-4)
        assert ours["reward_margin"] == pytest.approx(theirs["rewards/margins"], abs=3e-4)
    assert got[-1]["loss"] < got[0]["loss"] and got[-1]["reward_margin"] > 0  # it learnt something
    assert got[0]["grad_norm"] == pytest.approx(plain_dpo_gradient_norm(base_folder, hf_tokenizer), rel=1e-5)


def plain_dpo_gradient_norm(base_folder, hf_tokenizer) -> float:
    """The first step's gradient norm by the book, on the Hugging Face model: logits, log-softmax, DPO loss."""
    model = transformers.GPT2LMHeadModel.from_pretrained(base_folder).train()
    x, y, _, _, _ = PreferenceBatches(lmforge_pairs(hf_tokenizer), len(PAIRS))._collate(np.arange(len(PAIRS)))
    scored = y != IGNORE_INDEX
    logps = (model(x).logits.float().log_softmax(-1).gather(-1, y.clamp(min=0)[..., None])[..., 0] * scored).sum(-1)
    chosen, rejected = (logps - logps.detach()).chunk(2)  # the reference is the policy at the first step
    (-torch.nn.functional.logsigmoid(BETA * (chosen - rejected))).mean().backward()
    return float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())))


def test_orpo_matches_trl_for_the_first_steps(base_folder, hf_tokenizer, tmp_path):
    """Three optimizer steps in both trainers, trl's ORPO scoring the prompt in its SFT part (nll_on_prompt). The first
    step agrees to float32 precision; the later ones drift apart by ~1e-4 relative, as DPO's do (trl's gradient is not
    quite the plain formula's, see test_dpo_training_steps_follow_trls)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**trl_common(tmp_path))
    hf_tokenizer = copy.deepcopy(hf_tokenizer)
    hf_tokenizer.bos_token = None  # trl's ORPO puts the BOS token before every prompt when there is one
    trainer = ORPOTrainer(model=hf_model(base_folder), args=args,
                          train_dataset=datasets.Dataset.from_list(PAIRS), processing_class=hf_tokenizer)
    expected = trl_history(trainer)
    got = lmforge_run(base_folder, hf_tokenizer, ORPOLoss(BETA, nll_on_prompt=True), tmp_path, with_reference=False)
    assert len(got) == len(expected) == STEPS
    first, theirs = got[0], expected[0]
    assert first["loss"] == pytest.approx(theirs["loss"], rel=1e-5)  # float32: the loss is ~11
    assert first["nll"] == pytest.approx(theirs["nll_loss"], rel=1e-5)
    assert first["reward_chosen"] == pytest.approx(theirs["rewards/chosen"], rel=2e-5)
    assert first["reward_margin"] == pytest.approx(theirs["rewards/margins"], abs=2e-5)
    # trl calls it log_odds_chosen: a difference of two mean log-probabilities (~-7.7 each) only 0.02 apart, so
    # float32 rounding of those (1e-6 relative) leaves it ~1e-5 uncertain.
    assert first["log_odds_ratio"] == pytest.approx(theirs["log_odds_chosen"], abs=5e-5)
    assert first["reward_accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)
    for ours, theirs in zip(got[1:], expected[1:]):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
        assert ours["nll"] == pytest.approx(theirs["nll_loss"], rel=1e-4)
        assert ours["reward_margin"] == pytest.approx(theirs["rewards/margins"], abs=1e-4)
        assert ours["log_odds_ratio"] == pytest.approx(theirs["log_odds_chosen"], abs=1e-3)
    assert got[-1]["loss"] < got[0]["loss"]
