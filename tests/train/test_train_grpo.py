"""GRPO's parts: group advantages by hand, the loss's gradient against the plain policy-gradient formula, a sampler
that repeats itself from a saved state, and a tiny model whose reward rises."""

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer
from lmforge.train.grpo import (AdaptersOff, FrozenCopy, GRPOLoss, GroupSampler, SamplingSettings, group_advantages,
                                load_reward_functions, token_logps)

TOKENIZER = CharTokenizer.train(["ab"])


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=TOKENIZER.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32))


def share_of_a(prompt: str, completion: str, record: dict) -> float:
    """The toy reward: the share of the letter a in the completion (an empty one scores 0)."""
    return completion.count("a") / len(completion) if completion else 0.0


def sampler(policy, reference=None, seed=0, group=4, batch=2):
    prompts = [TOKENIZER.encode("ab"), TOKENIZER.encode("ba"), TOKENIZER.encode("b")]
    return GroupSampler(policy, reference, TOKENIZER, prompts, [{}] * 3, [share_of_a],
                        SamplingSettings(group_size=group, max_new_tokens=8), batch_size=batch, seed=seed)


def test_group_advantages_are_rewards_centred_and_scaled_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased: sqrt(1/3)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]) / torch.tensor([[std + 1e-4], [1e-4]])
    assert torch.allclose(group_advantages(rewards), expected)


def test_the_loss_gradient_is_the_policy_gradient_plus_the_kl_gradient():
    policy = tiny_policy()
    reference = tiny_policy(seed=1).eval()
    x, advantages, rewards, ref_logps, y = sampler(policy, reference).next_batch()
    loss_fn = GRPOLoss(beta=0.1)
    loss_fn(policy, x, advantages, rewards, ref_logps, y).backward()
    ours = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    # By the book: -sum A log pi over completion tokens, plus beta x the k3 KL estimate, summed.
    logps = token_logps(policy(x).float(), y)
    mask = (y != -100).float()
    delta = ref_logps - logps
    plain = (-(advantages[:, None] * logps) + 0.1 * (torch.exp(delta) - delta - 1)) * mask
    plain.sum().backward()
    for a, p in zip(ours, policy.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    metrics = loss_fn.take_metrics()["train"]
    assert metrics["kl"] > 0 and metrics["reward_mean"] == pytest.approx(float(rewards.mean()), abs=1e-6)


def test_both_references_are_the_starting_model_while_the_policy_moves_on():
    """FrozenCopy (full fine-tuning) keeps its own weights; AdaptersOff (LoRA) switches the adapters off, with no copy."""
    from lmforge.adapt.lora import apply_lora

    x = torch.tensor([TOKENIZER.encode("abba")])
    for adapters in (False, True):
        policy = tiny_policy()
        policy.set_dropout(0.3)  # a reference must not drop anything, whatever mode the policy trains in
        with torch.no_grad():
            start = policy.eval()(x)
        reference = FrozenCopy(policy)
        if adapters:
            apply_lora(policy, ("q", "v", "up", "down"), r=2, alpha=4, dropout=0.5)
            reference = AdaptersOff(policy)
        policy.train()
        optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            optimizer.zero_grad()
            policy(x).logsumexp(-1).mean().backward()
            optimizer.step()
        with torch.no_grad():
            assert not torch.allclose(policy.eval()(x), start, atol=1e-3)
        policy.train()
        assert torch.allclose(reference(x), start, atol=1e-6) and torch.equal(reference(x), reference(x))
        assert policy.training  # the reference's eval mode (no adapter dropout) ends with the call


def test_a_sampler_resumed_from_its_state_samples_the_same_batches():
    first = sampler(tiny_policy())
    first.next_batch()
    state = first.state_dict()
    expected = [first.next_batch() for _ in range(2)]
    again = sampler(tiny_policy(), seed=123)
    again.load_state_dict(state)
    for a, b in zip(expected, [again.next_batch() for _ in range(2)]):
        assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_completions_end_at_their_first_end_of_text_and_are_the_only_targets():
    policy = tiny_policy()
    with torch.no_grad():
        policy.lm_head.weight[TOKENIZER.eot_id] += 5.0  # end-of-text likely: completions end early
    x, _, _, _, y = sampler(policy).next_batch()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        targets = [t for t in row_y if t != -100]
        assert targets and targets.count(TOKENIZER.eot_id) <= 1
        assert TOKENIZER.eot_id not in targets[:-1]


def test_reward_functions_are_named_module_colon_function():
    assert load_reward_functions(["tests.train.test_train_grpo:share_of_a"])[0] is share_of_a
    for bad, message in (([], "at least one"), (["nocolon"], "not module:function"),
                         (["lmforge:missing_function"], "cannot import")):
        with pytest.raises(ValueError, match=message):
            load_reward_functions(bad)


def test_the_reward_rises_when_the_loop_trains_on_it(tmp_path):
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import Trainer

    policy = tiny_policy()
    reference = tiny_policy().eval()
    batches = sampler(policy, reference, group=8, batch=3)
    cfg = TrainConfig(max_steps=40, batch_size=3, lr=1e-2, min_lr=1e-3, warmup_steps=2, log_interval=5,
                      eval_interval=1000, sample_interval=0, save_interval=1000, precision="fp32", device="cpu",
                      out_dir=str(tmp_path))
    Trainer(policy, TOKENIZER, batches, None, cfg, tmp_path, torch.device("cpu"), "fp32",
            loss_fn=GRPOLoss(beta=0.04)).fit()
    import json

    rows = [r for r in json.loads((tmp_path / "training_metrics.json").read_text())["objective"]]
    assert rows[-1]["reward_mean"] > rows[0]["reward_mean"] + 0.2
    assert all(r["kl"] >= 0 for r in rows) and rows[-1]["kl"] > rows[0]["kl"]


def test_looking_at_batches_does_not_change_what_training_samples_next():
    a, b = sampler(tiny_policy()), sampler(tiny_policy())
    next(iter(a.eval_batches(1)))  # e.g. the precision probe
    assert all(torch.equal(s, t) for s, t in zip(a.next_batch(), b.next_batch()))


def test_grpo_through_lmforge_finetune_trains_and_resumes_exactly(tmp_path):
    import json

    from lmforge.config.run import load_run_config
    from lmforge.train.checkpoint import save_checkpoint
    from lmforge.train.finetune import run_finetuning

    base = save_checkpoint(tmp_path / "bases", "base", tiny_policy(), TOKENIZER, {})
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["ab", "ba", "b", "a", "bb", "aab"]))

    def run(out, *extra):
        args = [f"--model.init_from={base}", f"--data.path={data}", "--finetune.task=grpo",
                "--finetune.grpo.rewards=[tests.train.test_train_grpo:share_of_a]", "--finetune.grpo.template=plain",
                "--finetune.grpo.group_size=4", "--finetune.grpo.max_new_tokens=6", f"--train.out_dir={out}",
                "--train.max_steps=8", "--train.save_interval=4", "--train.log_interval=1", "--train.batch_size=2",
                "--train.lr=1e-2", "--train.warmup_steps=1", "--train.sample_interval=0", "--train.precision=fp32",
                "--train.device=cpu", "--model.dropout=0.1", *extra]
        cfg = load_run_config(None, args)
        return run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest)[0]

    straight = run(tmp_path / "a")
    resumed = run(tmp_path / "b", f"--train.resume={straight.run_dir / 'step-000004'}")
    with_adapters = run(tmp_path / "c", "--finetune.method=lora", "--finetune.lora.targets=[all]",
                        "--model.dropout=0.0", "--train.max_steps=4")
    on_4bit = run(tmp_path / "d", "--finetune.method=qlora", "--finetune.quant_backend=torch",
                  "--finetune.lora.targets=[all]", "--model.dropout=0.0", "--train.max_steps=4")
    for adapted in (with_adapters, on_4bit):  # the reference: the policy with its adapters switched off
        rows = json.loads((adapted.run_dir / "training_metrics.json").read_text())["objective"]
        assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # fresh adapters: the policy is the reference
        assert rows[-1]["kl"] > 0 and not (adapted.run_dir / "last" / "model.safetensors").exists()
    a, b = (json.loads((r.run_dir / "training_metrics.json").read_text()) for r in (straight, resumed))
    assert b["steps"] == [5, 6, 7, 8] and b["train_loss"] == a["train_loss"][4:]
    assert [r["reward_mean"] for r in b["objective"]] == [r["reward_mean"] for r in a["objective"]][4:]
    assert {"reward_mean", "reward_std", "kl", "entropy", "completion_length"} <= set(a["objective"][0])
    assert (straight.run_dir / "training_curve.png").exists()
    assert "GRPO:" in (straight.run_dir / "diagnosis.txt").read_text()


