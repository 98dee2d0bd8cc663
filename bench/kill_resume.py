"""kill -9 a training run at random moments, damage its newest checkpoint, start a second run on its folder:
the same command must still finish the run, and finish it exactly as an uninterrupted run does.

    python bench/kill_resume.py                   # ~4 minutes on 2 cores; writes bench/results/kill_resume.json
    python bench/kill_resume.py --src OTHER/src   # the same run against another checkout (e.g. an older commit)

What it does, with `lmforge train` on the tiny-shakespeare text the repo ships (char tokenizer, a 2-layer
64-wide model, 2000 steps, a checkpoint every 10 steps, evaluation every 50):

1. one uninterrupted run: the reference;
2. the same command on a fresh folder, killed with SIGKILL six times at random moments (the first kill
   comes after the first checkpoint exists: before it there is nothing to resume, and lmforge refuses to
   start over silently), each time started again with the same command;
3. after the third kill, last/model.safetensors is cut to half its length in place (so the newest
   step-NNNNNN/, its hard link, is damaged too): the next start must fall back to an older checkpoint;
4. during the second attempt, a second `lmforge train` on the same folder must exit non-zero at once;
5. the last attempt runs to the end. Its training_metrics.json must equal the reference's, loss for loss.

Every attempt's exit code, time and the lines it printed about resuming are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILLS = 6


def train_command(run_dir: Path, cache_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lmforge", "train", f"--data.path={ROOT / 'testdata' / 'tinyshakespeare'}",
            "--data.tokenizer=char", f"--data.cache_dir={cache_dir}", f"--train.out_dir={run_dir}",
            "--model.n_layer=2", "--model.n_head=2", "--model.n_embd=64", "--model.block_size=64",
            "--train.max_steps=2000", "--train.max_time=null", "--train.batch_size=8", "--train.save_interval=10",
            "--train.eval_interval=50", "--train.eval_steps=4", "--train.sample_interval=0",
            "--train.keep_last=3", "--train.precision=fp32", "--train.compile=false"]


def environment(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}


def run_to_end(command: list[str], env: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return {"exit": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "said": resume_lines(done.stdout + done.stderr)}


def resume_lines(output: str) -> list[str]:
    keys = ("resume", "resumed", "damaged", "falling back", "Error", "error:", "in use", "holds an earlier run")
    return [line.strip()[:300] for line in output.splitlines() if any(k in line for k in keys)][:12]


def wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (run_dir / "last").is_dir():
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError("the run ended (or stalled) before its first checkpoint")
        time.sleep(0.05)


def second_run_on_the_same_folder(command: list[str], env: dict, patience: float = 60.0) -> dict:
    """Start the same command again while the first runs; it should stop at once. One still running after
    `patience` seconds is training alongside the first (both writing one folder): it is killed and recorded so."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=patience)
    except subprocess.TimeoutExpired as still_running:
        output = (still_running.stdout or b"") + (still_running.stderr or b"")
        return {"exit": None, "still_running_after_s": patience,
                "said": resume_lines(output.decode(errors="replace") if isinstance(output, bytes) else output)}
    return {"exit": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "said": resume_lines(done.stdout + done.stderr)}


def killed_attempt(index: int, command: list[str], env: dict, run_dir: Path, rng: random.Random,
                   reference_seconds: float, startup: dict) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if index == 0:
        wait_for_checkpoint(run_dir, process)
        startup["seconds"] = time.perf_counter() - started  # imports, data loading, the first 10 steps
    second = None
    # Any moment from start-up (imports, data loading) to a tenth of the run past it: six attempts, each
    # repeating the steps after its last checkpoint, must not be enough to finish the run.
    delay = rng.uniform(0.5 * startup["seconds"], startup["seconds"] + 0.1 * reference_seconds)
    if index == 1:  # while this attempt trains, try a second run on its folder
        time.sleep(min(delay / 2, 5.0))
        second = second_run_on_the_same_folder(command, env)
    time.sleep(max(0.0, delay - (time.perf_counter() - started)))
    finished_first = process.poll() is not None
    if not finished_first:
        process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    attempt = {"killed_after_s": round(time.perf_counter() - started, 1), "finished_before_the_kill": finished_first,
               "exit": process.returncode, "last_step": last_step(run_dir), "said": resume_lines(output)}
    if second is not None:
        attempt["second_run_on_the_same_folder"] = second
    return attempt


def last_step(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "last" / "meta.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def damage_newest_checkpoint(run_dir: Path) -> dict:
    weights = run_dir / "last" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as file:  # in place: the newest step-NNNNNN/ shares this file (a hard link)
        file.truncate(size // 2)
    return {"truncated": "last/model.safetensors", "from_bytes": size, "to_bytes": size // 2,
            "at_step": last_step(run_dir)}


def losses(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the lmforge source folder to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kill_resume.json")
    args = parser.parse_args()
    rng, env = random.Random(args.seed), environment(args.src.resolve())
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    try:
        cache = work / "cache"
        reference_dir, run_dir = work / "reference", work / "killed"
        reference = run_to_end(train_command(reference_dir, cache), env)  # also prepares the cached data
        command = train_command(run_dir, cache)
        attempts, damage, startup = [], None, {}
        for index in range(KILLS):
            if index == 3:
                damage = damage_newest_checkpoint(run_dir)
            attempts.append(killed_attempt(index, command, env, run_dir, rng, reference["seconds"], startup))
            print(f"attempt {index + 1}: {attempts[-1]}", flush=True)
        final = run_to_end(command, env)
        same = final["exit"] == 0 and losses(run_dir)["train_loss"] == losses(reference_dir)["train_loss"] \
            and losses(run_dir)["val_loss"] == losses(reference_dir)["val_loss"]
        result = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
                  "src": str(args.src.resolve()), "reference": reference, "damage": damage, "attempts": attempts,
                  "final": final, "final_metrics_equal_the_uninterrupted_run": same,
                  "leftover_temporary_folders": sorted(p.name for p in run_dir.glob(".tmp-*"))}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Machine paths out: the results file is committed, and the repository names no absolute path.
    text = json.dumps(result, indent=2).replace(str(work), "$WORK").replace(str(ROOT), ".")
    args.out.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("final", "final_metrics_equal_the_uninterrupted_run",
                                             "leftover_temporary_folders")}, indent=2))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
