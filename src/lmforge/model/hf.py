"""Hugging Face checkpoints in and out: the same networks under other names.

A Hugging Face (HF) model folder, as `save_pretrained` writes it, holds:

    config.json               the architecture: "model_type" (gpt2, llama, qwen2, ...) and its sizes
    model.safetensors         the weights; big models split them into model-00001-of-0000N.safetensors
                              files listed by model.safetensors.index.json (older folders hold a
                              pickled pytorch_model.bin, or shards listed by pytorch_model.bin.index.json)
    generation_config.json    default generation settings (bos/eos token ids)
    tokenizer files           tokenizer.json + tokenizer_config.json (see tokenizer/hf.py)

GPT-2 (GPT2LMHeadModel), Llama (LlamaForCausalLM) and Qwen2 (Qwen2ForCausalLM) compute exactly what
lmforge's GPT computes for some ModelConfig, so importing one is bookkeeping, not conversion:

1. translate config.json's keys into a ModelConfig (`config_from_hf`; `hf_config_from` goes back),
2. rename every tensor with a declarative map per family (`FAMILIES`, `hf_target`),
3. undo two layout quirks of GPT-2: its linear layers are `Conv1D` modules that store the weight
   as (in, out), the transpose of nn.Linear's (out, in); and its `c_attn` layer packs the query,
   key and value projections into one matrix, stacked along the output dimension, which lmforge
   keeps as three separate layers q, k and v.

Nothing here needs `transformers`: the files are plain JSON and safetensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ROPE_SCALING_KEYS, ModelConfig, check_rope_scaling
from .gpt import GPT

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, PICKLE_FILE, PICKLE_INDEX)
"""Where the weights may be, most preferred first (safetensors cannot run code when loaded; pickles can)."""


@dataclass(frozen=True)
class Family:
    """How one HF architecture names and lays out lmforge's modules."""

    model_type: str
    architecture: str  # the class AutoModelForCausalLM builds from config.json's "architectures"
    modules: dict[str, str]  # lmforge module -> HF module; "{i}" stands for the block number
    fused: dict[str, int] = field(default_factory=dict)  # lmforge module -> its slice of a packed HF module
    conv1d: frozenset[str] = frozenset()  # lmforge modules whose HF weight is stored (in, out)
    buffers: tuple[str, ...] = ()  # endings of HF tensors that are derived buffers, not weights

    @property
    def base_prefix(self) -> str:
        """The prefix of the backbone inside the *ForCausalLM class ("transformer." or "model.")."""
        return self.modules["tok_emb"].split(".")[0] + "."


_LLAMA_MODULES = {
    "tok_emb": "model.embed_tokens",
    "blocks.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blocks.{i}.attn.q": "model.layers.{i}.self_attn.q_proj",
    "blocks.{i}.attn.k": "model.layers.{i}.self_attn.k_proj",
    "blocks.{i}.attn.v": "model.layers.{i}.self_attn.v_proj",
    "blocks.{i}.attn.o": "model.layers.{i}.self_attn.o_proj",
    "blocks.{i}.mlp_norm": "model.layers.{i}.post_attention_layernorm",
    "blocks.{i}.mlp.gate": "model.layers.{i}.mlp.gate_proj",
    "blocks.{i}.mlp.up": "model.layers.{i}.mlp.up_proj",
    "blocks.{i}.mlp.down": "model.layers.{i}.mlp.down_proj",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
}

GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    modules={
        "tok_emb": "transformer.wte",
        "pos_emb": "transformer.wpe",
        "blocks.{i}.attn_norm": "transformer.h.{i}.ln_1",
        "blocks.{i}.attn.q": "transformer.h.{i}.attn.c_attn",
        "blocks.{i}.attn.k": "transformer.h.{i}.attn.c_attn",
        "blocks.{i}.attn.v": "transformer.h.{i}.attn.c_attn",
        "blocks.{i}.attn.o": "transformer.h.{i}.attn.c_proj",
        "blocks.{i}.mlp_norm": "transformer.h.{i}.ln_2",
        "blocks.{i}.mlp.up": "transformer.h.{i}.mlp.c_fc",
        "blocks.{i}.mlp.down": "transformer.h.{i}.mlp.c_proj",
        "final_norm": "transformer.ln_f",
        "lm_head": "lm_head",
    },
    fused={"blocks.{i}.attn.q": 0, "blocks.{i}.attn.k": 1, "blocks.{i}.attn.v": 2},
    conv1d=frozenset({"blocks.{i}.attn.q", "blocks.{i}.attn.k", "blocks.{i}.attn.v", "blocks.{i}.attn.o",
                      "blocks.{i}.mlp.up", "blocks.{i}.mlp.down"}),
    # Older GPT-2 files store the causal mask ("attn.bias") and a fill value ("attn.masked_bias").
    buffers=("attn.bias", "attn.masked_bias"),
)
LLAMA = Family("llama", "LlamaForCausalLM", _LLAMA_MODULES, buffers=("rotary_emb.inv_freq",))
QWEN2 = Family("qwen2", "Qwen2ForCausalLM", _LLAMA_MODULES, buffers=("rotary_emb.inv_freq",))
FAMILIES: dict[str, Family] = {family.model_type: family for family in (GPT2, LLAMA, QWEN2)}


