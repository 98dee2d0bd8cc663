"""What a fine-tuning checkpoint stores: all weights, only LoRA adapters, or a classifier.

Each format has `save(model, folder)` (write the files) and `load(model, folder)` (put saved
weights back into a model built the same way, for resuming). Loading a finished checkpoint for
inference (rebuilding the model from nothing) is `load_model_from_checkpoint` / `load_classifier`.

LoRA folders:   adapter_model.safetensors  only the adapter tensors (a few MB, not the whole model)
                adapter_config.json        rank, alpha, dropout, targets, the base model's folder and
                                           whether the base was 4-bit (qlora)
                config.json                the base model's architecture
Classifiers:    model.safetensors (body + head), config.json (the body), classifier.json (classes)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..adapt.lora import LoRAConfig, load_lora_state_dict, lora_state_dict
from ..data.templates import save_chat_template
from ..model.config import config_to_dict
from .checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS

CLASSIFIER_CONFIG = "classifier.json"  # read back by eval/classify.py


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


class LoRAFiles:
    """Adapters only; the frozen base is read again from `base_dir` when the checkpoint is loaded."""

    def __init__(self, base_dir: Path, lora: LoRAConfig, quant_backend: str | None = None):
        self.base_dir, self.lora, self.quant_backend = Path(base_dir), lora, quant_backend

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        tensors = {name: t.detach().contiguous() for name, t in lora_state_dict(model).items()}
        save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        _write_json(folder / ADAPTER_CONFIG, {**self.lora.to_dict(), "base_model": str(self.base_dir),
                                              "quantized": self.quant_backend})
        _write_json(folder / "config.json", config_to_dict(model.config))

    def load(self, model: torch.nn.Module, folder: Path) -> None:
        load_lora_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))


class ClassifierFiles:
    """The whole classifier (body and head) plus the class names in order."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        _write_json(folder / "config.json", config_to_dict(model.config))
        _write_json(folder / CLASSIFIER_CONFIG, {"classes": self.classes, "num_classes": len(self.classes)})

    def load(self, model: torch.nn.Module, folder: Path) -> None:
        missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise ValueError(f"{folder}: weights do not fit the classifier (missing {missing}, unexpected {unexpected})")


class _WithChatTemplate:
    """Another format plus chat_template.json, so chat/serve use the template the model was tuned on."""

    def __init__(self, inner, template):
        self.inner, self.template = inner, template

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        self.inner.save(model, folder)
        save_chat_template(folder, self.template)

    def load(self, model: torch.nn.Module, folder: Path) -> None:
        self.inner.load(model, folder)


def with_chat_template(files, template):
    # Instruction tuning puts the end-of-text token after every answer (data/sft.py), so the stored template
    # says so: chat and serve then write it after earlier answers too, as the model saw in training.
    return _WithChatTemplate(files, replace(template, eot_after_answer=True))
