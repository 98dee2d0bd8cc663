"""Model FLOPs utilisation of lmforge's training step, on a GPU (or the CPU): GPT-2 124M at block 1024.

    python bench/mfu.py                        # CUDA if present: GPT-2 124M, block 1024, bf16, compiled
    python bench/mfu.py --batch 16 --steps 30 --no-compile
    python bench/mfu.py --device cpu --quick   # a tiny model on the CPU: checks that the script works

MFU = achieved FLOP/s / peak FLOP/s. Achieved = tokens/s x (6 N + 12 L T C) per token (N parameters
outside the position table, L layers, T context, C width: nanoGPT's estimate_mfu, PaLM appendix B).
Two peaks are reported: the matmul ceiling measured here (best large bf16 matmul on this device) and,
for known GPUs, the vendor's dense bf16 figure (H100 SXM 989 TFLOP/s, the figure nanoGPT and the issue's
45% target use). The step is `Trainer.train_step()` of the real Trainer with the settings named on the
command line: bf16 autocast, fused AdamW (lmforge's default), flash SDPA (PyTorch picks it for bf16 on
CUDA), torch.compile (`train.compile`), the chunked loss.

Writes bench/results/mfu.json (or --out). No peer runs here: the issue's target is absolute.
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

ROOT = Path(__file__).resolve().parent.parent
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
VENDOR_BF16_PEAK = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
                    "H200": 989e12, "A100": 312e12}
TARGET_MFU = 0.45  # the target for GPT-2 124M at block 1024 on one H100


class RandomBatches:
    """Random token windows: MFU does not depend on what the tokens say (the loss is not reported)."""

    def __init__(self, vocab: int, batch: int, block: int, seed: int = 0):
        self.vocab, self.batch, self.block = vocab, batch, block
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_per_epoch = 10**9

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        windows = torch.randint(self.vocab, (self.batch, self.block + 1), generator=self.generator)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vendor_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    peak = next((flops for key, flops in VENDOR_BF16_PEAK.items() if key in name), None)
    return name, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16, help="micro-batch (sequences)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "fp16"])
    parser.add_argument("--no-compile", action="store_true", help="eager instead of train.compile")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    parser.add_argument("--quick", action="store_true", help="gpt2-tiny, block 64, batch 4, 5 + 3 steps")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mfu.json"))
    args = parser.parse_args()
    if args.quick:
        args.preset, args.block, args.batch, args.steps, args.warmup = "gpt2-tiny", 64, 4, 3, 5

    from lmforge.model.config import preset_config
    from lmforge.model.gpt import GPT
    from lmforge.train.config import TrainConfig
    from lmforge.train.estimate import matmul_flops_per_s
    from lmforge.train.loop import Trainer

    device = torch.device(args.device)
    model_cfg = preset_config(args.preset, vocab_size=50257, block_size=args.block)
    torch.manual_seed(0)
    model = GPT(model_cfg)
    params = model.num_params() - (model.pos_emb.weight.numel() if model.pos_emb is not None else 0)
    flops_per_token = 6 * params + 12 * model_cfg.n_layer * args.block * model_cfg.n_embd
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(out_dir=run_dir, max_steps=steps, batch_size=args.batch, warmup_steps=0, device=args.device,
                          precision=args.precision, compile=not args.no_compile, sample_interval=0, resume="never")
        trainer = Trainer(model, None, RandomBatches(50257, args.batch, args.block), None, cfg, run_dir, device,
                          args.precision)
        times = []
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            trainer.train_step()
            sync(device)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times[args.warmup:])
    tokens_per_s = args.batch * args.block / step_s
    achieved = tokens_per_s * flops_per_token
    ceiling = matmul_flops_per_s(device, args.precision, 8192 if device.type == "cuda" else 2048)
    name, peak = vendor_peak(device)
    report = {"benchmark": "mfu", "device": name, "preset": args.preset, "block": args.block, "batch": args.batch,
              "precision": args.precision, "compile": not args.no_compile, "torch": torch.__version__,
              "params": params, "flops_per_token": flops_per_token, "step_seconds": step_s,
              "first_step_seconds": times[0], "tokens_per_s": tokens_per_s, "achieved_flops": achieved,
              "matmul_ceiling_flops": ceiling, "mfu_of_matmul_ceiling": achieved / ceiling,
              "vendor_peak_flops": peak, "mfu_of_vendor_peak": achieved / peak if peak else None,
              "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}
    target_mfu = report["mfu_of_vendor_peak"]
    report["targets"] = [] if target_mfu is None else [{
        "name": f"{args.preset} block {args.block} MFU on {name}", "measured": target_mfu, "target": TARGET_MFU,
        "comparison": ">=", "unit": "", "met": target_mfu >= TARGET_MFU}]
    print(f"{name}: {args.preset}, batch {args.batch} x {args.block}, {args.precision}, "
          f"{'compiled' if report['compile'] else 'eager'}: {step_s * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
          f"{achieved / 1e12:.2f} TFLOP/s = {report['mfu_of_matmul_ceiling']:.1%} of the measured matmul ceiling "
          f"({ceiling / 1e12:.2f} TFLOP/s)"
          + (f", {target_mfu:.1%} of the {peak / 1e12:.0f} TFLOP/s data-sheet peak (target {TARGET_MFU:.0%})"
             if target_mfu is not None else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
