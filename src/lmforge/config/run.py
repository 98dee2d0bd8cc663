"""RunConfig: the whole YAML file of a run -- model, data, ingest, train, finetune -- and how it is loaded.

Precedence, lowest first: dataclass defaults < the model preset < the YAML file < --section.key=value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..data.config import DataConfig
from ..distributed.config import DistConfig
from ..ingest.config import IngestConfig
from ..model.config import PRESETS, ModelConfig, apply_preset
from ..train.config import TrainConfig
from ..train.finetune_config import FinetuneConfig
from .loader import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides, to_commented_yaml, to_dict


@dataclass
class RunConfig:
    """A complete lmforge run."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the Transformer"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the corpus and tokenizer"})
    ingest: IngestConfig = field(default_factory=IngestConfig, metadata={"help": "reading and cleaning documents"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the optimisation"})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, metadata={
        "help": "used by `lmforge finetune` only: task, method (full/lora/qlora) and their settings"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={
        "help": "several processes under torchrun (lmforge train --nproc N): ddp or fsdp"})


def run_presets() -> list[str]:
    """Names of the full-run presets shipped as YAML files in lmforge/presets/."""
    folder = resources.files("lmforge") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_raw(name: str) -> dict:
    """A run preset (lmforge/presets/NAME.yaml) or, for a model preset name, {model: {preset: NAME}}."""
    if name in PRESETS:
        return {"model": {"preset": name}}
    path = resources.files("lmforge") / "presets" / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(run_presets() + sorted(PRESETS))
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {choices}")
    return load_yaml(Path(str(path)))


def resolve_raw(raw: dict) -> dict:
    """Expand the model preset and accept a single string for data.path."""
    raw = dict(raw)
    model = raw.get("model") or {}
    try:
        raw["model"] = apply_preset(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        raw["data"] = {**data, "path": [data["path"]]}
    return raw


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    base: dict | None = None) -> RunConfig:
    """Defaults, then `base` (e.g. a preset), then the YAML file at `path`, then the overrides.

    A model preset named on the command line is applied over the file's model keys (a file written
    by `lmforge init` spells out every key, which would otherwise hide the new preset), and keys
    given on the command line still win over it.
    """
    raw = dict(base or {})
    user = load_yaml(path) if path is not None else {}
    raw = deep_merge(raw, user)
    cli = parse_overrides(list(overrides))
    raw = _shape_given_wins_over_sizing(raw, deep_merge(user, cli))
    cli_preset = (cli.get("model") or {}).get("preset")
    if cli_preset in PRESETS:
        raw = deep_merge(raw, {"model": PRESETS[cli_preset]})
    raw = resolve_init_from(deep_merge(raw, cli))
    return from_dict(RunConfig, resolve_raw(raw))


def _shape_given_wins_over_sizing(raw: dict, user: dict) -> dict:
    """model.fit_to_budget (set by the demo preset) picks the model's shape; a shape the user gives in the
    file or on the command line (layers, width, heads, a model preset or a checkpoint) wins over it."""
    model = user.get("model") or {}
    if "fit_to_budget" in model or not {"n_layer", "n_embd", "n_head", "preset", "init_from"} & set(model):
        return raw
    return deep_merge(raw, {"model": {"fit_to_budget": False}})


def resolve_init_from(raw: dict) -> dict:
    """A run that starts from a checkpoint has that checkpoint's architecture: read it from config.json.

    The folder may be an lmforge checkpoint or a Hugging Face model folder (its config.json names a model_type).
    """
    init_from = (raw.get("model") or {}).get("init_from")
    if not init_from:
        return raw
    config_file = Path(init_from).expanduser() / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.init_from: {init_from} is not a checkpoint folder (no config.json)")
    saved = json.loads(config_file.read_text())
    if "model_type" in saved:  # a Hugging Face model folder: translate its config.json
        # Imported here: model.hf loads torch, which reading a config should not need otherwise.
        from ..model.config import config_to_dict
        from ..model.hf import config_from_hf

        try:
            saved = config_to_dict(config_from_hf(saved))
        except ValueError as exc:
            raise ConfigError(f"model.init_from: {init_from}: {exc}") from None
    # Dropout is a training choice, not architecture: a value given for this run wins over the saved one.
    chosen = {key: raw["model"][key] for key in ("dropout",) if key in raw["model"]}
    return {**raw, "model": {**saved, **chosen, "init_from": init_from, "preset": None}}


def render_config(cfg: RunConfig, header: str | None = None) -> str:
    return to_commented_yaml(cfg, header=header)


__all__ = ["RunConfig", "load_run_config", "render_config", "run_presets", "preset_raw", "to_dict", "ConfigError"]
