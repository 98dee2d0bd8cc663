"""Checkpoint folders: write atomically, find the one to resume from, prune old ones, load back.

A checkpoint folder holds `model.safetensors` (weights; no pickle, safe to load from strangers),
`config.json` (the ModelConfig), the tokenizer files and `meta.json` (step, epoch, losses).
`last/` and `step-NNNNNN/` also hold `train_state.pt` (optimizer, scaler, RNG states, data
position), read back with `torch.load(weights_only=True)`.

Every folder is written under a temporary name, its files and a manifest of their sizes and checksums
fsynced, and only then renamed into place, so a kill or a power cut at any moment leaves the previous
checkpoint intact. Resuming checks the manifest (train/integrity.py) and falls back to the newest
intact checkpoint when the newest one is damaged.

A run of several processes (torchrun) writes the same files, from rank 0 only, with whole
(consolidated) weights and optimizer state even when training shards them (lmforge.distributed.state_dict);
train_state.pt then also records the world size and every rank's RNG state, so any number of
processes -- one included -- can resume it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..model.config import ModelConfig, config_from_dict, config_to_dict
from ..model.gpt import GPT
from ..model.hf import build_model, config_from_hf, is_hf_checkpoint, load_hf_model, read_hf_config
from .integrity import checkpoint_problem, write_manifest

STEP_DIR = re.compile(r"^step-(\d{6,})$")
ADAPTER_CONFIG = "adapter_config.json"  # LoRA checkpoints: adapters only, plus where their base lives
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder to `final`, replacing an older one.

    The old folder is first renamed aside (an atomic step), then the new one renamed in; if we die
    between the two renames, find_resume() still finds the aside copy.
    """
    aside = final.with_name(f".old-{final.name}")
    if aside.exists():
        shutil.rmtree(aside)
    _sync_folder(tmp)  # the new files are on disk before any rename makes them the checkpoint
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    _sync_dir_entry(final.parent)  # ...and so are the renames, before the old copy goes
    if aside.exists():
        shutil.rmtree(aside)


def _sync_folder(folder: Path) -> None:
    """fsync every file in `folder`, then the folder itself: without it, a power cut after the rename can
    leave a checkpoint whose files are empty (the data was still in the page cache)."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    _sync_dir_entry(folder)


def _sync_dir_entry(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; its renames are durable enough
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fresh_tmp(run_dir: Path, name: str) -> Path:
    """An empty temporary folder for checkpoint `name`; leftovers of earlier saves of it that died
    (a crash, a full disk, kill -9: any process id) are removed first."""
    for stale in run_dir.glob(f".tmp-{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir(parents=True)
    return tmp


class FullWeights:
    """How a checkpoint stores a plain model: every weight in model.safetensors, the shape in config.json.

    Fine-tuning swaps in other formats with the same two methods (e.g. LoRA stores only its adapters).
    """

    def save(self, model: GPT, folder: Path) -> None:
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        _write_json(folder / "config.json", config_to_dict(model.config))

    def load(self, model: GPT, folder: Path) -> None:
        load_weights(model, folder)


def save_checkpoint(run_dir: str | Path, name: str, model: GPT, tokenizer, meta: dict,
                    train_state: dict | None = None, files=None) -> Path:
    """Write checkpoint folder run_dir/name (e.g. "best", "step-000500") atomically.

    `files` writes the model's files (default FullWeights(); anything with save(model, folder)).
    """
    run_dir = Path(run_dir)
    final = run_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(run_dir, name)
    try:
        (files or FullWeights()).save(model, tmp)
        tokenizer.save(tmp)
        _write_json(tmp / "meta.json", meta)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        write_manifest(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save (a full disk) leaves the last good one alone
        raise
    return final


def link_checkpoint(src: Path, name: str) -> Path:
    """Make run_dir/name a copy of checkpoint `src` using hard links (no extra disk, still atomic)."""
    tmp = _fresh_tmp(src.parent, name)
    try:
        for f in src.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:  # file systems without hard links
                shutil.copy2(f, tmp / f.name)
        final = src.parent / name
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def prune_step_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    steps = sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and STEP_DIR.match(p.name))
    for old in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(old)


WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")


def is_checkpoint(path: str | Path) -> bool:
    """An lmforge checkpoint folder: full weights or LoRA adapters, plus config.json."""
    path = Path(path)
    return any((path / f).is_file() for f in WEIGHT_FILES) and (path / "config.json").is_file()


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """The folders a run could continue from, newest step first: last/ (or its aside copy from an
    interrupted save) and the step-NNNNNN/ folders. last/ comes first among equals, and first of all
    when its step cannot be read (so its damage gets reported)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for rank, name in enumerate(("last", ".old-last")):
        if (run_dir / name).is_dir():
            found.append((_saved_step(run_dir / name), -rank, run_dir / name))
    for path in run_dir.iterdir():
        if path.is_dir() and (match := STEP_DIR.match(path.name)):
            found.append((int(match.group(1)), -2, path))
    return [path for *_, path in sorted(found, key=lambda item: (item[0], item[1]), reverse=True)]