# --- names -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFTarget:
    """Where an lmforge parameter (or module) lives in an HF checkpoint.

    name: the HF parameter or module name.
    part: for GPT-2's packed c_attn, which of the 3 equal slices along the output dimension
          (q = 0, k = 1, v = 2) is this one; None when the HF tensor is this parameter alone.
    transposed: the HF layer is a Conv1D, whose weight is stored (in, out) rather than (out, in).
    """

    name: str
    part: int | None = None
    parts: int = 1
    transposed: bool = False


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def hf_target(name: str, family: str | Family) -> HFTarget:
    """The HF location of lmforge parameter `name` ("blocks.0.attn.q.weight") or module ("blocks.0.attn.q").

    A LoRA exporter uses this on the layers it wrapped: e.g. for llama "blocks.0.attn.q" is
    "model.layers.0.self_attn.q_proj"; for gpt2 it is a third of "transformer.h.0.attn.c_attn", a Conv1D.
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    block = _BLOCK.match(name)
    pattern = _BLOCK.sub("blocks.{i}.", name, count=1)  # "blocks.{i}.attn.q.weight"
    module, suffix = pattern, ""
    if module not in family.modules:  # a parameter: split off "weight" or "bias"
        module, _, suffix = pattern.rpartition(".")
    if module not in family.modules:
        raise KeyError(f"{name}: no counterpart in a {family.model_type} checkpoint")
    hf_name = family.modules[module].format(i=block.group(1) if block else "")
    part = family.fused.get(module)
    return HFTarget(name=f"{hf_name}.{suffix}" if suffix else hf_name, part=part,
                    parts=len(family.fused) if part is not None else 1,
                    transposed=module in family.conv1d and suffix != "bias")


def hf_name(name: str, family: str | Family) -> str:
    """The HF name of an lmforge parameter or module (GPT-2's q, k and v all answer c_attn)."""
    return hf_target(name, family).name


def _from_hf_layout(tensor: torch.Tensor, target: HFTarget) -> torch.Tensor:
    """An HF tensor in lmforge's layout: transposed to (out, in), then cut to this parameter's slice."""
    if target.transposed and tensor.ndim == 2:
        tensor = tensor.t()
    if target.part is not None:
        tensor = tensor.chunk(target.parts, dim=0)[target.part]
    return tensor


def _to_hf_layout(pieces: list[torch.Tensor], target: HFTarget) -> torch.Tensor:
    """lmforge tensors (one, or the q, k, v slices of a packed layer, in order) in HF's layout."""
    tensor = torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]
    if target.transposed and tensor.ndim == 2:
        tensor = tensor.t()
    return tensor.detach().contiguous()


# --- config.json -------------------------------------------------------------------------------


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of an HF config.json; a ValueError says what lmforge cannot express."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported: lmforge reads "
                         f"{', '.join(FAMILIES)} checkpoints")
    cfg = _gpt2_config(hf_config) if model_type == "gpt2" else _llama_config(hf_config)
    cfg.validate()
    return cfg


def _unsupported(hf_config: dict, key: str, why: str) -> ValueError:
    return ValueError(f"{hf_config['model_type']} config: {key}={hf_config.get(key)!r} is not supported ({why})")


def _gpt2_config(hf: dict) -> ModelConfig:
    # "gelu_new" and "gelu_pytorch_tanh" are both the tanh approximation lmforge's GELU uses.
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _unsupported(hf, "activation_function", "lmforge uses the tanh-approximate GELU")
    for key, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False)):
        if hf.get(key, expected) != expected:
            raise _unsupported(hf, key, f"only {expected} is")
    return ModelConfig(
        vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
        block_size=hf.get("n_positions", 1024), norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        pos="learned", mlp="gelu", mlp_hidden=hf.get("n_inner"), bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True))


def _llama_config(hf: dict) -> ModelConfig:
    """Llama and Qwen2 share one config layout; Qwen2 always has q/k/v biases and nothing else."""
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    if (hf.get("head_dim") or width // heads) * heads != width:
        raise _unsupported(hf, "head_dim", "lmforge needs head_dim = hidden_size / num_attention_heads")
    if hf.get("hidden_act", "silu") != "silu":
        raise _unsupported(hf, "hidden_act", "lmforge's SwiGLU uses silu")
    if hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or []):
        raise _unsupported(hf, "use_sliding_window", "lmforge attends to the whole context")
    theta, scaling = _rope_settings(hf)
    return ModelConfig(
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=heads,
        n_kv_head=hf.get("num_key_value_heads") or heads, n_embd=width,
        block_size=hf.get("max_position_embeddings", 2048), norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        pos="rope", rope_theta=theta, rope_scaling=scaling, mlp="swiglu", mlp_hidden=hf["intermediate_size"],
        **_llama_biases(hf), tie_embeddings=hf.get("tie_word_embeddings", False))


