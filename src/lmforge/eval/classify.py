"""Using a classification checkpoint: load it back, and predict class probabilities for texts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model

from ..adapt.heads import ClassifierModel
from ..model.config import config_from_dict
from ..tokenizer import load_tokenizer
from ..tokenizer.base import Tokenizer
from .classification import classification_metrics

CLASSIFIER_CONFIG = "classifier.json"


def load_classifier(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """(ClassifierModel, tokenizer, class names) from a folder written by a classify fine-tuning run."""
    folder = Path(ckpt_dir).expanduser()
    info_path = folder / CLASSIFIER_CONFIG
    if not info_path.is_file():
        raise ValueError(f"{folder} is not a classification checkpoint (no {CLASSIFIER_CONFIG}); "
                         "train one with `lmforge finetune` and finetune.task=classify")
    classes = json.loads(info_path.read_text())["classes"]
    config = config_from_dict(json.loads((folder / "config.json").read_text()))
    model = ClassifierModel.from_config(config, len(classes))
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise ValueError(f"{folder}: weights do not fit (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), load_tokenizer(folder), classes


@torch.no_grad()
def predict(model: ClassifierModel, tokenizer: Tokenizer, texts: list[str], batch_size: int = 32,
            max_length: int | None = None) -> list[list[float]]:
    """Class probabilities for each text (texts longer than the context keep their first tokens)."""
    limit = min(max_length or model.config.block_size, model.config.block_size)
    device = next(model.parameters()).device
    probabilities: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer.encode(t)[:limit] or [tokenizer.eot_id] for t in texts[start:start + batch_size]]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), tokenizer.eot_id, dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: the padding comes after the token that is read
            x[i, :len(row)] = torch.tensor(row)
        last_index = torch.tensor([len(r) - 1 for r in rows])
        logits = model(x.to(device), last_index.to(device))
        probabilities += logits.float().softmax(-1).tolist()
    return probabilities


@torch.no_grad()
def evaluate_classifier(model: ClassifierModel, batches, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix over every batch of `batches`
    (a ClassifyBatches: (x, last_index, label) batches)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    y_true, y_pred = [], []
    for x, last_index, label in batches.eval_batches():
        y_pred += model(x.to(device), last_index.to(device)).argmax(-1).tolist()
        y_true += label.tolist()
    model.train(was_training)
    return classification_metrics(y_true, y_pred, classes)
