"""Checkpoint folders: atomic replacement, resume discovery, pruning, safe loading."""

import json
import re
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


def saved_run(tmp_path, tokenizer, steps=(10, 20)):
    for step in steps:
        folder = ckpt.save_checkpoint(tmp_path, f"step-{step:06d}", tiny_model(step), tokenizer, {"step": step},
                                      {"x": torch.full((4,), float(step))})
        ckpt.link_checkpoint(folder, "last")
    return tmp_path


def test_a_manifest_lists_every_file_with_its_size_and_checksum(tmp_path, tokenizer):
    folder = saved_run(tmp_path, tokenizer, steps=(10,)) / "last"
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert sorted(manifest) == sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    weights = folder / "model.safetensors"
    assert manifest["model.safetensors"]["bytes"] == weights.stat().st_size
    import zlib
    assert manifest["model.safetensors"]["crc32"] == zlib.crc32(weights.read_bytes())
    assert ckpt.resume_problem(folder) is None


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one bit in the middle: the size stays, the checksum does not
        data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "train_state.pt", "meta.json", "config.json"])
@pytest.mark.parametrize("how, says", [("truncate", "bytes, .* were written"), ("flip", "checksum differs")])
def test_a_truncated_or_altered_file_marks_the_checkpoint_damaged(tmp_path, tokenizer, name, how, says):
    run = saved_run(tmp_path, tokenizer)
    # Writing a new file (not in place) leaves step-000020's hard-linked copy alone.
    target = run / "last" / name
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data)
    damage(target, how)
    assert re.search(f"^{re.escape(name)} .*{says}", ckpt.resume_problem(run / "last") or "")
    path, damaged = ckpt.choose_resume(run)
    assert path == run / "step-000020" and [p.name for p, _ in damaged] == ["last"]


def test_a_missing_file_marks_the_checkpoint_damaged(tmp_path, tokenizer):
    run = saved_run(tmp_path, tokenizer)
    (run / "last" / "train_state.pt").unlink()
    assert ckpt.resume_problem(run / "last") == "train_state.pt missing"


def test_damage_through_the_hard_link_falls_back_two_checkpoints(tmp_path, tokenizer):
    run = saved_run(tmp_path, tokenizer, steps=(10, 20, 30))
    with open(run / "last" / "model.safetensors", "r+b") as file:  # in place: step-000030 shares the file
        file.truncate(100)
    path, damaged = ckpt.choose_resume(run)
    assert path == run / "step-000020"
    assert [p.name for p, _ in damaged] == ["last", "step-000030"]


def test_without_a_manifest_the_structure_is_checked(tmp_path, tokenizer):
    """Checkpoints written before manifests existed: the files must still parse and be complete."""
    run = saved_run(tmp_path, tokenizer)
    for folder in (run / "last", run / "step-000020", run / "step-000010"):
        (folder / "manifest.json").unlink(missing_ok=True)
    assert ckpt.resume_problem(run / "step-000010") is None
    damage(run / "step-000010" / "model.safetensors", "truncate")  # also step-000010's only copy
    assert "model.safetensors is damaged" in ckpt.resume_problem(run / "step-000010")
    state = run / "step-000020" / "train_state.pt"
    data = state.read_bytes()
    state.unlink()  # a new file, not the hard link's: last/ keeps the intact one
    state.write_bytes(data[:-40])
    assert "train_state.pt is damaged" in ckpt.resume_problem(run / "step-000020")
    assert ckpt.resume_problem(run / "last") is None


def test_a_newer_step_folder_beats_an_older_last(tmp_path, tokenizer):
    """Killed after step-000030/ was written but before last/ pointed at it: continue from step 30."""
    run = saved_run(tmp_path, tokenizer)
    ckpt.save_checkpoint(run, "step-000030", tiny_model(30), tokenizer, {"step": 30}, {"x": torch.ones(1)})
    assert [p.name for p in ckpt.resume_candidates(run)] == ["step-000030", "last", "step-000020", "step-000010"]
    assert ckpt.find_resume(run) == run / "step-000030"
