"""Where a training step's time goes on a GPU: the step of bench/mfu.py under torch.profiler.

    python bench/profile_step.py [--no-compile] [--batch 16] [--plain-loss] [--out FILE.json]
    python bench/profile_step.py --device cpu --preset gpt2-tiny --block 64 --batch 2 --no-compile   # a check

Times the real Trainer step (GPT-2 124M, block 1024, bf16) without the profiler first, then profiles
three steps and sums the GPU kernels' time per step by kind: matmuls, attention, the optimizer,
copies, everything else (normalisations, activations, the loss's softmax, compiled fused kernels).
Wall time well above the kernels' sum means the GPU waits for the host (launch overhead, syncs).
--plain-loss computes the loss from the whole (B, T, V) logits instead of in chunks, to see what the
chunking costs at this size. Prints the top kernels too; writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mfu import RandomBatches  # noqa: E402

KINDS = (("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
         ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "wgmma")),
         ("optimizer", ("adam", "multi_tensor")),
         ("copy", ("memcpy", "memset", "copy_")))


def kind_of(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((kind for kind, marks in KINDS if any(mark in name for mark in marks)), "other")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_time_us(event) -> float:
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--plain-loss", action="store_true", help="no chunked loss")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from lmforge.model import gpt
    from lmforge.model.config import preset_config
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import Trainer

    if args.plain_loss:
        gpt.worth_chunking = lambda *_: False
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = gpt.GPT(preset_config(args.preset, vocab_size=50257, block_size=args.block))
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(out_dir=run_dir, max_steps=100, batch_size=args.batch, warmup_steps=0, device=args.device,
                          precision="bf16", compile=not args.no_compile, sample_interval=0, resume="never")
        trainer = Trainer(model, None, RandomBatches(50257, args.batch, args.block), None, cfg, run_dir, device, "bf16")
        for _ in range(8):  # compilation and warm-up
            trainer.train_step()
        times = []
        for _ in range(10):
            sync(device)
            start = time.perf_counter()
            trainer.train_step()
            sync(device)
            times.append(time.perf_counter() - start)
        profiled_steps = 3
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(profiled_steps):
                trainer.train_step()
            sync(device)
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
               and device_time_us(e) > 0]
    by_kind: dict[str, float] = {}
    for event in kernels:
        kind = kind_of(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + device_time_us(event) / 1e3 / profiled_steps
    wall_ms = statistics.median(times) * 1e3
    report = {"compile": not args.no_compile, "batch": args.batch, "block": args.block, "plain_loss": args.plain_loss,
              "wall_ms_per_step": wall_ms, "gpu_kernel_ms_per_step": sum(by_kind.values()),
              "ms_per_step_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
              "top_kernels": [(e.key[:90], device_time_us(e) / 1e3 / profiled_steps, e.count // profiled_steps)
                              for e in sorted(kernels, key=device_time_us, reverse=True)[:15]]}
    print(f"{'compiled' if report['compile'] else 'eager'}, batch {args.batch} x {args.block}"
          f"{', plain loss' if args.plain_loss else ''}: wall {wall_ms:.1f} ms/step, GPU kernels "
          f"{report['gpu_kernel_ms_per_step']:.1f} ms/step: "
          + ", ".join(f"{k} {v:.1f}" for k, v in report["ms_per_step_by_kind"].items()))
    for name, ms, count in report["top_kernels"]:
        print(f"  {ms:7.2f} ms  x{count:<4} {name}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
