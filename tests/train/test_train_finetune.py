"""Fine-tuning end to end on tiny models: every task and method through the one training loop."""

import json
import random

import pytest
import torch

from lmforge.adapt.lora import LoRALinear
from lmforge.config.run import load_run_config
from lmforge.data.sft import SFTBatches, tokenize_conversation
from lmforge.data.templates import CHATML, load_chat_template
from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.char import CharTokenizer
from lmforge.train.checkpoint import load_lora_checkpoint, load_model_from_checkpoint, save_checkpoint
from lmforge.train.finetune import run_finetuning
from lmforge.train.objectives import lm_loss_sum, packed_lm_loss_sum

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,:?!+=\n<>|_-'\"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def base(tmp_path, request):
    """A small pretrained-shape checkpoint (random weights) with a character tokenizer."""
    family = getattr(request, "param", "gpt2")
    tokenizer = CharTokenizer.train([ALPHABET])
    preset = "gpt2-tiny" if family == "gpt2" else "llama-tiny"
    torch.manual_seed(0)
    model = GPT(preset_config(preset, vocab_size=tokenizer.vocab_size, block_size=192, n_layer=2, n_embd=64))
    return save_checkpoint(tmp_path / "bases", family, model, tokenizer, {})


def addition_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"instruction": f"add {a}+{b}", "input": "", "output": f"{a + b}"})
    return rows


def finetune(tmp_path, base, task, data_path, method="full", **overrides):
    args = [f"--model.init_from={base}", f"--data.path={data_path}", f"--finetune.task={task}",
            f"--finetune.method={method}", f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=30",
            "--train.batch_size=8", "--train.eval_interval=10", "--train.eval_steps=4", "--train.warmup_steps=2",
            "--train.sample_interval=0", "--train.precision=fp32", "--train.device=cpu"]
    args += [f"--{key}={value}" for key, value in overrides.items()]
    cfg = load_run_config(None, args)
    return run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest)


def metrics(run_dir):
    return json.loads((run_dir / "training_metrics.json").read_text())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fine_tuning_needs_a_starting_checkpoint(tmp_path):
    cfg = load_run_config(None, ["--finetune.task=causal"])
    with pytest.raises(ValueError, match="model.init_from"):
        run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest)


def test_causal_full_fine_tuning_lowers_the_loss_and_keeps_the_tokenizer(tmp_path, base):
    text = tmp_path / "domain.txt"
    text.write_text("the cat sat on the mat. " * 400)
    result, _ = finetune(tmp_path, base, "causal", text, **{"train.lr": "3e-3"})
    m = metrics(result.run_dir)
    assert m["train_loss"][-1] < 0.5 * m["train_loss"][0]
    best = result.run_dir / "best"
    assert (best / "model.safetensors").is_file()
    assert load_tokenizer(best).encode("cat") == load_tokenizer(base).encode("cat")


def test_instruct_lora_saves_only_adapters_and_the_template(tmp_path, base):
    data = write_jsonl(tmp_path / "add.jsonl", addition_examples(200))
    result, setup = finetune(tmp_path, base, "instruct", data, "lora",
                             **{"finetune.lora.targets": "[q,k,v,o,up,down]", "train.lr": "1e-2"})
    m = metrics(result.run_dir)
    assert m["val_loss"][-1] < m["val_loss"][0]
    best = result.run_dir / "best"
    assert not (best / "model.safetensors").exists()
    adapter_bytes = (best / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.3 * (base / "model.safetensors").stat().st_size
    assert load_chat_template(best).name == "chatml"
    # Only adapters trained: every base weight equals the starting checkpoint's.
    start = load_model_from_checkpoint(base).state_dict()
    for name, p in setup.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), start[name.replace(".base.", ".")]), name


