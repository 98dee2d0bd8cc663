"""The GGUF file as written (read back with the gguf package), the refusals, the RoPE reordering, the Modelfile.

What llama.cpp computes from these files is checked in test_gguf_llamacpp.py.
"""

import argparse

import numpy as np
import pytest
import torch

from lmforge.cli import export_cmd
from lmforge.data.templates import ALPACA, CHATML, PLAIN, ChatTemplate, save_chat_template
from lmforge.export.gguf_arch import gguf_arch_of, half_split_to_interleaved
from lmforge.export.gguf_quant import storage_type
from lmforge.export.gguf_tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT
from lmforge.export.gguf_writer import cached_gguf, write_gguf
from lmforge.export.modelfile import check_go_template, modelfile_text, parse_modelfile
from lmforge.model.config import ModelConfig
from lmforge.model.layers import apply_rope, rope_tables
from lmforge.tokenizer import CharTokenizer
from tests.export.gguf_models import (LLAMA_STYLE, QWEN2_STYLE, bpe_tokenizer, hf_split_tokenizer,
                                      lmforge_checkpoint)

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory, bpe):
    ckpt = lmforge_checkpoint(tmp_path_factory.mktemp("llama"), "llama", bpe)
    save_chat_template(ckpt, CHATML)
    return ckpt


def run_export(*argv) -> int:
    parser = argparse.ArgumentParser(prog="lmforge")
    export_cmd.register(parser.add_subparsers(dest="command", required=True))
    args, overrides = parser.parse_known_args(["export", *map(str, argv)])
    return args.func(args, overrides)


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, reader


def test_llama_file_metadata_and_tensors(llama_ckpt, bpe, tmp_path):
    out = tmp_path / "m.gguf"
    write_gguf(llama_ckpt, out, "q8_0")
    meta, reader = fields(out)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.context_length"] == 256 and meta["llama.rope.dimension_count"] == 16
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == bpe.vocab_size
    assert meta["tokenizer.ggml.eos_token_id"] == bpe.eot_id
    assert meta["tokenizer.ggml.token_type"][bpe.eot_id] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd


def test_gpt2_style_without_biases_gets_zero_biases_and_a_fused_qkv(bpe, tmp_path):
    ckpt = lmforge_checkpoint(tmp_path, "gpt2", bpe, bias=False)
    write_gguf(ckpt, tmp_path / "g.gguf", "f32")
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "g.gguf").tensors}
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [64, 3 * 64]  # GGUF lists (in, out)
    assert not np.any(tensors["blk.1.ffn_down.bias"].data) and not np.any(tensors["output_norm.bias"].data)


@pytest.mark.parametrize("arch, expected", [
    (dict(), "gpt2"), (LLAMA_STYLE, "llama"), (QWEN2_STYLE, "qwen2"), (dict(LLAMA_STYLE, bias=True), "llama")])
def test_architecture_choice(arch, expected):
    assert gguf_arch_of(ModelConfig(vocab_size=10, **arch)) == expected


@pytest.mark.parametrize("mixture", [dict(pos="rope"), dict(LLAMA_STYLE, norm="layernorm"), dict(LLAMA_STYLE, mlp="gelu")])
def test_mixtures_without_a_llama_cpp_architecture_are_refused(mixture):
    with pytest.raises(ValueError, match="llama.cpp has no architecture"):
        gguf_arch_of(ModelConfig(vocab_size=10, **mixture))


def test_char_tokenizer_is_refused_with_the_reason(tmp_path):
    ckpt = lmforge_checkpoint(tmp_path, "llama", CharTokenizer.train(["hello world"]))
    with pytest.raises(ValueError, match="character tokenizer cannot be exported"):
        write_gguf(ckpt, tmp_path / "c.gguf")
    assert not (tmp_path / "c.gguf").exists()


