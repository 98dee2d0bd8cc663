"""`lmforge finetune`, `classify`, `prepare --sft --inspect` and `export --format peft` run as a user would."""

import json
import subprocess
import sys

import pytest
import torch

from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer
from lmforge.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow
LMFORGE = [sys.executable, "-m", "lmforge"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,:?!+=\n<>|_-'\"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train([ALPHABET])
    model = GPT(preset_config("gpt2-tiny", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, block_size=128))
    return save_checkpoint(tmp_path_factory.mktemp("base"), "base", model, tokenizer, meta={})


def lmforge(*args, expect=0):
    proc = subprocess.run([*LMFORGE, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, f"lmforge {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_inspect_marks_the_trained_tokens_and_rejects_a_broken_file(tmp_path, base):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "add 2+2", "input": "", "output": "4"}] * 3))
    out = lmforge("prepare", data, "--sft", "--inspect", "--tokenizer", base, "--max-length", 129)
    assert "[[4<|im_end|>\n" in out and "3 examples" in out
    assert "add 2+2" in out.split("[[")[0]  # the prompt is shown unmarked
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"messages": [{"role": "user", "content": "hello?"}]}) + "\n")
    out = lmforge("inspect-sft", broken, "--tokenizer", base, expect=2)
    assert "error" in out and "supervised" in out


def test_sft_lora_then_peft_export(tmp_path, base):
    data = tmp_path / "add.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"add {a}+{b}", "completion": str(a + b)}) + "\n"
                            for a in range(10) for b in range(10)))
    run = tmp_path / "run"
    out = lmforge("finetune", "sft-lora", f"--model.init_from={base}", f"--data.path={data}",
                  f"--train.out_dir={run}", "--train.max_steps=6", "--train.eval_interval=3",
                  "--finetune.lora.targets=[q,v]")
    assert "trainable" in out and "stopped: max_steps reached after 6 steps" in out
    assert (run / "best" / "adapter_model.safetensors").is_file()
    out = lmforge("generate", run / "best", "--prompt", "add", "--max-new-tokens", 4, "--temperature", 0)
    assert out.startswith("add")
    lmforge("export", run / "best", "--format", "peft", "--out", tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]


def test_classify_finetune_and_predict(tmp_path, base):
    data = tmp_path / "labels.csv"
    rows = ["text,label"] + [f"win cash now {i},spam" for i in range(30)] + [f"see you at {i},ham" for i in range(60)]
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    out = lmforge("finetune", "classify-spam", f"--model.init_from={base}", f"--data.path={data}",
                  f"--train.out_dir={run}", "--train.max_steps=40", "--train.eval_interval=20",
                  "--finetune.classify.trainable=all", "--train.lr=3e-3")
    assert "confusion" in out and (run / "classification_report.json").is_file()
    report = json.loads((run / "classification_report.json").read_text())
    assert report["accuracy"] > 0.9
    predictions = [json.loads(line) for line in
                   lmforge("classify", run / "best", "--text", "win cash now 99", "--text", "see you at 7",
                           "--json").splitlines() if line.startswith("{")]
    assert [p["label"] for p in predictions] == ["spam", "ham"]
