"""LoRA adapters exported in PEFT format load with `peft` onto the exported base and give the same logits."""

import json

import pytest
import torch

from lmforge.adapt.lora import LoRAConfig, apply_lora
from lmforge.cli.export_cmd import export_hf, export_peft
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer.char import CharTokenizer
from lmforge.train.checkpoint import load_model_from_checkpoint, save_checkpoint
from lmforge.train.model_files import LoRAFiles
from tests.model.families import tiny_families

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CASES = {
    "gpt2 q,v,o,up,down": ("gpt2", ["q", "v", "o", "up", "down"]),
    "gpt2 q,k,v": ("gpt2", ["q", "k", "v"]),
    "llama every layer + lm_head": ("llama", ["q", "k", "v", "o", "gate", "up", "down", "lm_head"]),
}


def lora_checkpoint(tmp_path, family, targets):
    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz .,!?"])
    cfg = ModelConfig(**{**tiny_families()[family], "vocab_size": tokenizer.vocab_size, "block_size": 32})
    torch.manual_seed(0)
    base = save_checkpoint(tmp_path, "base", GPT(cfg), tokenizer, {})
    model = load_model_from_checkpoint(base)
    lora = LoRAConfig(r=4, alpha=8.0, dropout=0.0, targets=tuple(targets))
    apply_lora(model, lora.targets, r=lora.r, alpha=lora.alpha, dropout=lora.dropout)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    save_checkpoint(tmp_path, "adapted", model, tokenizer, {}, files=LoRAFiles(base, lora))
    return tmp_path / "adapted", model.eval()


@pytest.mark.parametrize("case", CASES)
def test_peft_loads_the_adapter_onto_the_exported_base(tmp_path, case):
    family, targets = CASES[case]
    ckpt, adapted = lora_checkpoint(tmp_path, family, targets)
    out = export_peft(ckpt, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] == (family == "gpt2")
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base")
    hf = peft.PeftModel.from_pretrained(base, out).eval()
    ids = torch.randint(0, adapted.config.vocab_size, (2, 12))
    with torch.no_grad():
        expected = adapted(ids)
        torch.testing.assert_close(hf(ids).logits, expected, rtol=1e-4, atol=1e-4)
        # Merged export: plain weights that transformers loads without peft.
        merged = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "merged")).eval()
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_peft_export_needs_a_lora_checkpoint(tmp_path):
    tokenizer = CharTokenizer.train(["abc"])
    cfg = ModelConfig(**{**tiny_families()["gpt2"], "vocab_size": tokenizer.vocab_size})
    plain = save_checkpoint(tmp_path, "plain", GPT(cfg), tokenizer, {})
    with pytest.raises(ValueError, match="not a LoRA checkpoint"):
        export_peft(plain, tmp_path / "out")