def test_interleaved_rope_on_reordered_rows_gives_the_same_attention_scores():
    """lmforge rotates (i, i + D/2); llama.cpp's llama graph rotates (2i, 2i+1) of the reordered rows."""
    torch.manual_seed(0)
    heads, dim, width, T = 2, 8, 16, 5
    w_q, w_k, x = torch.randn(heads * dim, width), torch.randn(heads * dim, width), torch.randn(T, width)
    cos, sin = rope_tables(dim, T, 10000.0)

    def scores(q, k):  # (T, H*D) -> (H, T, T)
        return torch.einsum("hid,hjd->hij", q.view(T, heads, dim).transpose(0, 1), k.view(T, heads, dim).transpose(0, 1))

    ours = scores(*(apply_rope((x @ w.T).view(1, T, heads, dim).transpose(1, 2), cos, sin).transpose(1, 2).reshape(T, -1)
                    for w in (w_q, w_k)))

    def interleaved_rope(v):  # llama.cpp's "normal" rope on (T, H, D)
        pairs = v.view(T, heads, dim // 2, 2)
        c, s = cos[:, None, : dim // 2], sin[:, None, : dim // 2]
        return torch.stack([pairs[..., 0] * c - pairs[..., 1] * s, pairs[..., 0] * s + pairs[..., 1] * c], -1).reshape(T, -1)

    theirs = scores(*(interleaved_rope((x @ half_split_to_interleaved(w, heads).T).view(T, heads, dim))
                      for w in (w_q, w_k)))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_quantization_keeps_small_tensors_and_odd_rows_precise():
    assert storage_type("blk.0.attn_norm.weight", (64,), "q4_0") == "f32"
    assert storage_type("blk.0.ffn_up.weight", (160, 64), "q4_0") == "q4_0"
    assert storage_type("token_embd.weight", (512, 64), "q4_0") == "q8_0"
    assert storage_type("blk.0.ffn_down.weight", (64, 100), "q8_0") == "f16"  # 100 is not a multiple of 32


def test_hf_pre_tokenizers_are_named_or_refused(tmp_path):
    from lmforge.export.gguf_tokenizer import pre_tokenizer_name
    import json

    assert pre_tokenizer_name(json.loads(hf_split_tokenizer(QWEN2_SPLIT, 300).to_str())) == "qwen2"
    assert pre_tokenizer_name(json.loads(hf_split_tokenizer(LLAMA3_SPLIT, 300, ignore_merges=True).to_str())) == "llama-bpe"
    with pytest.raises(ValueError, match="ignore_merges"):
        pre_tokenizer_name(json.loads(hf_split_tokenizer(LLAMA3_SPLIT, 300).to_str()))
    with pytest.raises(ValueError, match="knows no pre-tokenizer"):
        pre_tokenizer_name(json.loads(hf_split_tokenizer(r"\w+|\s+", 300).to_str()))


def test_cli_writes_the_file_and_a_modelfile_and_says_why_it_measured_nothing(llama_ckpt, tmp_path, capsys,
                                                                                   monkeypatch):
    from lmforge.export import llamacpp_eval

    # Without llama-cpp-python the export still works and says why the perplexity check was skipped.
    # (test_gguf_llamacpp.py checks the measured report.)
    monkeypatch.setattr(llamacpp_eval, "llamacpp_missing", lambda: "llama-cpp-python is not installed")
    out = tmp_path / "model-q4.gguf"
    assert run_export(llama_ckpt, "--format", "gguf", "--quant", "q4_0", "--out", out) == 0
    printed = capsys.readouterr().out
    assert f"exported {llama_ckpt} to {out} (q4_0" in printed
    assert "perplexity check skipped: llama-cpp-python is not installed" in printed
    commands = parse_modelfile((tmp_path / "model-q4.Modelfile").read_text())
    assert commands[0] == ("FROM", "./model-q4.gguf")
    with pytest.raises(ValueError, match="exists"):
        run_export(llama_ckpt, "--format", "gguf", "--out", out)


def test_cached_gguf_is_written_once_and_rewritten_when_the_checkpoint_changes(llama_ckpt, tmp_path):
    first = cached_gguf(llama_ckpt, "q8_0", cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    assert cached_gguf(llama_ckpt, "q8_0", cache_dir=tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert cached_gguf(llama_ckpt, "f16", cache_dir=tmp_path) != first
    weights = llama_ckpt / "model.safetensors"
    weights.touch()
    assert cached_gguf(llama_ckpt, "q8_0", cache_dir=tmp_path) != first


@pytest.mark.parametrize("template", [CHATML, PLAIN, ALPACA, ChatTemplate("odd", "{{ {Role} }} {content}\n", "A:",
                                                                               eot_after_answer=True)])
def test_modelfile_template_parses_and_carries_stops_and_defaults(template):
    text = modelfile_text("m.gguf", template, "<|endoftext|>", 256)
    commands = parse_modelfile(text)
    params = [value for name, value in commands if name == "PARAMETER"]
    assert "num_ctx 256" in params and "temperature 0.8" in params
    stops = [value.removeprefix("stop ").strip('"') for value in params if value.startswith("stop ")]
    assert set(stops) == {*template.stop, "<|endoftext|>"}
    go = dict(commands)["TEMPLATE"]
    check_go_template(go)
    assert go.endswith(template.generation_prompt)
    if template.default_system:
        assert dict(commands)["SYSTEM"].strip('"') == template.default_system


def test_go_template_renders_like_lmforge():
    """A tiny interpreter of the Go template subset used, run on a conversation, gives lmforge's prompt."""
    from lmforge.data.templates import render

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{x}}"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    for template in (CHATML, PLAIN, ALPACA):
        go = dict(parse_modelfile(modelfile_text("m.gguf", template, "<|endoftext|>", 64)))["TEMPLATE"]
        assert render_go(go, messages) == render(messages, template)


def render_go(source: str, messages: list[dict]) -> str:
    """Render the generated TEMPLATE: {{ range .Messages }} with if/else-if on .Role, .Content, "literals"."""
    import re

    tokens = re.split(r"(\{\{.*?\}\})", source, flags=re.S)
    head, rest = source.split("{{ range .Messages }}", 1)
    body, tail = rest.rsplit("{{ end }}", 1)
    branches = re.split(r"\{\{ (?:if|else if) eq \.Role (\"\w+\") \}\}|\{\{ else \}\}", body.rsplit("{{ end }}", 1)[0])
    by_role = {json_str[1:-1]: text for json_str, text in zip(branches[1::2], branches[2::2]) if json_str}
    out = head
    for message in messages:
        text = by_role[message["role"]]
        text = text.replace("{{ .Content }}", "\x00").replace('{{ "{{" }}', "{{").replace("\x00", message["content"])
        out += text
    assert tokens  # the split above saw the actions
    return out + tail
