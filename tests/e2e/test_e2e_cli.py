"""The real `lmforge` command, run as a user would, in a subprocess."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from lmforge.train.checkpoint import is_checkpoint

pytestmark = pytest.mark.slow
TINY_MODEL = ["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32"]


def lmforge(*args, cwd, timeout=300, check=True):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmforge {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat log and then quickly slowly big small red blue sea ship".split()
    for i in range(30):  # varied documents: identical ones would be removed as duplicates
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + "." for _ in range(25)]
        (src / f"story{i}.txt").write_text("\n".join(lines))
    (src / "image.bin").write_bytes(b"\x89PNG\x00\x01" * 100)  # binary: skipped, not fatal
    return src


def test_prepare_train_generate_report(corpus, tmp_path):
    data = tmp_path / "data"
    out = lmforge("prepare", corpus, "--out", data, "--tokenizer", "bpe", "--vocab-size", "300", cwd=tmp_path)
    assert "prepared" in out.stdout
    assert {"train.bin", "val.bin", "meta.json", "tokenizer.json", "documents.jsonl"} <= {p.name for p in data.iterdir()}

    run = tmp_path / "run"
    out = lmforge("train", f"--data.path={data}", f"--train.out_dir={run}", "--train.max_steps=40",
                  "--train.eval_interval=10", "--train.log_interval=5", "--train.sample_interval=20",
                  "--train.batch_size=8", *TINY_MODEL, cwd=tmp_path)
    assert "stopped: max_steps reached after 40 steps" in out.stdout
    for name in ("training_metrics.json", "training_curve.png", "loss_by_epoch.png", "samples.jsonl",
                 "config.yaml", "diagnosis.txt"):
        assert (run / name).is_file(), name
    assert is_checkpoint(run / "best") and is_checkpoint(run / "last") and is_checkpoint(run / "step-000040")
    metrics = json.loads((run / "training_metrics.json").read_text())
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]

    out = lmforge("generate", run / "best", "--prompt", "the cat", "--max-new-tokens", "20", "--seed", "1",
                  cwd=tmp_path)
    assert out.stdout.startswith("the cat") and len(out.stdout) > len("The cat\n")
    again = lmforge("generate", run / "best", "--prompt", "the cat", "--max-new-tokens", "20", "--seed", "1",
                    cwd=tmp_path)
    assert again.stdout == out.stdout  # a seed reproduces the sample

    report = lmforge("report", run, cwd=tmp_path)
    assert report.stdout.startswith("Verdict: ")


def test_train_with_no_data_uses_the_standard_library(tmp_path):
    out = lmforge("train", "--train.max_steps=3", "--train.eval_interval=3", "--train.eval_steps=1",
                  "--data.default_corpus_bytes=100000", f"--data.cache_dir={tmp_path / 'cache'}",
                  "--data.vocab_size=300", "--train.batch_size=2", "--train.sample_tokens=8",
                  f"--train.out_dir={tmp_path / 'run'}", *TINY_MODEL, cwd=tmp_path)
    assert "built-in demo corpus" in out.stdout
    assert "stopped: max_steps reached after 3 steps" in out.stdout


def test_a_time_budget_covers_the_whole_command_and_ends_at_min_lr(tmp_path):
    """The demo's promise in small: data preparation, training and the final evaluation, sample and checkpoint
    all fit in train.max_time (Python's start-up and the closing sample are the only time outside it)."""
    budget = 25
    started = time.perf_counter()
    out = lmforge("train", "--train.max_steps=null", f"--train.max_time={budget}", "--train.eval_interval=20",
                  "--model.fit_to_budget=true",
                  "--data.default_corpus_bytes=300000", f"--data.cache_dir={tmp_path / 'cache'}",
                  "--data.vocab_size=300", "--train.batch_size=4", "--train.sample_tokens=16",
                  "--train.sample_interval=50", f"--train.out_dir={tmp_path / 'run'}", *TINY_MODEL, cwd=tmp_path)
    wall = time.perf_counter() - started
    assert "model: fit_to_budget picked " in out.stdout and "time budget: " in out.stdout
    assert wall < budget + 20, out.stdout  # + Python's start-up and the closing sample, on a busy machine too
    stopped = out.stdout.split("stopped: ")[1].split(" after ")[0]
    assert stopped.startswith("max_time reached"), stopped
    if "steps fitted to the 25 s budget are done" in stopped:  # the plan ran out (not the hard stop that
        # a machine busy with other work can force): the last step trained at the demo preset's min_lr
        metrics = json.loads((tmp_path / "run" / "training_metrics.json").read_text())
        assert metrics["learning_rate"][-1] == pytest.approx(2e-4)


def test_sigterm_saves_last_and_a_rerun_resumes(corpus, tmp_path):
    run = tmp_path / "run"
    args = ["train", f"--data.path={corpus}", f"--data.cache_dir={tmp_path / 'cache'}", "--data.tokenizer=char",
            f"--train.out_dir={run}", "--train.max_steps=100000", "--train.log_interval=1",
            "--train.save_interval=100000", "--train.sample_interval=0", *TINY_MODEL]
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "training_metrics.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    step = json.loads((run / "last" / "meta.json").read_text())["step"]
    assert step >= 1 and "interrupted (SIGTERM)" in stdout

    out = lmforge("train", *args[1:], f"--train.max_steps={step + 2}", cwd=tmp_path)
    assert f"resumed from {run / 'last'} at step {step}" in out.stdout + out.stderr
    assert f"after {step + 2} steps" in out.stdout


def test_bad_config_exits_2_with_the_key_named(tmp_path):
    out = lmforge("train", "--train.lr=abc", cwd=tmp_path, check=False)
    assert out.returncode == 2
    assert "train.lr: expected a number, got 'abc'" in out.stderr
    assert "Traceback" not in out.stderr


def test_init_prints_a_config_that_trains(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(lmforge("init", "llama-tiny", cwd=tmp_path).stdout)
    text = config.read_text()
    assert "n_kv_head: 2" in text and "# " in text
    out = lmforge("train", config, "--train.max_steps=0", f"--data.cache_dir={tmp_path}", cwd=tmp_path, check=False)
    assert out.returncode == 2  # the file loaded, then the override was validated
    assert "train.max_steps: must be positive" in out.stderr


def test_ingest_reports_every_file_and_fails_only_when_nothing_is_kept(corpus, tmp_path):
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\n% truncated")
    out = lmforge("ingest", corpus, "--out", tmp_path / "ingested", "--workers", "2",
                  f"--ingest.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert "30 ok, 1 skipped, 1 failed" in out.stdout
    report = json.loads((tmp_path / "ingested" / "ingest_report.json").read_text())
    assert {f["status"] for f in report["files"]} == {"ok", "skipped", "failed"}
    assert sorted(p.name for p in (tmp_path / "ingested").iterdir()) == ["documents.jsonl", "ingest_report.json"]

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.bin").write_bytes(b"\x00\x01" * 64)
    out = lmforge("ingest", junk, "--out", tmp_path / "nothing", f"--ingest.cache_dir={tmp_path / 'cache'}",
                  cwd=tmp_path, check=False)
    assert out.returncode == 2 and "no document was kept" in out.stderr
