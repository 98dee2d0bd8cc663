"""`lmforge export CKPT --format hf --out DIR`, and HF folders used where a checkpoint is expected."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lmforge.cli import export_cmd
from lmforge.config.run import load_run_config, render_config
from lmforge.data.templates import ALPACA, CHATML, PLAIN, load_chat_template, render, save_chat_template
from lmforge.generate.chat import chat_prompt_ids
from lmforge.generate.engine import Engine
from lmforge.generate.params import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.hf import config_from_hf, read_hf_config
from lmforge.tokenizer import CharTokenizer, load_tokenizer, train_bpe
from lmforge.train.checkpoint import load_model_from_checkpoint, read_model_config, save_checkpoint
from lmforge.train.pretrain import build_model

transformers = pytest.importorskip("transformers")

TEXT = "Hello, world! The quick brown fox jumps over the lazy dog."
LLAMA_STYLE = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, n_kv_head=2)


def make_checkpoint(run_dir, tokenizer, **arch) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=32, block_size=64, **arch)
    model = GPT(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return save_checkpoint(run_dir, "best", model, tokenizer, meta={"step": 1})


def run_export(*argv: str) -> int:
    """Parse and run `lmforge export ...` as cli/main.py does once it registers the verb."""
    parser = argparse.ArgumentParser(prog="lmforge")
    export_cmd.register(parser.add_subparsers(dest="command", required=True))
    args, overrides = parser.parse_known_args(["export", *map(str, argv)])
    return args.func(args, overrides)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory):
    tokenizer = CharTokenizer.train([TEXT])
    ckpt = make_checkpoint(tmp_path_factory.mktemp("run"), tokenizer, **LLAMA_STYLE)
    save_chat_template(ckpt, PLAIN)
    return ckpt


def test_export_of_an_lmforge_checkpoint_loads_in_transformers(char_checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    assert run_export(char_checkpoint, "--format", "hf", "--out", out) == 0
    assert "exported" in capsys.readouterr().out
    ours, tokenizer = load_model_from_checkpoint(char_checkpoint), load_tokenizer(char_checkpoint)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer.encode(TEXT)
    assert hf_tokenizer(TEXT)["input_ids"] == ids
    assert hf_model.config.eos_token_id == tokenizer.eot_id == hf_tokenizer.eos_token_id
    batch = torch.tensor([ids])
    torch.testing.assert_close(logits(hf_model, batch), logits(ours, batch), atol=1e-4, rtol=1e-4)
    assert load_chat_template(out) == PLAIN


def test_lmforge_generates_from_an_exported_hf_folder_like_transformers(char_checkpoint, tmp_path):
    out = tmp_path / "hf"
    run_export(char_checkpoint, "--out", out)
    engine = Engine(load_model_from_checkpoint(out), load_tokenizer(out))  # what `lmforge generate DIR` does
    completion = engine.generate(["Hello"], SamplingParams(max_new_tokens=8, temperature=0))[0]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([load_tokenizer(out).encode("Hello")])
    hf_ids = hf_model.generate(prompt, max_new_tokens=8, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert completion.token_ids and hf_ids[: len(completion.token_ids)] == completion.token_ids


def test_export_in_bfloat16_of_a_gpt2_shaped_checkpoint(tmp_path):
    tokenizer = train_bpe([TEXT] * 10, 300)
    ckpt = make_checkpoint(tmp_path / "run", tokenizer)
    run_export(ckpt, "--out", tmp_path / "hf", "--dtype", "bfloat16")
    config = read_hf_config(tmp_path / "hf")
    assert (config["model_type"], config["torch_dtype"]) == ("gpt2", "bfloat16")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    batch = torch.tensor([tokenizer.encode(TEXT)])
    # bfloat16 keeps about 3 significant digits
    torch.testing.assert_close(logits(hf_model, batch), logits(load_model_from_checkpoint(ckpt), batch),
                               atol=0.1, rtol=0.05)


def test_export_of_an_hf_folder_copies_its_tokenizer_files(char_checkpoint, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run_export(char_checkpoint, "--out", first)
    (first / "tokenizer_config.json").write_text(json.dumps(
        {**json.loads((first / "tokenizer_config.json").read_text()), "marker": "kept"}))
    run_export(first, "--out", second)
    assert json.loads((second / "tokenizer_config.json").read_text())["marker"] == "kept"
    batch = torch.tensor([load_tokenizer(second).encode(TEXT)])
    torch.testing.assert_close(logits(load_model_from_checkpoint(second), batch),
                               logits(load_model_from_checkpoint(char_checkpoint), batch))


def test_export_refuses_a_folder_with_files_unless_forced(char_checkpoint, tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        run_export(char_checkpoint, "--out", tmp_path)
    assert run_export(char_checkpoint, "--out", tmp_path, "--force") == 0
    assert (tmp_path / "model.safetensors").is_file()


def test_export_of_an_architecture_no_hf_family_has_writes_nothing(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run", CharTokenizer.train([TEXT]), pos="rope")  # GPT-2 with RoPE
    with pytest.raises(ValueError, match="^pos: 'rope' matches no Hugging Face family"):
        run_export(ckpt, "--out", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_hf_folder_as_init_from_and_as_checkpoint(char_checkpoint, tmp_path):
    hf_dir = tmp_path / "hf"
    run_export(char_checkpoint, "--out", hf_dir)
    cfg = load_run_config(overrides=[f"--model.init_from={hf_dir}"]).model
    expected = config_from_hf(read_hf_config(hf_dir))
    assert (cfg.n_kv_head, cfg.norm, cfg.mlp_hidden, cfg.init_from) == (2, "rmsnorm", expected.mlp_hidden, str(hf_dir))
    assert read_model_config(hf_dir) == expected
    model = build_model(cfg, vocab_size=load_tokenizer(hf_dir).vocab_size)  # what training starts from
    batch = torch.tensor([load_tokenizer(hf_dir).encode(TEXT)])
    torch.testing.assert_close(logits(model, batch), logits(load_model_from_checkpoint(char_checkpoint), batch))


def test_unsupported_hf_folder_as_init_from_is_a_config_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(ValueError, match="model.init_from: .*model_type 'bert' is not supported"):
        load_run_config(overrides=[f"--model.init_from={tmp_path}"])


def test_scaled_rope_survives_an_lmforge_checkpoint_and_the_run_config(tmp_path):
    """An imported Llama-3-style model keeps its RoPE scaling when saved by lmforge and read back."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         rope_scaling=dict(scaling))  # transformers edits it
    hf_model = transformers.LlamaForCausalLM(hf_config)
    with torch.no_grad():
        for param in hf_model.parameters():
            param.normal_(0.0, 0.3)
    hf_model.save_pretrained(tmp_path / "hf")
    imported = load_model_from_checkpoint(tmp_path / "hf")
    saved = save_checkpoint(tmp_path / "run", "best", imported, CharTokenizer.train([TEXT]), meta={})
    batch = torch.randint(0, 40, (1, 40), generator=torch.Generator().manual_seed(0))
    expected = logits(hf_model, batch)
    torch.testing.assert_close(logits(load_model_from_checkpoint(saved), batch), expected, atol=1e-4, rtol=1e-4)
    cfg = load_run_config(overrides=[f"--model.init_from={tmp_path / 'hf'}"])
    assert cfg.model.rope_scaling == scaling
    assert "rope_scaling: {rope_type: llama3, factor: 8.0" in render_config(cfg)


