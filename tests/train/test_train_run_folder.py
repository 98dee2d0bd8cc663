"""The run folder: one run at a time (a lock that dies with its holder), and no silent fresh start over a run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.run_folder import LOCK_FILE, RunFolderBusy, claim_run_folder


def save_step(run, step):
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12))
    folder = ckpt.save_checkpoint(run, f"step-{step:06d}", model, CharTokenizer.train(["abcdefghij"]),
                                  {"step": step}, {"x": torch.ones(1)})
    ckpt.link_checkpoint(folder, "last")


def test_a_second_claim_is_refused_while_the_first_holds_the_folder(tmp_path):
    with claim_run_folder(tmp_path, "auto"):
        with pytest.raises(RunFolderBusy, match=rf"in use by another run \(process {os.getpid()} on "):
            with claim_run_folder(tmp_path, "auto"):
                pass
    with claim_run_folder(tmp_path, "auto"):  # released at the end of the first run
        pass


def test_the_lock_dies_with_a_killed_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lmforge.train.run_folder import claim_run_folder\n"
        f"with claim_run_folder({str(tmp_path)!r}, 'auto'):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"process {holder.pid} on "):
            with claim_run_folder(tmp_path, "auto"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # the file stays; the lock does not
    with claim_run_folder(tmp_path, "auto"):
        pass


def test_auto_refuses_a_folder_with_a_run_but_nothing_to_continue_from(tmp_path):
    (tmp_path / "training_metrics.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"stopped before its first checkpoint\). Start it over with "
                                         r"--train.resume=never"):
        with claim_run_folder(tmp_path, "auto"):
            pass
    assert (tmp_path / "training_metrics.json").is_file()  # nothing was touched


def test_auto_names_the_damage_when_every_checkpoint_is_damaged(tmp_path):
    save_step(tmp_path, 10)
    (tmp_path / "step-000010" / "meta.json").write_text('{"step": 1')  # last/ shares the file: both damaged
    with pytest.raises(ValueError, match=r"no intact checkpoint to continue from; damaged: last/: meta.json"):
        with claim_run_folder(tmp_path, "auto"):
            pass


def test_auto_keeps_a_run_it_can_continue(tmp_path):
    save_step(tmp_path, 10)
    with claim_run_folder(tmp_path, "auto"):
        assert ckpt.find_resume(tmp_path) == tmp_path / "last"


def test_never_removes_the_earlier_run_and_nothing_else(tmp_path, capsys):
    save_step(tmp_path, 10)
    save_step(tmp_path, 20)
    for name in ("training_metrics.json", "samples.jsonl", "diagnosis.txt", "notes.txt", "config.yaml"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-step-000030-123").mkdir()
    with claim_run_folder(tmp_path, "never"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "config.yaml", "notes.txt"]
    assert "train.resume=never: removed the earlier run" in capsys.readouterr().out


def test_only_the_main_process_claims(tmp_path):
    with claim_run_folder(tmp_path / "run", "auto", is_main=False):
        pass
    assert not (tmp_path / "run").exists()


def test_a_second_lmforge_train_on_a_running_runs_folder_exits_at_once(tmp_path):
    run = tmp_path / "run"
    with claim_run_folder(run, "auto"):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "lmforge", "train", f"--train.out_dir={run}"],
                             capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - started
    assert out.returncode != 0
    assert f"is in use by another run (process {os.getpid()}" in out.stderr + out.stdout
    assert seconds < 30  # before any data preparation (the demo's takes longer than this)
