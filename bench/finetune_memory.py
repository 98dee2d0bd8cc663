"""Memory of full fine-tuning vs LoRA vs QLoRA on a GPT-2 124M-shaped model, on CPU, same batch.

    python bench/finetune_memory.py [--batch 4] [--block 256] [--steps 3] [--threads 2] [--out FILE.json]

Each method runs in its own fresh process: build the model (random weights), do the surgery
(LoRA adapters on every linear layer of the blocks, r=8; QLoRA also stores those layers' frozen
weights in 4-bit NF4), then a few AdamW steps on the same random batch. Reported per method:

* peak RSS of the whole process (Linux VmHWM), including the fp32 model that QLoRA quantizes;
* peak RSS during the training steps alone (the counter is reset after setup: /proc/self/clear_refs);
* parameter memory after surgery, trainable parameters, optimizer state bytes, seconds per step.

The token embedding (38.6M of the 124M parameters, tied to the output head) stays in fp32 in every
method: QLoRA quantizes the blocks' linear layers, as the paper does.

Children run with MALLOC_MMAP_THRESHOLD_=65536 (pass --glibc-default to turn it off). glibc raises its
mmap threshold every time a large block is freed, so later activation buffers (3-12 MB here) come
from the heap and stay counted in RSS after they are freed: peak RSS then measures allocator
history more than live tensors (LoRA, with a few more short-lived buffers, measured *above* full
fine-tuning that way). A fixed threshold gives every large tensor its own mapping, returned on free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["full", "lora", "qlora-torch", "qlora-bnb", "full-adamw8bit"]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5 = reset the peak RSS counter


def run_one(method: str, batch: int, block: int, steps: int) -> dict:
    import torch

    from lmforge.adapt.lora import apply_lora, count_params
    from lmforge.adapt.qlora import module_bytes, quantize_model
    from lmforge.model.config import preset_config
    from lmforge.model.gpt import GPT
    from lmforge.train.config import TrainConfig
    from lmforge.train.objectives import lm_loss_sum
    from lmforge.train.optim import build_optimizer

    torch.manual_seed(0)
    model = GPT(preset_config("gpt2-124m", vocab_size=50257, block_size=block))
    if method.startswith("qlora"):
        quantize_model(model, backend=method.split("-")[1])
    if method.startswith(("lora", "qlora")):
        apply_lora(model, ("q", "k", "v", "o", "up", "down"), r=8, alpha=16.0, dropout=0.0)
    optimizer_name = "adamw8bit" if method.endswith("adamw8bit") else "adamw"
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, optimizer=optimizer_name), torch.device("cpu"))
    params = count_params(model)
    x = torch.randint(0, 50257, (batch, block))
    y = torch.randint(0, 50257, (batch, block))
    import gc

    gc.collect()
    setup_peak = peak_rss_mb()
    reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = lm_loss_sum(model, x, y) / y.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    return {"method": method, "trainable_params": params.trainable, "total_params": params.total,
            "param_mb": module_bytes(model) / 2**20, "optimizer_state_mb": state_bytes / 2**20,
            "peak_rss_setup_mb": setup_peak, "peak_rss_training_mb": peak_rss_mb(),
            "peak_rss_mb": max(setup_peak, peak_rss_mb()), "s_per_step": sorted(times)[len(times) // 2],
            "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="bench/results/finetune_memory.json")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.child, args.batch, args.block, args.steps)))
        return
    results = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", method, "--batch", str(args.batch), "--block", str(args.block),
               "--steps", str(args.steps), "--threads", str(args.threads)]
        env = dict(os.environ) if args.glibc_default else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{method}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{method}: done", file=sys.stderr)
    print(f"\nGPT-2 124M shape, batch {args.batch} x {args.block} tokens, fp32 compute, {args.threads} threads\n")
    print("| method | trainable params | weights MB | optimizer state MB | peak RSS MB (all) | "
          "peak RSS MB (training) | s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%) "
              f"| {r['param_mb']:.0f} | {r['optimizer_state_mb']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_training_mb']:.0f} | {r['s_per_step']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                               "batch": args.batch, "block": args.block, "threads": args.threads,
                               "fixed_mmap_threshold": not args.glibc_default, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
