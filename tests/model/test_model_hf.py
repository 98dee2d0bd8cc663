"""Hugging Face checkpoints in and out: tiny random HF models must give the same logits in lmforge, and back."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.hf import (
    config_from_hf,
    family_of,
    hf_config_from,
    hf_name,
    hf_target,
    is_hf_checkpoint,
    load_hf_model,
    read_hf_weights,
    save_hf_model,
)

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, CONTEXT = 96, 64, 32
LLAMA_SHAPE = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                   bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)


def rope_kwargs(theta: float, scaling: dict | None = None) -> dict:
    """RoPE settings in whichever spelling the installed transformers takes (5: rope_parameters)."""
    if "rope_parameters" in transformers.LlamaConfig().to_dict():
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **(scaling or {})}}
    return {"rope_theta": theta, "rope_scaling": scaling}


def hf_model(family: str, tied: bool = True, **extra):
    """A tiny HF model with weights large enough that any mistake shows in the logits."""
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH, n_layer=2, n_head=4,
                                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied, **extra)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config_class = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
        settings = {**LLAMA_SHAPE, **rope_kwargs(500.0), "tie_word_embeddings": tied, **extra}
        model_class = transformers.LlamaForCausalLM if family == "llama" else transformers.Qwen2ForCausalLM
        model = model_class(config_class(**settings))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def random_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(lmforge_model: GPT, hf, ids: torch.Tensor) -> None:
    with torch.no_grad():
        ours = lmforge_model.eval()(ids)
        theirs = hf.eval()(ids).logits
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0.5  # the comparison below means something only with sizeable logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_imported_model_gives_the_logits_of_transformers(tmp_path, family, tied):
    hf = hf_model(family, tied)
    hf.save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    assert model.config.tie_embeddings is tied
    assert (model.lm_head.weight is model.tok_emb.weight) is tied
    assert_same_logits(model, hf, random_ids())


def test_import_reads_architecture_from_config(tmp_path):
    hf_model("qwen2").save_pretrained(tmp_path)
    cfg = load_hf_model(tmp_path).config
    assert (cfg.n_head, cfg.n_kv_head, cfg.n_embd, cfg.mlp_hidden) == (4, 2, WIDTH, 96)
    assert (cfg.bias, cfg.qkv_bias, cfg.rope_theta, cfg.norm_eps) == (False, True, 500.0, 1e-5)


def test_llama_with_biases_everywhere_imports(tmp_path):
    hf = hf_model("llama", attention_bias=True, mlp_bias=True)
    hf.save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    assert model.config.bias and model.blocks[0].mlp.down.bias is not None
    assert_same_logits(model, hf, random_ids())


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    # A small original context makes the stretch reach the positions this short input uses.
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8},
], ids=["linear", "llama3"])
def test_scaled_rope_matches_transformers(tmp_path, scaling):
    hf = hf_model("llama", **rope_kwargs(500.0, scaling))
    hf.save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    assert model.config.rope_scaling["rope_type"] == scaling["rope_type"]
    assert_same_logits(model, hf, random_ids())


def test_unsupported_rope_scaling_names_it(tmp_path):
    hf = hf_model("llama")
    config = hf.config.to_dict()
    config.pop("rope_parameters", None)
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        config_from_hf(config)


def test_sharded_safetensors_load(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_same_logits(load_hf_model(tmp_path), hf, random_ids())


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors",
                                   "sub/../../outside.safetensors"])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(tmp_path, shard):
    folder = tmp_path / "model"
    hf = hf_model("llama")
    hf.save_pretrained(folder, max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((folder / index["weight_map"][first]).read_bytes())  # a real file there, to be sure
    index["weight_map"][first] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="is not a file inside .*refusing to load weights from elsewhere"):
        load_hf_model(folder)


def write_pickled_checkpoint(hf, folder, shards: int = 1) -> None:
    """The layout transformers 4 wrote with safe_serialization=False (pickled torch files)."""
    hf.config.save_pretrained(folder)
    state = {key: value.clone() for key, value in hf.state_dict().items()}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    keys = sorted(state)
    weight_map = {}
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = keys[n::shards]
        torch.save({key: state[key] for key in part}, folder / name)
        weight_map.update({key: name for key in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 2])
def test_pytorch_bin_loads(tmp_path, shards):
    hf = hf_model("gpt2")
    write_pickled_checkpoint(hf, tmp_path, shards)
    assert is_hf_checkpoint(tmp_path)
    assert_same_logits(load_hf_model(tmp_path), hf, random_ids())


def test_original_gpt2_layout_without_prefix_and_with_mask_buffers(tmp_path):
    """The first GPT-2 uploads saved the bare backbone ("h.0...") plus causal-mask buffers."""
    hf = hf_model("gpt2")
    hf.config.save_pretrained(tmp_path)
    state = {key.removeprefix("transformer."): value.clone() for key, value in hf.state_dict().items()
             if key != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.tril(torch.ones(CONTEXT, CONTEXT)).view(1, 1, CONTEXT, CONTEXT)
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert_same_logits(load_hf_model(tmp_path), hf, random_ids())


def test_leftover_and_missing_tensors_are_listed(tmp_path):
    hf = hf_model("llama")
    hf.config.save_pretrained(tmp_path)
    state = {key: value.clone() for key, value in hf.state_dict().items()}
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no place .*model.layers.0.self_attn.q_norm.weight"):
        load_hf_model(tmp_path)
    del state["model.layers.0.self_attn.q_norm.weight"], state["model.norm.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lacks .*model.norm.weight"):
        load_hf_model(tmp_path)


def test_unsupported_model_type_is_named():
    with pytest.raises(ValueError, match="model_type 'gpt_neox' is not supported.*gpt2, llama, qwen2"):
        config_from_hf({"model_type": "gpt_neox", "vocab_size": 10})


def test_unsupported_activation_is_named():
    config = hf_model("gpt2").config.to_dict() | {"activation_function": "relu"}
    with pytest.raises(ValueError, match="activation_function='relu'"):
        config_from_hf(config)


def test_load_in_another_dtype(tmp_path):
    hf_model("qwen2").save_pretrained(tmp_path)
    model = load_hf_model(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_is_hf_checkpoint_tells_hf_from_lmforge_folders(tmp_path):
    hf_model("gpt2").save_pretrained(tmp_path / "hf")
    assert is_hf_checkpoint(tmp_path / "hf")
    lmforge = tmp_path / "lmforge"
    lmforge.mkdir()
    (lmforge / "config.json").write_text(json.dumps({"n_layer": 2}))
    (lmforge / "model.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    assert not is_hf_checkpoint(lmforge)
    assert not is_hf_checkpoint(tmp_path / "missing")


# --- export ------------------------------------------------------------------------------------

TINY = dict(vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=WIDTH, block_size=CONTEXT)
LLAMA_STYLE = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, n_kv_head=2, rope_theta=500.0)
EXPORTABLE = {
    "gpt2": dict(TINY),
    "gpt2-untied": dict(TINY, tie_embeddings=False),
    "llama": dict(TINY, **LLAMA_STYLE, tie_embeddings=False),
    "llama-tied": dict(TINY, **LLAMA_STYLE),
    "qwen2": dict(TINY, **LLAMA_STYLE, qkv_bias=True, tie_embeddings=False),
    "llama-scaled": dict(TINY, **LLAMA_STYLE, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
}


def random_lmforge_model(kwargs: dict) -> GPT:
    from lmforge.model.hf import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**kwargs))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", sorted(EXPORTABLE))
def test_exported_model_loads_in_transformers_with_the_same_logits(tmp_path, name):
    model = random_lmforge_model(EXPORTABLE[name])
    save_hf_model(model, tmp_path, bos_token_id=1, eos_token_id=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(hf).__name__ == hf_config_from(model.config)["architectures"][0]
    assert hf.config.eos_token_id == 2
    assert_same_logits(model, hf, random_ids())


def test_export_writes_a_tied_head_once_and_round_trips(tmp_path):
    model = random_lmforge_model(EXPORTABLE["gpt2"])
    save_hf_model(model, tmp_path)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    back = load_hf_model(tmp_path)
    assert same_architecture(back.config, model.config)
    assert_same_logits(back, model_as_hf_stub(model), random_ids())


def model_as_hf_stub(model: GPT):
    """Wrap an lmforge model so assert_same_logits can call it like an HF model."""

    class Output:
        def __init__(self, logits):
            self.logits = logits

    class Stub(torch.nn.Module):
        def forward(self, ids):
            return Output(model(ids))

    return Stub()


def same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    """Equal configs, once a default MLP width (null) is spelt out as the number it stands for."""
    return replace(a, mlp_hidden=a.hidden_dim) == replace(b, mlp_hidden=b.hidden_dim)


@pytest.mark.parametrize("name", sorted(EXPORTABLE))
def test_config_round_trips_through_hf(name):
    cfg = ModelConfig(**EXPORTABLE[name])
    assert same_architecture(config_from_hf(hf_config_from(cfg)), cfg)


@pytest.mark.parametrize("change, field", [
    (dict(pos="rope"), "pos"),
    (dict(n_kv_head=2), "n_kv_head"),
    (dict(bias=False), "bias"),
])
def test_gpt2_shaped_models_no_family_matches_name_the_field(change, field):
    with pytest.raises(ValueError, match=f"^{field}: .*matches no Hugging Face family"):
        family_of(ModelConfig(**dict(TINY, **change)))


def test_llama_shaped_model_with_bias_but_no_qkv_bias_matches_no_family():
    with pytest.raises(ValueError, match="^qkv_bias"):
        family_of(ModelConfig(**{**TINY, **LLAMA_STYLE, "bias": True, "qkv_bias": False}))
    assert family_of(ModelConfig(**{**TINY, **LLAMA_STYLE, "bias": True})) == "llama"


# --- names -------------------------------------------------------------------------------------


def test_hf_names_of_parameters_and_modules():
    assert hf_name("blocks.1.attn.o.weight", "llama") == "model.layers.1.self_attn.o_proj.weight"
    assert hf_name("blocks.0.mlp.gate", "qwen2") == "model.layers.0.mlp.gate_proj"
    assert hf_name("tok_emb.weight", "gpt2") == "transformer.wte.weight"
    key = hf_target("blocks.1.attn.k.weight", "gpt2")
    assert (key.name, key.part, key.parts, key.transposed) == ("transformer.h.1.attn.c_attn.weight", 1, 3, True)
    bias = hf_target("blocks.1.attn.v.bias", "gpt2")
    assert (bias.part, bias.transposed) == (2, False)
    assert hf_target("blocks.0.mlp.down", "gpt2").transposed
    assert not hf_target("blocks.0.mlp.down", "llama").transposed
    with pytest.raises(KeyError, match="pos_emb.weight"):
        hf_name("pos_emb.weight", "llama")


def test_every_parameter_has_a_name_in_its_family():
    for name, kwargs in EXPORTABLE.items():
        model = GPT(ModelConfig(**kwargs))
        family = family_of(model.config)
        names = {hf_name(param, family) for param in model.state_dict()}
        # GPT-2 packs the q, k, v weights (and biases) of a block into one c_attn weight (and bias).
        packed = 4 * model.config.n_layer if family == "gpt2" else 0
        assert len(names) == len(model.state_dict()) - packed, name


def test_read_hf_weights_prefers_safetensors(tmp_path):
    hf = hf_model("gpt2")
    hf.save_pretrained(tmp_path)
    torch.save({"junk": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    assert "junk" not in read_hf_weights(tmp_path)


def test_rope_scaling_in_a_config_is_checked():
    with pytest.raises(ValueError, match="rope_type 'linear' needs numbers for factor"):
        ModelConfig(**TINY, **LLAMA_STYLE, rope_scaling={"rope_type": "linear"}).validate()
    with pytest.raises(ValueError, match="rope_type 'dynamic' is not supported"):
        ModelConfig(**TINY, **LLAMA_STYLE, rope_scaling={"rope_type": "dynamic", "factor": 2.0}).validate()
