"""Checkpoint folders: atomic replacement, resume discovery, pruning, safe loading."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer
from lmforge.train import checkpoint as ckpt


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12))


@pytest.fixture
def tokenizer():
    return CharTokenizer.train(["abcdefghij"])


def test_round_trip_restores_identical_weights_including_tied_head(tmp_path, tokenizer):
    model = tiny_model()
    ckpt.save_checkpoint(tmp_path, "best", model, tokenizer, {"step": 3})
    loaded = ckpt.load_model_from_checkpoint(tmp_path / "best")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert ckpt.read_meta(tmp_path / "best") == {"step": 3}


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, tokenizer):
    ckpt.save_checkpoint(tmp_path, "last", tiny_model(0), tokenizer, {"step": 1}, {"x": torch.ones(1)})

    class BrokenTokenizer:
        def save(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, "last", tiny_model(1), BrokenTokenizer(), {"step": 2}, {"x": torch.ones(1)})
    assert ckpt.read_meta(tmp_path / "last") == {"step": 1}
    assert ckpt.find_resume(tmp_path) == tmp_path / "last"
    # The next save cleans up the half-written temporary folder and succeeds.
    ckpt.save_checkpoint(tmp_path, "last", tiny_model(2), tokenizer, {"step": 3}, {"x": torch.ones(1)})
    assert ckpt.read_meta(tmp_path / "last") == {"step": 3}
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_resume_finds_the_aside_copy_when_killed_between_renames(tmp_path, tokenizer):
    ckpt.save_checkpoint(tmp_path, "last", tiny_model(), tokenizer, {"step": 5}, {"x": torch.ones(1)})
    (tmp_path / "last").rename(tmp_path / ".old-last")  # the state right after the first rename
    assert ckpt.find_resume(tmp_path) == tmp_path / ".old-last"
    assert ckpt.find_resume(tmp_path / "nothing-here") is None


def test_prune_keeps_the_newest_step_folders_and_last_survives_via_hard_links(tmp_path, tokenizer):
    for step in (10, 20, 30):
        folder = ckpt.save_checkpoint(tmp_path, f"step-{step:06d}", tiny_model(), tokenizer, {"step": step},
                                      {"x": torch.ones(1)})
        ckpt.link_checkpoint(folder, "last")
    ckpt.prune_step_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step-000030"]
    assert json.loads((tmp_path / "last" / "meta.json").read_text())["step"] == 30


def test_train_state_loads_with_weights_only(tmp_path, tokenizer):
    state = {"optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "rng": {"torch": torch.get_rng_state()}}
    ckpt.save_checkpoint(tmp_path, "last", tiny_model(), tokenizer, {"step": 1}, state)
    loaded = ckpt.load_train_state(tmp_path / "last")
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])


def test_a_folder_without_weights_is_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="not an lmforge checkpoint"):
        ckpt.load_model_from_checkpoint(tmp_path)


# --- faults: a failed save, a dead process's leftovers, a torn samples.jsonl, fsync ---------------


class _FailingFiles:
    """Model files whose save dies half-way, as on a full disk."""

    def save(self, model, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")


def test_a_failed_save_leaves_no_temporary_folder_and_the_last_good_checkpoint(tmp_path):
    from lmforge.train.checkpoint import save_checkpoint

    model, tokenizer = _tiny_model_and_tokenizer(tmp_path)
    good = save_checkpoint(tmp_path / "run", "last", model, tokenizer, {"step": 1})
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "run", "last", model, tokenizer, {"step": 2}, files=_FailingFiles())
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last"]
    assert json.loads((good / "meta.json").read_text())["step"] == 1


def test_leftovers_of_a_killed_save_are_removed_by_the_next_one(tmp_path):
    from lmforge.train.checkpoint import save_checkpoint

    model, tokenizer = _tiny_model_and_tokenizer(tmp_path)
    stale = tmp_path / "run" / ".tmp-last-999999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path / "run", "last", model, tokenizer, {"step": 1})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last"]


def test_every_checkpoint_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    import os

    from lmforge.train import checkpoint

    model, tokenizer = _tiny_model_and_tokenizer(tmp_path)
    synced, real_fsync = [], os.fsync

    def recording_fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)
    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    final = checkpoint.save_checkpoint(tmp_path / "run", "last", model, tokenizer, {"step": 1})
    names = {p.name for p in final.iterdir()}
    synced_files = {Path(p).name for p in synced if "/.tmp-last-" in p}
    assert names <= synced_files  # each file, synced while still in the temporary folder


def _tiny_model_and_tokenizer(tmp_path):
    from lmforge.model.config import ModelConfig
    from lmforge.model.gpt import GPT
    from lmforge.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("char", lambda: iter(["hello world"]))
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=tokenizer.vocab_size))
    return model, tokenizer