def test_a_lora_checkpoint_loads_merged_with_the_logits_of_the_adapted_model(tmp_path, base):
    data = write_jsonl(tmp_path / "add.jsonl", addition_examples(100))
    result, _ = finetune(tmp_path, base, "instruct", data, "lora", **{"train.max_steps": 10, "train.lr": "1e-2"})
    adapted = load_lora_checkpoint(result.run_dir / "last", merge=False).eval()
    merged = load_model_from_checkpoint(result.run_dir / "last").eval()
    assert any(isinstance(m, LoRALinear) for m in adapted.modules())
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    ids = torch.randint(0, merged.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted(ids), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(merged(ids), load_model_from_checkpoint(base).eval()(ids), atol=1e-4)


def test_a_lora_run_resumes_exactly(tmp_path, base):
    data = write_jsonl(tmp_path / "add.jsonl", addition_examples(100))
    common = {"train.max_steps": 20, "train.save_interval": 10, "train.log_interval": 1, "train.lr": "1e-2",
              "finetune.lora.dropout": 0.1}  # dropout: the RNG state must resume too
    straight, _ = finetune(tmp_path / "a", base, "instruct", data, "lora", **common)
    resumed, _ = finetune(tmp_path / "b", base, "instruct", data, "lora",
                          **common, **{"train.resume": straight.run_dir / "step-000010"})
    a, b = metrics(straight.run_dir), metrics(resumed.run_dir)
    assert b["steps"] == list(range(11, 21))
    assert b["train_loss"] == a["train_loss"][10:]


@pytest.mark.parametrize("base", ["llama"], indirect=True)
def test_qlora_trains_adapters_on_a_4bit_base(tmp_path, base):
    data = write_jsonl(tmp_path / "add.jsonl", addition_examples(200))
    result, setup = finetune(tmp_path, base, "instruct", data, "qlora",
                             **{"finetune.quant_backend": "torch", "finetune.lora.targets": "[all,lm_head]",
                                "train.lr": "1e-2", "train.max_steps": 60})
    m = metrics(result.run_dir)
    # The base is random, so its output layer must adapt too (lm_head): adapters on the blocks alone
    # cannot map features to this vocabulary and plateau near chance.
    assert m["train_loss"][-1] < 0.3 * m["train_loss"][0]
    assert json.loads((result.run_dir / "best" / "adapter_config.json").read_text())["quantized"] == "torch"
    quantized = [m for m in setup.model.modules() if type(m).__name__ == "NF4Linear"]
    assert len(quantized) == 2 * 7  # every linear layer of both blocks
    # Loading merges the adapters into the dequantized base: the logits of the model that was trained.
    merged = load_model_from_checkpoint(result.run_dir / "last").eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 16))
    with torch.no_grad():
        setup.model.eval()
        torch.testing.assert_close(merged(ids), setup.model(ids), rtol=1e-4, atol=1e-4)


def test_packed_rows_give_each_example_exactly_its_unpacked_loss(base):
    model = load_model_from_checkpoint(base).eval()
    tokenizer = load_tokenizer(base)
    examples = [tokenize_conversation([{"role": "user", "content": r["instruction"]},
                                       {"role": "assistant", "content": r["output"]}], tokenizer, CHATML, True, 193)
                for r in addition_examples(6)]
    packed = SFTBatches(examples, batch_size=6, pack=True, block_size=192, pad_id=tokenizer.eot_id)
    unpacked = SFTBatches(examples, batch_size=6, pad_id=tokenizer.eot_id)
    x, segments, y = next(packed.eval_batches())
    assert x.size(0) < len(examples)  # several examples share a row
    with torch.no_grad():
        packed_loss = packed_lm_loss_sum(model, x, segments, y)
        unpacked_loss = lm_loss_sum(model, *next(unpacked.eval_batches()))
    torch.testing.assert_close(packed_loss, unpacked_loss, rtol=1e-5, atol=1e-4)


