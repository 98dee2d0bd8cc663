"""lmforge's CUDA paths checked against independent references, for a session that is lent a GPU.

    python bench/cuda_checks.py [--out FILE.json]        # on a CUDA machine (a minute on an H200)
    python bench/cuda_checks.py --device cpu --small     # the same checks on the CPU: does the script work

Each check prints one line and lands in the JSON report:
- logits: lmforge's GPT-2 124M against Hugging Face's GPT2LMHeadModel holding the same weights, fp32 and
  bf16 autocast (the peer is the reference);
- flash SDPA: the model's forward in bf16 with PyTorch restricted to the flash-attention kernel (it
  raises if lmforge's attention call cannot use it), and its logits against the default kernel choice;
- KV cache: greedy tokens from the cached engine equal those of re-running the whole context per step;
- fused AdamW: the optimizer lmforge builds for a CUDA model uses torch's fused kernel, and one step of
  it matches torch's plain (for-each) AdamW on the same gradients;
- decode speed: batch-1 greedy tokens/s, lmforge and transformers side by side, bf16.
The training paths (bf16, fp16 with loss scaling, compile, the time budget) run through the CLI in
bench/gpu_checks.sh, which calls this script too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_speed as peers  # noqa: E402  (hf_model_like, the three greedy runners)

from lmforge.model.config import preset_config  # noqa: E402
from lmforge.model.gpt import GPT  # noqa: E402
from lmforge.train.config import TrainConfig  # noqa: E402
from lmforge.train.optim import build_optimizer  # noqa: E402


def build_models(device: torch.device, small: bool):
    torch.manual_seed(0)
    config = preset_config("gpt2-tiny" if small else "gpt2-124m", vocab_size=peers.VOCAB_SIZE)
    model = GPT(config).eval()
    return model.to(device), peers.hf_model_like(model).to(device)


@torch.no_grad()
def check_logits(model, hf, device) -> dict:
    ids = torch.randint(model.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1)).to(device)
    report = {}
    for precision in ("fp32", "bf16"):
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            ours, theirs = model(ids).float(), hf(ids).logits.float()
        report[precision] = {"max_abs_diff": (ours - theirs).abs().max().item(),
                             "logit_scale": theirs.abs().max().item(),
                             "same_argmax": (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()}
    return report


@torch.no_grad()
def check_flash_sdpa(model, device) -> dict:
    if device.type != "cuda":
        return {"skipped": "flash attention is a CUDA kernel"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ids = torch.randint(model.config.vocab_size, (4, 1024), generator=torch.Generator().manual_seed(2)).to(device)
    with torch.autocast("cuda", torch.bfloat16):
        default = model(ids).float()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model(ids).float()
        with sdpa_kernel(SDPBackend.MATH):
            math = model(ids).float()
    return {"flash_vs_default_max_abs_diff": (flash - default).abs().max().item(),
            "flash_vs_math_max_abs_diff": (flash - math).abs().max().item()}


def check_kv_cache(model, device, new_tokens: int) -> dict:
    prompts = torch.randint(model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3)).to(device)
    cached = peers.lmforge_cached(model, prompts, new_tokens).to(device)
    plain = peers.lmforge_no_cache(model, prompts, new_tokens)
    return {"tokens": new_tokens, "identical": bool(torch.equal(cached, plain)),
            "first_difference": int((cached != plain).any(0).nonzero()[0]) if not torch.equal(cached, plain) else None}


def check_fused_adamw(device) -> dict:
    torch.manual_seed(4)
    model = GPT(preset_config("gpt2-tiny", vocab_size=256)).to(device)
    twin = GPT(preset_config("gpt2-tiny", vocab_size=256)).to(device)
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(lr=1e-3)
    ours = build_optimizer(model, cfg, device)
    plain = build_optimizer(twin, cfg, device)
    for group in plain.param_groups:  # the same groups, updated by torch's for-each implementation
        group["fused"], group["foreach"] = False, True
    ids = torch.randint(256, (4, 64), generator=torch.Generator().manual_seed(5)).to(device)
    for net, opt in ((model, ours), (twin, plain)):
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(net(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), twin.parameters()))
    return {"fused": bool(ours.param_groups[0].get("fused")), "max_param_diff_after_3_steps": diff}


def decode_speed(model, hf, device, new_tokens: int) -> dict:
    prompt = torch.randint(model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(6)).to(device)
    report = {}
    for name, runner, net in (("lmforge", peers.lmforge_cached, model), ("transformers", peers.hf_generate, hf)):
        net.to(torch.bfloat16)
        runner(net, prompt, 8)  # warm up
        best = float("inf")
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            runner(net, prompt, new_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        report[name] = {"tokens_per_s": new_tokens / best}
        net.float()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="gpt2-tiny instead of GPT-2 124M, fewer tokens")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cuda_checks.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    model, hf = build_models(device, args.small)
    new_tokens = 16 if args.small else 128
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__}
    for name, check in (("logits_vs_transformers", lambda: check_logits(model, hf, device)),
                        ("flash_sdpa", lambda: check_flash_sdpa(model, device)),
                        ("kv_cache_vs_full_context", lambda: check_kv_cache(model, device, new_tokens)),
                        ("fused_adamw", lambda: check_fused_adamw(device)),
                        ("decode_batch1_bf16", lambda: decode_speed(model, hf, device, new_tokens))):
        try:
            report[name] = check()
        except Exception as error:  # one broken path must not hide the others' results
            report[name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
