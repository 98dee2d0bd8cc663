"""What every rank runs in the distributed tests, and the tiny trainer they all share.

    python -m torch.distributed.run --standalone --nproc_per_node 2 dist_rank_program.py PLAN.json

PLAN.json = {"data": DIR, "runs": [{"run_dir": DIR, "strategy": "ddp" | "fsdp", "train": {TrainConfig keys},
             "dropout": 0.0, "interrupt": {"rank": R, "step": S} (optional)}, ...]}

The runs go in order, in one gloo process group on CPU. Each rank writes what its Trainer returned to
RUN_DIR/result-rank{R}-{N}.json (N counts the runs into that folder), so tests see every rank's view.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from lmforge.data.loader import TokenBatches
from lmforge.distributed.config import DistConfig
from lmforge.distributed.env import DistEnv, distributed_session
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.loop import Trainer
from lmforge.train.objectives import lm_loss_sum

BLOCK = 32
# A constant learning rate after warmup: the rate of a step then does not depend on max_steps, so a
# 6-step run and the first 6 steps of a 9-step run are the same computation.
TRAIN_DEFAULTS = dict(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=2, schedule="constant", eval_interval=3,
                      eval_steps=3, log_interval=1, sample_interval=0, sample_tokens=8, save_interval=3,
                      resume="never", seed=0)


def build_trainer(data_dir, run_dir, env: DistEnv | None = None, strategy: str = "none", dropout: float = 0.0,
                  loss_fn=lm_loss_sum, **train) -> Trainer:
    """A 2-layer, 32-wide GPT on the char-level test corpus; rank r of env reads its own batches."""
    env = env or DistEnv()
    tokenizer = load_tokenizer(data_dir)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=tokenizer.vocab_size,
                            dropout=dropout))
    torch.manual_seed(1 + env.rank)  # each rank its own dropout stream
    cfg = TrainConfig(**{**TRAIN_DEFAULTS, "out_dir": str(run_dir), **train})
    batches = TokenBatches(data_dir, "train", BLOCK, cfg.batch_size, seed=cfg.seed, rank=env.rank,
                           world_size=env.world_size)
    val = TokenBatches(data_dir, "val", BLOCK, cfg.batch_size, seed=cfg.seed)
    return Trainer(model, tokenizer, batches, val, cfg, run_dir, torch.device("cpu"), "fp32", loss_fn,
                   env=env, strategy=strategy)


def interrupting_loss(at_step: int):
    """lm_loss_sum that sends this process SIGINT during training step `at_step` (one micro-batch per step)."""
    calls = {"n": 0}

    def loss_fn(model, x, y):
        calls["n"] += model.training  # validation passes do not count
        if model.training and calls["n"] == at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return lm_loss_sum(model, x, y)

    return loss_fn


def run_one(data_dir: str, run: dict, env: DistEnv) -> None:
    interrupt = run.get("interrupt")
    loss_fn = interrupting_loss(interrupt["step"]) if interrupt and interrupt["rank"] == env.rank else lm_loss_sum
    trainer = build_trainer(data_dir, run["run_dir"], env, run["strategy"], run.get("dropout", 0.0), loss_fn,
                            **run.get("train", {}))
    result = trainer.fit()
    run_dir = Path(run["run_dir"])
    n = len(list(run_dir.glob(f"result-rank{env.rank}-*.json")))
    (run_dir / f"result-rank{env.rank}-{n}.json").write_text(json.dumps({
        "steps": result.steps, "stop_reason": result.stop_reason, "train_loss": result.train_loss,
        "val_loss": result.val_loss, "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None}))


def main(plan_path: str) -> None:
    torch.set_num_threads(1)  # two ranks share two cores
    plan = json.loads(Path(plan_path).read_text())
    with distributed_session(DistConfig(), "cpu") as (env, _device):
        for run in plan["runs"]:
            run_one(plan["data"], run, env)


if __name__ == "__main__":
    main(sys.argv[1])