def _saved_step(folder: Path) -> float:
    try:
        return int(read_meta(folder)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def resume_problem(folder: str | Path) -> str | None:
    """Why a run cannot continue from `folder` (damaged, incomplete), or None when it can."""
    folder = Path(folder)
    weights = ADAPTER_WEIGHTS if (folder / ADAPTER_CONFIG).is_file() else "model.safetensors"
    return checkpoint_problem(folder, ("config.json", "meta.json", weights, "train_state.pt"))


def choose_resume(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint to continue from (or None), and the damaged ones skipped on the way."""
    damaged = []
    for path in resume_candidates(run_dir):
        problem = resume_problem(path)
        if problem is None:
            return path, damaged
        damaged.append((path, problem))
    return None, damaged


def find_resume(run_dir: str | Path) -> Path | None:
    """The checkpoint a resumed run continues from: the newest intact one (see choose_resume)."""
    return choose_resume(run_dir)[0]


def load_train_state(ckpt_dir: str | Path) -> dict:
    return torch.load(Path(ckpt_dir) / "train_state.pt", map_location="cpu", weights_only=True)


def read_meta(ckpt_dir: str | Path) -> dict:
    return json.loads((Path(ckpt_dir) / "meta.json").read_text())


def read_model_config(ckpt_dir: str | Path) -> ModelConfig:
    """The architecture of an lmforge checkpoint, or of a Hugging Face model folder (translated)."""
    if is_hf_checkpoint(ckpt_dir):
        return config_from_hf(read_hf_config(ckpt_dir))
    return config_from_dict(json.loads((Path(ckpt_dir) / "config.json").read_text()))


def load_weights(model: GPT, ckpt_dir: str | Path) -> None:
    """Load model.safetensors into `model` (shapes must match)."""
    missing, unexpected = load_model(model, str(Path(ckpt_dir) / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"{ckpt_dir}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


def load_model_from_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The model of an lmforge checkpoint or of a Hugging Face model folder (gpt2, llama, qwen2)."""
    ckpt_dir = Path(ckpt_dir)
    # Checked first: an HF folder also holds model.safetensors and config.json, like ours.
    if is_hf_checkpoint(ckpt_dir):
        return load_hf_model(ckpt_dir).to(device)
    if not is_checkpoint(ckpt_dir):
        raise ValueError(f"{ckpt_dir} is not an lmforge checkpoint (model.safetensors and config.json expected) "
                         "or a Hugging Face model folder (config.json with a model_type, and weights)")
    if (ckpt_dir / ADAPTER_CONFIG).is_file():
        return load_lora_checkpoint(ckpt_dir, merge=True).to(device)
    model = build_model(read_model_config(ckpt_dir))
    load_weights(model, ckpt_dir)
    return model.to(device)


def load_lora_checkpoint(ckpt_dir: str | Path, merge: bool = True) -> GPT:
    """The base model named in adapter_config.json with the folder's LoRA adapters on top.

    merge=True folds the adapters into the weights (a plain GPT, as fast as the base); a 4-bit
    (qlora) base is dequantized first, so the merged model computes what the adapted one did.
    merge=False keeps the LoRALinear layers (and a 4-bit base), e.g. to export a PEFT adapter.
    """
    import warnings

    from safetensors.torch import load_file

    from ..adapt.lora import LoRAConfig, apply_lora, load_lora_state_dict, merge_lora
    from ..adapt.qlora import quantize_model

    ckpt_dir = Path(ckpt_dir)
    info = json.loads((ckpt_dir / ADAPTER_CONFIG).read_text())
    base_dir = Path(info["base_model"])
    if not base_dir.exists():
        raise ValueError(f"{ckpt_dir}: the base model {base_dir} named in {ADAPTER_CONFIG} is missing; "
                         "LoRA checkpoints hold only adapters and need their base")
    model = load_model_from_checkpoint(base_dir)
    if info.get("quantized"):
        quantize_model(model, backend=info["quantized"])
    lora = LoRAConfig.from_dict(info)
    apply_lora(model, lora.targets, r=lora.r, alpha=lora.alpha, dropout=lora.dropout)
    load_lora_state_dict(model, load_file(str(ckpt_dir / ADAPTER_WEIGHTS)))
    if not merge:
        return model
    with warnings.catch_warnings():  # merging into a dequantized 4-bit base is exact here: nothing is re-quantized
        warnings.simplefilter("ignore")
        return merge_lora(model).eval()