def _llama_biases(hf: dict) -> dict[str, bool | None]:
    if hf["model_type"] == "qwen2":
        return {"bias": False, "qkv_bias": True}
    attention, mlp = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention != mlp:  # lmforge's `bias` covers the output projection and the MLP together
        raise _unsupported(hf, "attention_bias", f"lmforge needs it equal to mlp_bias ({mlp})")
    return {"bias": attention, "qkv_bias": None}


def _rope_settings(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either layout: transformers 4's top-level rope_theta and
    rope_scaling, or transformers 5's rope_parameters, which holds both."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise _unsupported(hf, "partial_rotary_factor", "lmforge rotates whole heads")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "llama3":  # transformers' own default when the key is left out
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    scaling = {"rope_type": kind, **{k: params[k] for k in ROPE_SCALING_KEYS.get(kind, ()) if k in params}}
    try:
        check_rope_scaling(scaling)
    except ValueError as error:
        raise ValueError(f"{hf['model_type']} config: {error}") from None
    return theta, scaling


def family_of(cfg: ModelConfig) -> str:
    """The HF family that computes exactly what `cfg` describes; a ValueError names the field that rules all out."""
    if cfg.norm == "layernorm":
        _require(cfg, "gpt2", pos="learned", mlp="gelu", bias=True, has_qkv_bias=True, kv_heads=cfg.n_head)
        return "gpt2"
    _require(cfg, "llama or qwen2", pos="rope", mlp="swiglu")
    if cfg.bias and not cfg.has_qkv_bias:
        raise ValueError("qkv_bias: false with bias: true matches no Hugging Face family "
                         "(llama has biases on all attention projections or none)")
    return "qwen2" if cfg.has_qkv_bias and not cfg.bias else "llama"


def _require(cfg: ModelConfig, family: str, **needed) -> None:
    for key, value in needed.items():
        if getattr(cfg, key) != value:
            name = "n_kv_head" if key == "kv_heads" else "qkv_bias" if key == "has_qkv_bias" else key
            raise ValueError(f"{name}: {getattr(cfg, key)!r} matches no Hugging Face family "
                             f"(a norm: {cfg.norm} model exports as {family}, which needs {name}={value!r})")


def hf_config_from(cfg: ModelConfig, *, bos_token_id: int | None = None,
                   eos_token_id: int | list[int] | None = None, dtype: str = "float32") -> dict[str, Any]:
    """The HF config.json (a dict) of a model with architecture `cfg`."""
    family = FAMILIES[family_of(cfg)]
    body = _gpt2_keys(cfg) if family is GPT2 else _llama_keys(cfg, family)
    config = {"architectures": [family.architecture], "model_type": family.model_type,
              "vocab_size": cfg.vocab_size, **body, "tie_word_embeddings": cfg.tie_embeddings,
              # transformers 4 reads "torch_dtype", transformers 5 "dtype".
              "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
              # Written even when unknown (null): else transformers assumes its family's defaults,
              # e.g. GPT-2's 50256, which may not even be in this vocabulary.
              "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    return config


def _gpt2_keys(cfg: ModelConfig) -> dict[str, Any]:
    # n_inner null means 4 * n_embd, as lmforge's mlp_hidden null does for a GELU MLP.
    return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.block_size,
            "n_inner": cfg.mlp_hidden, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout}


def _llama_keys(cfg: ModelConfig, family: Family) -> dict[str, Any]:
    keys = {"num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads, "hidden_size": cfg.n_embd, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.hidden_dim, "max_position_embeddings": cfg.block_size,
            "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "attention_dropout": cfg.dropout,
            # The transformers 4 spelling; transformers 5 converts it to rope_parameters on load.
            "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        keys["rope_scaling"] = dict(cfg.rope_scaling)
    if family is QWEN2:
        keys["use_sliding_window"] = False
    else:
        keys.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    return keys


# --- reading -----------------------------------------------------------------------------------


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))


