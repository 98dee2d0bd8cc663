"""`lmforge train --nproc 2`: the real command re-launches itself under torchrun and trains as one run."""

import json
import os
import subprocess
import sys

import pytest

from lmforge.train.checkpoint import is_checkpoint, load_train_state, read_meta

pytestmark = pytest.mark.slow
TINY_RUN = ["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32",
            "--data.tokenizer=char", "--train.batch_size=4", "--train.max_steps=4", "--train.eval_interval=2",
            "--train.eval_steps=3", "--train.log_interval=1", "--train.sample_interval=0", "--train.save_interval=2"]


def test_train_nproc_2_with_fsdp_prints_once_and_writes_a_whole_checkpoint(dist_corpus, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lmforge", "train", f"--data.path={dist_corpus}",
                           f"--train.out_dir={run}", "--dist.strategy=fsdp", *TINY_RUN, "--nproc", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("global batch 4 sequences x 1 accumulation steps x 2 processes = 8 sequences") == 1
    assert out.count("model: ") == 1 and out.count("stopped: max_steps reached after 4 steps") == 1
    assert out.count("--- a sample from") == 1  # the summary reads the consolidated checkpoint back
    metrics = json.loads((run / "training_metrics.json").read_text())
    assert metrics["steps"] == [1, 2, 3, 4]
    assert metrics["tokens_seen"][0] == 2 * 4 * 32  # both ranks' tokens
    assert is_checkpoint(run / "last") and is_checkpoint(run / "best")
    assert (read_meta(run / "last")["world_size"], read_meta(run / "last")["global_batch"]) == (2, 8)
    assert len(load_train_state(run / "last")["rng_per_rank"]) == 2