def test_instruct_with_packing_trains(tmp_path, base):
    data = write_jsonl(tmp_path / "add.jsonl", addition_examples(200))
    result, setup = finetune(tmp_path, base, "instruct", data, **{"finetune.instruct.pack": "true",
                                                                  "train.lr": "3e-3"})
    x, segments, y = setup.train_batches.next_batch()
    assert segments.max() > 1
    m = metrics(result.run_dir)
    assert m["val_loss"][-1] < m["val_loss"][0]


def test_the_preflight_check_stops_a_broken_dataset(tmp_path, base):
    rows = [{"messages": [{"role": "user", "content": "add 1+1"}, {"role": "assistant", "content": "2"}]}] * 20
    rows[7] = {"messages": [{"role": "user", "content": "a question nobody answers"}]}  # nothing to learn
    data = write_jsonl(tmp_path / "broken.jsonl", rows)
    with pytest.raises(ValueError, match="7"):
        finetune(tmp_path, base, "instruct", data)
    assert not (tmp_path / "run" / "last").exists()  # stopped before training


def test_classification_learns_a_separable_task_and_reports_metrics(tmp_path, base, capsys):
    rng = random.Random(0)
    lines = ["label\ttext"]
    for _ in range(240):
        spam = rng.random() < 0.3
        words = rng.sample(["win", "cash", "prize", "free"] if spam else ["see", "you", "at", "home"], 3)
        lines.append(f"{'spam' if spam else 'ham'}\t{' '.join(words)} {rng.randrange(100)}")
    data = tmp_path / "sms.tsv"
    data.write_text("\n".join(lines) + "\n")
    result, setup = finetune(tmp_path, base, "classify", data, **{"finetune.classify.trainable": "all",
                                                                  "finetune.classify.balance": "weighted",
                                                                  "train.lr": "3e-3"})
    from lmforge.eval.classify import evaluate_classifier, load_classifier, predict

    model, tokenizer, classes = load_classifier(result.run_dir / "best")
    assert classes == ["ham", "spam"]
    report = evaluate_classifier(model, setup.val_batches, classes)
    assert report["accuracy"] >= 0.95 and report["per_class"]["spam"]["f1"] >= 0.9
    probs = predict(model, tokenizer, ["win cash prize 7", "see you at home 3"])
    assert probs[0][1] > 0.5 > probs[1][1]


def test_dropout_is_a_choice_of_the_fine_tuning_run(base):
    cfg = load_run_config(None, [f"--model.init_from={base}", "--model.dropout=0.1", "--model.n_layer=9"])
    assert cfg.model.dropout == 0.1
    assert cfg.model.n_layer == 2  # architecture comes from the checkpoint
    model = load_model_from_checkpoint(base)
    model.set_dropout(cfg.model.dropout)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and all(p == 0.1 for p in rates) and model.blocks[0].attn.dropout == 0.1


def test_causal_fine_tuning_scores_benchmarks_and_classify_refuses_them(tmp_path, base):
    text = tmp_path / "domain.txt"
    text.write_text("the cat sat on the mat. " * 400)
    steps = []
    args = [f"--model.init_from={base}", f"--data.path={text}", "--finetune.task=causal", "--train.max_steps=20",
            f"--train.out_dir={tmp_path / 'run'}", "--train.eval_interval=10", "--train.sample_interval=0",
            "--train.precision=fp32", "--train.device=cpu", "--train.batch_size=4"]
    cfg = load_run_config(None, args)
    rows = [{"task": "t", "metric": "acc", "value": 0.5, "stderr": 0.1, "chance": 0.25, "examples": 10}]
    run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest,
                   benchmark=lambda model, tokenizer: steps.append(model.training) or rows)
    assert steps == [False, False]  # steps 10 and 20, in eval mode
    assert [r["step"] for r in metrics(tmp_path / "run")["benchmarks"]] == [10, 20]
    cfg = load_run_config(None, [*args[:2], "--finetune.task=classify", *args[3:]])
    with pytest.raises(ValueError, match="eval_tasks"):
        run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest, benchmark=lambda m, t: rows)