def test_the_diagnosis_names_reward_hacking_entropy_collapse_and_a_flat_reward():
    from lmforge.train.diagnose_preference import grpo_notes

    def rows(reward, kl, entropy, length):
        return {"objective": [{"step": s, "split": "train", "reward_mean": reward(s), "reward_std": 0.01, "kl": kl(s),
                               "entropy": entropy(s), "completion_length": length(s)} for s in range(1, 17)]}

    hacked = grpo_notes(rows(lambda s: 0.1 * s, lambda s: 0.2 * s, lambda s: 2.0, lambda s: 5.0 * s))[0]
    assert "reward hacking" in hacked and "entropy collapsed" not in hacked
    collapsed = grpo_notes(rows(lambda s: 0.5 + 0.02 * s, lambda s: 0.01, lambda s: 2.0 / s, lambda s: 8))[0]
    assert "entropy collapsed" in collapsed and "reward hacking" not in collapsed
    flat = grpo_notes(rows(lambda s: 0.3 + 0.001 * (-1) ** s, lambda s: 0.01, lambda s: 2.0, lambda s: 8))[0]
    assert "did not rise" in flat and "without any gain" not in flat
    drifting = grpo_notes(rows(lambda s: 0.3 - 0.001 * s, lambda s: 0.1 * s, lambda s: 2.0, lambda s: 8))[0]
    assert "without any gain in reward" in drifting
    assert grpo_notes({"objective": []}) == []


def test_the_arithmetic_task_and_its_reward():
    from lmforge.data.arithmetic import arithmetic_sets
    from lmforge.train.rewards import arithmetic

    sft, prompts = arithmetic_sets(max_operand=9, sft=60, prompts=30, seed=0)
    assert len(sft) == 60 and len(prompts) == 30
    assert not {r["prompt"] for r in sft} & {r["prompt"] for r in prompts}  # no question in both
    a, b = map(int, prompts[0]["prompt"][len("What is "):-1].split("+"))
    assert prompts[0]["answer"] == a + b
    sft, prompts = arithmetic_sets(max_operand=9, sft=60, prompts=30, seed=0, same_questions=True)
    assert [r["prompt"] for r in prompts] == [r["prompt"] for r in sft]
    assert all(int(s["completion"]) == p["answer"] for s, p in zip(sft, prompts))
    record = {"answer": 12}
    assert [arithmetic("", text, record) for text in ("12", " 12 apples", "It is 12.", "21", "1 2", "", "-12")] == \
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
