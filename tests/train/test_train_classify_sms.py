"""Classification fine-tuning on real data: SMS spam, from a small model trained in the test."""

import torch

from lmforge.config.run import load_run_config
from lmforge.data.classify import load_labelled
from lmforge.eval.classify import evaluate_classifier
from lmforge.model.config import preset_config
from lmforge.model.gpt import GPT
from lmforge.tokenizer.factory import build_tokenizer
from lmforge.train.checkpoint import save_checkpoint
from lmforge.train.finetune import run_finetuning
from tests.testdata import SMS_SPAM



def test_sms_spam_reaches_95_percent_accuracy(tmp_path):
    torch.set_num_threads(2)
    texts, labels, _ = load_labelled(SMS_SPAM)
    subset = tmp_path / "sms.tsv"  # every 3rd message: 1,858 texts, the same 13% spam
    subset.write_text("".join(f"{labels[i]}\t{texts[i]}\n" for i in range(0, len(texts), 3)))
    tokenizer = build_tokenizer("bpe", texts=lambda: texts[1::3], vocab_size=512)
    torch.manual_seed(0)
    model = GPT(preset_config("gpt2-tiny", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, block_size=64))
    base = save_checkpoint(tmp_path, "base", model, tokenizer, {})  # no pretraining: the data must suffice
    args = [f"--model.init_from={base}", f"--data.path={subset}", "--finetune.task=classify",
            "--finetune.classify.trainable=all", "--finetune.classify.balance=weighted",
            f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=150", "--train.batch_size=32",
            "--train.lr=3e-3", "--train.warmup_steps=10", "--train.eval_interval=50", "--train.precision=fp32"]
    cfg = load_run_config(None, args)
    _, setup = run_finetuning(cfg.model, cfg.data, cfg.train, cfg.finetune, cfg.ingest)
    report = evaluate_classifier(setup.model, setup.val_batches, ["ham", "spam"])
    print(f"accuracy {report['accuracy']:.3f}, spam F1 {report['per_class']['spam']['f1']:.3f}")
    assert report["total"] == 279  # 15% of 1,858, stratified
    assert report["accuracy"] >= 0.95, report
    assert report["per_class"]["spam"]["f1"] >= 0.8, report