@pytest.mark.parametrize("template", [PLAIN, replace(CHATML, eot_after_answer=True),
                                      replace(ALPACA, eot_after_answer=True)])
def test_exported_chat_template_works_with_apply_chat_template(template, tmp_path):
    tokenizer = CharTokenizer.train([TEXT + "<|im_start|>|im_end|>#ABCDEFGHIJKLMNOPQRSTUVWXYZ:\n"])
    ckpt = make_checkpoint(tmp_path / "run", tokenizer)
    save_chat_template(ckpt, template)
    out = tmp_path / "hf"
    run_export(ckpt, "--out", out)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, fox!"},
                    {"role": "assistant", "content": "The dog."}, {"role": "user", "content": "Who?"}]
    for messages in (conversation, conversation[1:]):
        text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        eot = hf_tokenizer.eos_token
        expected = render(messages, template)
        if template.eot_after_answer:  # the end-of-text token right after the answer, as in training
            answer_end = expected.index("The dog.") + len("The dog.") + len(template.message_format("assistant")
                                                                             .split("{content}")[1])
            expected = expected[:answer_end] + eot + expected[answer_end:]
        assert text == expected
        # Encoded by transformers, the prompt is what lmforge's chat and serve feed the model.
        ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert list(ids) == chat_prompt_ids(messages, template, tokenizer)
