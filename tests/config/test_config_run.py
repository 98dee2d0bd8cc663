"""The run config: presets, precedence, shipped presets, and errors that name the key."""

import re

import pytest

from lmforge.config.loader import ConfigError, load_yaml
from lmforge.config.run import RunConfig, load_run_config, preset_raw, render_config, run_presets
from lmforge.model.config import PRESETS


def test_defaults_load_without_a_file():
    cfg = load_run_config()
    assert isinstance(cfg, RunConfig) and cfg.data.path is None and cfg.train.max_steps == 1000


def test_precedence_preset_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: llama-tiny\n  n_layer: 6\ntrain:\n  lr: 3e-4\n")
    cfg = load_run_config(path, ["--model.n_embd=64", "--train.lr=1e-3"])
    assert cfg.model.norm == "rmsnorm" and cfg.model.n_kv_head == 2  # from the preset
    assert cfg.model.n_layer == 6  # the file beats the preset
    assert cfg.model.n_embd == 64 and cfg.train.lr == 1e-3  # the command line beats both


def test_a_single_data_path_string_is_accepted():
    assert load_run_config(None, ["--data.path=~/docs"]).data.path == ["~/docs"]


@pytest.mark.parametrize("override, message", [
    ("--train.lr=abc", "train.lr: expected a number, got 'abc'"),
    ("--train.lrr=1", "train.lrr: unknown key; did you mean 'lr'?"),
    ("--train.precision=fp8", "train.precision"),
    ("--model.preset=gpt9", "model.preset: unknown preset 'gpt9'"),
    ("--train.min_lr=0.1", "train.min_lr: need 0 <= min_lr <= lr"),
    ("--model.n_embd=130", "model.n_embd: 130 must be divisible by n_head"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_run_config(None, [override])


@pytest.mark.parametrize("name", run_presets() + sorted(PRESETS))
def test_every_preset_renders_and_loads_back(name, tmp_path):
    cfg = load_run_config(None, base=preset_raw(name))
    path = tmp_path / "run.yaml"
    path.write_text(render_config(cfg, "header"))
    assert load_run_config(path) == cfg
    assert load_yaml(path)["model"]["n_layer"] == cfg.model.n_layer


def test_shipped_run_presets_exist():
    assert {"demo", "shakespeare-char"} <= set(run_presets())
    assert load_run_config(None, base=preset_raw("shakespeare-char")).data.tokenizer == "char"


def test_a_shape_the_user_gives_wins_over_the_demo_s_model_sizing():
    demo = preset_raw("demo")
    assert load_run_config(base=demo).model.fit_to_budget is True
    assert load_run_config(None, ["--model.n_layer=2"], base=demo).model.fit_to_budget is False
    assert load_run_config(None, ["--model.preset=llama-tiny"], base=demo).model.fit_to_budget is False
    assert load_run_config(None, ["--train.lr=1e-3"], base=demo).model.fit_to_budget is True
    kept = load_run_config(None, ["--model.n_layer=2", "--model.fit_to_budget=true"], base=demo)
    assert kept.model.fit_to_budget is True  # said explicitly: the probe still picks
