"""Model surgery for fine-tuning: LoRA adapters, 4-bit NF4 bases (QLoRA), task heads. No training loops here.

lora.py   low-rank adapters on frozen linear layers; merge, unmerge, adapter-only state dicts
nf4.py    the NF4 4-bit weight format in plain PyTorch, and NF4Linear
qlora.py  quantize a model's linear layers (bitsandbytes or nf4.py), merge drift, 8-bit optimizers
heads.py  a classification head on the last real token, and what to freeze
"""

from .heads import ClassifierModel, freeze_for_classification, last_index_from_lengths
from .lora import (LoRAConfig, LoRALinear, LoRAReport, ParamCount, apply_lora, count_params, load_lora_state_dict,
                   lora_state_dict, merge_lora, unmerge_lora)
from .nf4 import NF4Linear, NF4Tensor, dequantize_nf4, quantize_nf4
from .qlora import QuantReport, build_8bit_optimizer, merge_drift, quantize_model

__all__ = [
    "ClassifierModel", "freeze_for_classification", "last_index_from_lengths",
    "LoRAConfig", "LoRALinear", "LoRAReport", "ParamCount", "apply_lora", "count_params", "load_lora_state_dict",
    "lora_state_dict", "merge_lora", "unmerge_lora",
    "NF4Linear", "NF4Tensor", "dequantize_nf4", "quantize_nf4",
    "QuantReport", "build_8bit_optimizer", "merge_drift", "quantize_model",
]
