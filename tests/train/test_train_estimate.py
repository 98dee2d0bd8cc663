"""`lmforge estimate`: parameter counts are exact, memory is close to a measured run, suggestions fit."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.train.config import TrainConfig
from lmforge.train.estimate import activation_bytes, count_params, estimate_run, suggest_batch

CPU = torch.device("cpu")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_parameter_counts_are_exact(preset):
    cfg = preset_config(preset, vocab_size=300)
    model = GPT(cfg)
    assert count_params(cfg) == (model.num_params(), model.num_params(exclude_embeddings=True))


def test_the_suggested_batch_fits_and_keeps_the_configured_batch():
    cfg = preset_config("gpt2-mini", vocab_size=4096)
    train = TrainConfig(batch_size=64, grad_accum_steps=1)
    est = estimate_run(cfg, train, CPU, "fp32", matmul_speed=1e11)
    fixed = est.total_bytes - est.memory["activations"]
    budget = fixed + 10 * activation_bytes(cfg, 1, "fp32")  # room for 10 sequences
    micro, accum = suggest_batch(cfg, train, "fp32", budget, fixed)
    assert micro == 10 and accum == 7 and micro * accum >= 64
    assert suggest_batch(cfg, train, "fp32", fixed, fixed) is None


def test_step_time_follows_flops_and_matmul_speed():
    cfg = preset_config("gpt2-mini", vocab_size=4096)
    slow = estimate_run(cfg, TrainConfig(batch_size=8), CPU, "fp32", matmul_speed=1e10)
    fast = estimate_run(cfg, TrainConfig(batch_size=8), CPU, "fp32", matmul_speed=1e11)
    assert slow.step_seconds == pytest.approx(10 * fast.step_seconds)
    assert slow.flops_per_step > 6 * slow.params * slow.tokens_per_step


MEASURE = textwrap.dedent("""
    import json, torch
    from pathlib import Path
    from lmforge.model.config import preset_config
    from lmforge.model.gpt import GPT
    from lmforge.train.config import TrainConfig
    from lmforge.train.objectives import lm_loss_sum
    from lmforge.train.optim import build_optimizer
    torch.set_num_threads(1)
    cfg = preset_config("gpt2-mini", vocab_size=8192, n_layer=6, n_embd=384, n_head=6, block_size=256)
    model = GPT(cfg)
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, 8192, (8, 256))
    for _ in range(2):
        (lm_loss_sum(model, x, x) / x.numel()).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    peak = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")][0]
    print(json.dumps({"peak": int(peak.split()[1]) * 1024}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS is read from Linux /proc")
def test_memory_estimate_is_within_25_percent_of_a_measured_step():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave RSS (see bench/finetune_memory.py)
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, env=env, check=True)
    measured = json.loads(out.stdout.splitlines()[-1])["peak"]
    cfg = preset_config("gpt2-mini", vocab_size=8192, n_layer=6, n_embd=384, n_head=6, block_size=256)
    estimated = estimate_run(cfg, TrainConfig(batch_size=8), CPU, "fp32", matmul_speed=1e11).total_bytes
    print(f"estimated {estimated / 2**20:.0f} MB, measured {measured / 2**20:.0f} MB")
    assert 0.75 < estimated / measured < 1.25, (estimated / 2**20, measured / 2**20)
