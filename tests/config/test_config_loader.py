"""Tests for the strict config loader: dict <-> dataclass, overrides, YAML files."""

from __future__ import annotations  # the loader must resolve these string annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from lmforge.config.loader import (
    ConfigError,
    deep_merge,
    from_dict,
    load_yaml,
    parse_overrides,
    to_commented_yaml,
    to_dict,
)


@dataclass
class ModelConfig:
    """What network to build."""

    n_layer: int = field(metadata={"help": "number of transformer blocks"})
    preset: str = field(default="gpt-tiny", metadata={"help": "starting point for the shape"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})


@dataclass
class TrainConfig:
    """How the optimizer walks: steps, batch, learning rate."""

    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    schedule: Literal["cosine", "linear", "constant"] = field(
        default="cosine", metadata={"help": "LR schedule after warmup"})
    max_steps: int | None = field(default=2000, metadata={"help": "stop after this many steps"})
    compile: bool = field(default=False, metadata={"help": "use torch.compile"})
    betas: tuple[float, float] = (0.9, 0.95)
    eval_at: tuple[int, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive; try 3e-4")


@dataclass
class LoraConfig:
    """Low-rank adapters."""

    rank: int = 8
    targets: list[Literal["q", "k", "v", "o"]] = field(default_factory=lambda: ["q", "v"])


@dataclass
class FinetuneConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: Optional[str] = field(default=None, metadata={"help": "text shown before each example"})


@dataclass
class RunConfig:
    """A whole lmforge run."""

    model: ModelConfig
    seed: int = 1337
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def build(data: dict) -> RunConfig:
    return from_dict(RunConfig, deep_merge({"model": {"n_layer": 2}}, data))


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        build(data)
    return str(caught.value)


# --- from_dict -----------------------------------------------------------------------------


def test_config_loader_builds_nested_dataclasses_with_defaults():
    run = build({"train": {"lr": 0.01}})
    assert run.model == ModelConfig(n_layer=2)
    assert run.train == TrainConfig(lr=0.01)
    assert run.finetune.lora.targets == ["q", "v"]


def test_config_loader_null_section_means_all_defaults():
    assert build({"train": None}).train == TrainConfig()


def test_config_loader_unknown_key_suggests_the_closest_name():
    message = error_of({"train": {"lrr": 0.1}})
    assert message.startswith("train.lrr: unknown key; did you mean 'lr'?")
    assert "valid keys: lr, schedule, max_steps" in message


def test_config_loader_unknown_key_path_is_fully_dotted():
    message = error_of({"finetune": {"lora": {"rnak": 4}}})
    assert message.startswith("finetune.lora.rnak: unknown key; did you mean 'rank'?")


def test_config_loader_unknown_section_without_close_match():
    message = error_of({"zzz": 1})
    assert message.startswith("zzz: unknown key  (valid keys: model, seed, train, finetune)")


def test_config_loader_missing_required_key():
    with pytest.raises(ConfigError, match=r"^model\.n_layer: required key is missing$"):
        from_dict(RunConfig, {"model": {}})


def test_config_loader_section_must_be_a_mapping():
    assert error_of({"train": 5}).startswith("train: expected a section")


@pytest.mark.parametrize("data, expected", [
    ({"train": {"lr": "abc"}}, "train.lr: expected a number, got 'abc'"),
    ({"train": {"lr": True}}, "train.lr: expected a number, got True"),
    ({"seed": 2.5}, "seed: expected an integer, got 2.5"),
    ({"seed": "1.5"}, "seed: expected an integer, got '1.5'"),
    ({"seed": False}, "seed: expected an integer, got False"),
    ({"train": {"compile": "maybe"}}, "train.compile: expected a boolean"),
    ({"train": {"compile": 2}}, "train.compile: expected a boolean"),
    ({"model": {"preset": 1.0}}, "model.preset: expected a string, got 1.0; put it in quotes"),
    ({"train": {"schedule": "cosin"}},
     "train.schedule: expected one of 'cosine', 'linear', 'constant', got 'cosin'; "
     "did you mean 'cosine'?"),
    ({"finetune": {"lora": {"targets": ["q", "x"]}}},
     "finetune.lora.targets[1]: expected one of 'q', 'k', 'v', 'o', got 'x'"),
    ({"finetune": {"lora": {"targets": "q"}}}, "finetune.lora.targets: expected a list"),
    ({"train": {"betas": [0.9]}}, "train.betas: expected a list of 2 items"),
    ({"train": {"eval_at": [1, "x"]}}, "train.eval_at[1]: expected an integer, got 'x'"),
    ({"train": {"tags": ["a"]}}, "train.tags: expected a mapping"),
    ({"train": {"tags": {"team": 7}}}, "train.tags.team: expected a string, got 7"),
])
def test_config_loader_wrong_types_name_key_expectation_and_value(data, expected):
    assert error_of(data).startswith(expected)


@pytest.mark.parametrize("raw, expected", [
    (3, 3.0), ("3e-4", 3e-4), (" 0.5 ", 0.5), ("1_000", 1000.0),
])
def test_config_loader_coerces_numbers_for_float_fields(raw, expected):
    lr = build({"train": {"lr": raw}}).train.lr
    assert lr == expected and type(lr) is float


@pytest.mark.parametrize("raw, expected", [(7, 7), (2.0, 2), ("12", 12), ("1e3", 1000)])
def test_config_loader_coerces_whole_numbers_for_int_fields(raw, expected):
    seed = build({"seed": raw}).seed
    assert seed == expected and type(seed) is int


@pytest.mark.parametrize("raw, expected", [
    (True, True), ("true", True), ("Yes", True), ("on", True), (1, True),
    (False, False), ("false", False), ("no", False), ("OFF", False), (0, False),
])
def test_config_loader_coerces_boolean_words(raw, expected):
    assert build({"train": {"compile": raw}}).train.compile is expected


@pytest.mark.parametrize("raw", [None, "null", "None", "~"])
def test_config_loader_null_words_for_optional_fields(raw):
    assert build({"train": {"max_steps": raw}}).train.max_steps is None


def test_config_loader_optional_field_still_checks_the_inner_type():
    assert build({"train": {"max_steps": "50"}}).train.max_steps == 50
    message = error_of({"train": {"max_steps": "lots"}})
    assert message.startswith("train.max_steps: expected an integer")


def test_config_loader_tuples_come_back_as_tuples():
    train = build({"train": {"betas": [0.8, "0.99"], "eval_at": [10, 20]}}).train
    assert train.betas == (0.8, 0.99) and train.eval_at == (10, 20)


def test_config_loader_wraps_validate_errors_with_the_section_path():
    with pytest.raises(ConfigError, match=r"^train: lr must be positive; try 3e-4$"):
        build({"train": {"lr": -1}})


def test_config_loader_errors_are_value_errors():
    with pytest.raises(ValueError):
        build({"seed": "x"})


# --- to_dict -------------------------------------------------------------------------------


def test_config_loader_to_dict_gives_plain_data_that_round_trips():
    run = build({"train": {"eval_at": [5], "tags": {"a": "b"}}, "finetune": {"prompt": "hi"}})
    plain = to_dict(run)
    assert plain["train"]["betas"] == [0.9, 0.95]  # lists, not tuples, so YAML can write it
    assert plain["model"] == {"n_layer": 2, "preset": "gpt-tiny", "dropout": 0.0}
    assert from_dict(RunConfig, plain) == run


# --- parse_overrides and deep_merge ----------------------------------------------------------


def test_config_loader_overrides_accept_all_three_forms():
    args = ["--train.lr=3e-4", "--model.preset", "llama-tiny", "--train.compile"]
    assert parse_overrides(args) == {
        "train": {"lr": "3e-4", "compile": True},  # PyYAML reads 3e-4 as text; from_dict coerces
        "model": {"preset": "llama-tiny"},
    }


def test_config_loader_bare_flag_followed_by_another_flag_is_true():
    assert parse_overrides(["--train.compile", "--seed.x=1"]) == {
        "train": {"compile": True}, "seed": {"x": 1}}


def test_config_loader_override_values_are_yaml():
    overrides = parse_overrides(
        ["--finetune.lora.targets=[q, v]", "--train.max-steps=null", "--train.lr", "-0.5"])
    assert overrides == {
        "finetune": {"lora": {"targets": ["q", "v"]}},
        "train": {"max_steps": None, "lr": -0.5},
    }


def test_config_loader_overrides_feed_from_dict():
    args = ["--train.lr=3e-4", "--train.schedule=linear", "--model.n_layer", "7"]
    run = build(parse_overrides(args))
    assert (run.train.lr, run.train.schedule, run.model.n_layer) == (3e-4, "linear", 7)


@pytest.mark.parametrize("args, expected", [
    (["train.lr=1"], "train.lr=1: not an override; write overrides as --section.key=value"),
    (["--lr=1"], "--lr=1: the key needs a section and a name"),
    (["--train.=1"], "--train.=1: the key needs a section and a name"),
    (["--train.lr=[1"], "--train.lr=[1: the value '[1' is not valid YAML"),
    (["--train.lr=1", "--train.lr.x=2"], "--train.lr.x=2: 'lr' was already given a value"),
])
def test_config_loader_bad_overrides_explain_the_form(args, expected):
    with pytest.raises(ConfigError) as caught:
        parse_overrides(args)
    assert str(caught.value).startswith(expected)


def test_config_loader_deep_merge_override_wins_and_inputs_untouched():
    base = {"train": {"lr": 1, "tags": {"a": "1"}}, "seed": 1, "model": {"n_layer": 2}}
    override = {"train": {"lr": 2, "tags": {"b": "2"}}, "seed": 5, "extra": {"x": 1}}
    base_before, override_before = yaml.safe_dump(base), yaml.safe_dump(override)
    merged = deep_merge(base, override)
    assert merged == {
        "train": {"lr": 2, "tags": {"a": "1", "b": "2"}},
        "seed": 5, "model": {"n_layer": 2}, "extra": {"x": 1},
    }
    merged["model"]["n_layer"] = 99
    merged["extra"]["x"] = 99
    assert (yaml.safe_dump(base), yaml.safe_dump(override)) == (base_before, override_before)


def test_config_loader_deep_merge_non_mapping_replaces_section():
    assert deep_merge({"train": {"lr": 1}}, {"train": None}) == {"train": None}


# --- load_yaml -------------------------------------------------------------------------------


def test_config_loader_load_yaml_reads_mapping_and_empty_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: 3e-4\nmodel:\n")
    assert load_yaml(config) == {"train": {"lr": "3e-4"}, "model": None}
    config.write_text("# only a comment\n")
    assert load_yaml(config) == {}


def test_config_loader_load_yaml_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file"):
        load_yaml(missing)


def test_config_loader_load_yaml_rejects_non_mapping_top_level(tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be .* got a list"):
        load_yaml(config)


def test_config_loader_load_yaml_syntax_error_names_file_and_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  lr: 1\n  schedule: [cosine\nmodel:\n  n_layer: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml(config)
    assert str(caught.value).startswith(f"{config}:4: invalid YAML")


# --- to_commented_yaml -----------------------------------------------------------------------


def tricky_run() -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_layer=3, preset="1.0", dropout=1e-10),
        train=TrainConfig(lr=3e-4, max_steps=None, compile=True, betas=(0.5, 0.999),
                          eval_at=(1, 2), tags={"note": "yes", "empty": "", "hash": "a # b"}),
        finetune=FinetuneConfig(lora=LoraConfig(targets=["k"]), prompt="line one\nline 'two'"),
    )


@pytest.mark.parametrize("run", [RunConfig(model=ModelConfig(n_layer=1)), tricky_run()])
def test_config_loader_commented_yaml_round_trips(tmp_path, run):
    config = tmp_path / "run.yaml"
    config.write_text(to_commented_yaml(run, header="lmforge run\nedit me"))
    assert from_dict(RunConfig, load_yaml(config)) == run


def test_config_loader_commented_yaml_layout():
    text = to_commented_yaml(RunConfig(model=ModelConfig(n_layer=4)), header="my run")
    lines = text.splitlines()
    assert lines[:2] == ["# my run", ""]
    # A top-level scalar sits between sections, each separated by one blank line.
    assert "n_layer: 4        # number of transformer blocks" in text
    train_heading = "# How the optimizer walks: steps, batch, learning rate.\ntrain:\n"
    assert f"\n\nseed: 1337\n\n{train_heading}" in text
    literal_comment = "# LR schedule after warmup  (one of: cosine, linear, constant)"
    assert f"\n  schedule: cosine  {literal_comment}\n" in text
    # FinetuneConfig has no docstring of its own, so no invented comment above it.
    assert "\n\nfinetune:\n  # Low-rank adapters.\n  lora:\n    rank: 8\n" in text


def test_config_loader_commented_yaml_keeps_values_on_one_line_in_order():
    text = to_commented_yaml(tricky_run())
    assert "  tags: {note: 'yes', empty: '', hash: 'a # b'}\n" in text
    assert "  prompt: \"line one\\nline 'two'\"  # text shown before each example\n" in text


def test_config_loader_commented_yaml_aligns_comments_within_a_section():
    text = to_commented_yaml(RunConfig(model=ModelConfig(n_layer=4)))
    train_block = text.split("train:\n")[1].split("\n\n")[0]
    columns = {line.index("#") for line in train_block.splitlines() if "#" in line}
    assert len(columns) == 1
