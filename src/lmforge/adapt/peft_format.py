"""LoRA adapters in the PEFT format, so Hugging Face's `peft` loads them onto the exported base model.

A PEFT LoRA folder holds two files:
  adapter_config.json        rank r, lora_alpha, dropout, target_modules (HF module names), ...
  adapter_model.safetensors  for each adapted HF module M: "base_model.model.M.lora_A.weight" (r x in)
                             and "base_model.model.M.lora_B.weight" (out x r)
PEFT adds (lora_alpha / r) * B A x to the module's output -- the same update lmforge's LoRALinear adds,
so for most layers the tensors are copied as they are, with lmforge names turned into HF ones.

GPT-2 is the exception: its q, k and v projections are one fused HF module (c_attn, output = q|k|v).
Separate adapters on q and v become one adapter on c_attn whose A stacks their A's (rank 2r) and whose
B is block-diagonal, each B writing only its own slice of the output:

    [B_q  0 ]   [A_q]     [B_q A_q]   <- the q rows of c_attn's output
    [ 0   0 ] @ [A_v]  =  [   0   ]   <- k rows (no adapter)
    [ 0  B_v]             [B_v A_v]   <- v rows

The rank doubles, so lora_alpha doubles too (rank_pattern / alpha_pattern), keeping alpha / r -- and
so the update -- exactly the same. GPT-2's Conv1D layers also need fan_in_fan_out=True in the config.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.hf import FAMILIES, family_of, hf_target
from .lora import LoRALinear, lora_layers

PREFIX = "base_model.model."


def peft_adapter(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, adapter_config) of the LoRA layers of `model` in PEFT's naming and layout."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to export")
    family = FAMILIES[family_of(model.config)]
    settings = {(m.r, m.alpha) for m in layers.values()}
    if len(settings) != 1:
        raise ValueError(f"LoRA layers with different ranks/alphas {sorted(settings)} cannot share one PEFT config")
    (r, alpha), = settings
    tensors: dict[str, torch.Tensor] = {}
    fused: dict[str, list[tuple[int, LoRALinear]]] = defaultdict(list)
    conv1d, linear = set(), set()  # HF modules stored (in, out) (GPT-2's Conv1D) or (out, in)
    for name, layer in layers.items():
        target = hf_target(name, family)
        (conv1d if target.transposed else linear).add(target.name)
        if target.part is None:
            tensors[f"{PREFIX}{target.name}.lora_A.weight"] = layer.lora_A.detach().float().contiguous()
            tensors[f"{PREFIX}{target.name}.lora_B.weight"] = layer.lora_B.detach().float().contiguous()
        else:
            fused[target.name].append((target.part, layer))
    rank_pattern, alpha_pattern = {}, {}
    for hf_module, parts in fused.items():
        a, b = _fuse(parts, parts_total=3)
        tensors[f"{PREFIX}{hf_module}.lora_A.weight"], tensors[f"{PREFIX}{hf_module}.lora_B.weight"] = a, b
        leaf = hf_module.rsplit(".", 1)[-1]
        rank_pattern[leaf], alpha_pattern[leaf] = a.size(0), alpha * len(parts)
    modules = sorted({name[len(PREFIX):].rsplit(".lora_", 1)[0] for name in tensors})
    if conv1d and linear:
        raise ValueError("PEFT has one fan_in_fan_out switch: cannot export adapters on GPT-2's Conv1D layers "
                         "together with nn.Linear ones (lm_head); export merged weights instead (--format hf)")
    dropout = next(iter(layers.values())).dropout
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
        "lora_dropout": getattr(dropout, "p", 0.0), "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "fan_in_fan_out": bool(conv1d), "bias": "none", "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern, "inference_mode": True, "modules_to_save": None,
    }
    return tensors, config


def _fuse(parts: list[tuple[int, LoRALinear]], parts_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter for a fused module from adapters on some of its equal output slices."""
    parts = sorted(parts, key=lambda item: item[0])
    out_slice = parts[0][1].out_features
    a = torch.cat([layer.lora_A.detach().float() for _, layer in parts])  # (k*r, in)
    b = torch.zeros(out_slice * parts_total, a.size(0))
    column = 0
    for part, layer in parts:
        b[part * out_slice:(part + 1) * out_slice, column:column + layer.r] = layer.lora_B.detach().float()
        column += layer.r
    return a.contiguous(), b


def save_peft_adapter(model: torch.nn.Module, out_dir: str | Path, base_model_path: str | Path) -> Path:
    """Write adapter_config.json + adapter_model.safetensors for `peft.PeftModel.from_pretrained`."""
    tensors, config = peft_adapter(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "base_model_name_or_path": str(base_model_path)}
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out_dir