def is_hf_checkpoint(folder: str | Path) -> bool:
    """True for a folder with an HF config.json (it names a "model_type") and a weights file."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not any((folder / name).is_file() for name in WEIGHT_FILES):
        return False
    try:
        config = read_hf_config(folder)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "model_type" in config


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder, whole or sharded; safetensors preferred over pickles."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            files = _shard_files(folder, name) if name.endswith(".index.json") else [folder / name]
            weights: dict[str, torch.Tensor] = {}
            for file in files:
                weights.update(_read_weight_file(file))
            return weights
    raise ValueError(f"{folder}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")


def _shard_files(folder: Path, index_name: str) -> list[Path]:
    """The shard files an index lists (its weight_map maps each tensor to the file holding it).

    An index is untrusted input: a shard named "../../elsewhere" or "/abs/path" would load a file from
    outside the model folder, so every shard must be a plain file name inside it.
    """
    weight_map = json.loads((folder / index_name).read_text(encoding="utf-8"))["weight_map"]
    root = folder.resolve()
    files = []
    for shard in sorted(set(weight_map.values())):
        path = (folder / shard).resolve()
        if not isinstance(shard, str) or Path(shard).is_absolute() or path.parent != root:
            raise ValueError(f"{folder / index_name}: shard {shard!r} is not a file inside {folder}; "
                             "refusing to load weights from elsewhere")
        files.append(path)
    return files


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    # weights_only: unpickle tensors and plain containers only, never arbitrary objects (code).
    return torch.load(file, map_location="cpu", weights_only=True)


def _with_base_prefix(weights: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """Files saved from the bare backbone (like the original "gpt2" upload) lack "transformer."/"model."."""
    prefix = family.base_prefix
    if any(key.startswith(prefix) for key in weights):
        return weights
    return {key if key.startswith("lm_head.") else prefix + key: value for key, value in weights.items()}


# --- models ------------------------------------------------------------------------------------


def build_model(cfg: ModelConfig) -> GPT:
    """A freshly initialised GPT (its rotary tables honour cfg.rope_scaling)."""
    return GPT(cfg)


def load_hf_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """An lmforge GPT holding the weights of the HF model folder `folder` (strict: every tensor used once)."""
    folder = Path(folder)
    hf_config = read_hf_config(folder)
    cfg = config_from_hf(hf_config)
    family = FAMILIES[hf_config["model_type"]]
    model = build_model(cfg)
    weights = _with_base_prefix(read_hf_weights(folder), family)
    model.load_state_dict(_lmforge_state_dict(weights, model, family, folder))
    return model.to(dtype)


def _lmforge_state_dict(weights: dict[str, torch.Tensor], model: GPT, family: Family,
                        folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor `model` expects, taken from the HF `weights`; errors list what is missing or left over."""
    state, used, missing = {}, set(), []
    tied = model.config.tie_embeddings
    for name, expected in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # filled from the embedding below
        target = hf_target(name, family)
        if target.name not in weights:
            missing.append(target.name)
            continue
        state[name] = _checked_shape(_from_hf_layout(weights[target.name], target), expected, target.name, folder)
        used.add(target.name)
    if missing:
        raise ValueError(f"{folder}: the checkpoint lacks tensors this config needs: {', '.join(missing)}")
    if tied:
        state["lm_head.weight"] = state["tok_emb.weight"]
        used.add("lm_head.weight")  # some files store the tied head anyway
    leftover = sorted(key for key in weights if key not in used and not key.endswith(family.buffers))
    if leftover:
        raise ValueError(f"{folder}: tensors with no place in an lmforge {family.model_type} model: "
                         f"{', '.join(leftover)}")
    return state


def _checked_shape(tensor: torch.Tensor, expected: torch.Tensor, hf_key: str, folder: Path) -> torch.Tensor:
    if tensor.shape != expected.shape:
        raise ValueError(f"{folder}: {hf_key} has shape {tuple(tensor.shape)}, the config implies "
                         f"{tuple(expected.shape)}")
    return tensor


# --- writing -----------------------------------------------------------------------------------


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under HF names and layouts (a tied head is left out: HF re-ties it on load)."""
    family = FAMILIES[family_of(model.config)]
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
    targets: dict[str, HFTarget] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # safetensors refuses two names for one storage
        target = hf_target(name, family)
        targets[target.name] = target
        pieces.setdefault(target.name, []).append((target.part or 0, tensor))
    return {key: _to_hf_layout([t for _, t in sorted(parts, key=lambda p: p[0])], targets[key])
            for key, parts in pieces.items()}


def save_hf_model(model: GPT, out_dir: str | Path, *, bos_token_id: int | None = None,
                  eos_token_id: int | list[int] | None = None) -> Path:
    """Write config.json, generation_config.json and model.safetensors that transformers loads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config = hf_config_from(model.config, bos_token_id=bos_token_id, eos_token_id=eos_token_id, dtype=dtype)
    _write_json(out_dir / CONFIG_FILE, config)
    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id") if config[key] is not None}
    _write_json(out_dir / GENERATION_CONFIG_FILE, generation)
    # transformers checks this "format" entry before trusting a safetensors file.
    save_file(hf_state_dict(model), str(out_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
    return out_dir


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
