"""bench/mfu.py stays runnable (its real use is on a GPU; here a tiny model on the CPU)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/e2e/ -> the repository


def test_mfu_benchmark_runs_and_reports_a_plausible_utilisation(tmp_path):
    out = tmp_path / "mfu.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "mfu.py"), "--device", "cpu", "--quick", "--no-compile",
                    "--precision", "fp32", "--out", str(out)], check=True, capture_output=True, text=True)
    report = json.loads(out.read_text())
    assert report["tokens_per_s"] > 0 and report["step_seconds"] > 0
    assert 0.01 < report["mfu_of_matmul_ceiling"] < 1.0  # a real step reaches some, never all, of the ceiling
    assert report["targets"] == []  # no data-sheet peak for a CPU, so no verdict on the GPU target
