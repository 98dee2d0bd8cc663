"""`lmforge finetune --nproc 2`: LoRA instruction tuning on two processes (gloo, CPU) trains what one
process with the same global batch trains (rank r reads batches r, r + 2, ... of each epoch's plan)."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.tokenizer.char import CharTokenizer
from lmforge.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,:?!+=\n<>|_-'\"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def sft_run(tmp_path, name, base, data, processes, accumulation):
    run_dir = tmp_path / name
    args = ["sft-lora", f"--model.init_from={base}", f"--data.path={data}", f"--train.out_dir={run_dir}",
            "--train.max_steps=4", "--train.batch_size=4", f"--train.grad_accum_steps={accumulation}",
            "--train.warmup_steps=1", "--train.lr=3e-3", "--train.eval_interval=2", "--train.eval_steps=2",
            "--train.log_interval=1", "--train.precision=fp32", "--train.device=cpu", "--train.save_interval=100",
            "--finetune.lora.dropout=0.0"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "lmforge", "finetune", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return run_dir, proc.stdout


def test_two_process_lora_sft_matches_one_process_with_the_same_global_batch(tmp_path):
    tokenizer = CharTokenizer.train([ALPHABET])
    torch.manual_seed(0)
    model = GPT(preset_config("gpt2-tiny", vocab_size=tokenizer.vocab_size, block_size=160, n_layer=2, n_embd=64))
    base = save_checkpoint(tmp_path / "bases", "base", model, tokenizer, {})
    rng = random.Random(0)
    rows = [{"instruction": f"add {a}+{b}", "input": "", "output": f"{a + b}"}
            for a, b in ((rng.randrange(10), rng.randrange(10)) for _ in range(80))]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    single, _ = sft_run(tmp_path, "single", base, data, processes=1, accumulation=2)
    double, out = sft_run(tmp_path, "double", base, data, processes=2, accumulation=1)
    one, two = (json.loads((d / "training_metrics.json").read_text()) for d in (single, double))
    assert two["steps"] == one["steps"] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "grad_norm", "tokens_seen"):
        got = [v for v in two[key] if v is not None]
        assert got == pytest.approx([v for v in one[key] if v is not None], rel=1e-5, abs=1e-6), key
    assert out.count("fine-tuning ") == 1  # rank 0 speaks for the run
    assert "distributed: 2 processes, ddp" in out
    assert (double / "best" / "adapter_model.safetensors").is_file()


def test_qlora_refuses_several_processes(tmp_path):
    from lmforge.train.finetune import _strategy
    from lmforge.distributed.config import DistConfig
    from lmforge.distributed.env import DistEnv
    from lmforge.train.finetune_config import FinetuneConfig

    two = DistEnv(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ValueError, match="qlora runs in one process"):
        _strategy(DistConfig(), FinetuneConfig(method="qlora"), two, torch.nn.Linear(2, 2), torch.device("cpu"))
    assert _strategy(DistConfig(), FinetuneConfig(method="lora"), two, torch.nn.Linear(2, 2), torch.device("cpu")) == "ddp"


def test_two_process_dpo_logs_the_rewards_of_every_rank(tmp_path):
    """The objective's own statistics (DPO rewards, accuracy, margins) are gathered over the ranks: the two-process
    run logs what one process with the same global batch logs, for training and for validation, where an odd
    number of validation batches makes one rank repeat a batch that must not count twice."""
    tokenizer = CharTokenizer.train([ALPHABET])
    torch.manual_seed(0)
    model = GPT(preset_config("gpt2-tiny", vocab_size=tokenizer.vocab_size, block_size=96, n_layer=2, n_embd=64))
    base = save_checkpoint(tmp_path / "bases", "base", model, tokenizer, {})
    rng = random.Random(0)
    rows = [{"prompt": f"add {a}+{b}?", "chosen": f"it is {a + b}, thanks!", "rejected": f"{a + b}. go away"}
            for a, b in ((rng.randrange(10), rng.randrange(10)) for _ in range(80))]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def dpo_run(name, processes, accumulation):
        run_dir = tmp_path / name
        args = ["dpo", f"--model.init_from={base}", f"--data.path={data}", f"--train.out_dir={run_dir}",
                "--finetune.method=lora", "--finetune.lora.dropout=0.0", "--finetune.preference.template=plain",
                "--train.max_steps=4", "--train.batch_size=2",
                f"--train.grad_accum_steps={accumulation}", "--train.warmup_steps=1", "--train.lr=3e-3",
                "--train.eval_interval=2", "--train.eval_steps=3", "--train.log_interval=1", "--train.precision=fp32",
                "--train.device=cpu", "--train.save_interval=100", "--train.sample_interval=0"]
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
            if processes > 1 else []
        proc = subprocess.run([sys.executable, *launcher, "-m", "lmforge", "finetune", *args], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return json.loads((run_dir / "training_metrics.json").read_text())["objective"]

    one, two = dpo_run("single", 1, 2), dpo_run("double", 2, 1)
    assert [(r["step"], r["split"]) for r in two] == [(r["step"], r["split"]) for r in one]
    assert {r["split"] for r in one} == {"train", "val"}
    for a, b in zip(one, two):
        for name in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "logps_chosen"):
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (a["step"], a["split"], name)
