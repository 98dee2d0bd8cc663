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


def test_the_gpu_check_scripts_run_on_the_cpu(tmp_path):
    """bench/cuda_checks.py and bench/profile_step.py are for GPU sessions; here they must at least run and
    report what their checks are about (a GPU session has minutes to spend, not to debug the script)."""
    out = tmp_path / "cuda_checks.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_checks.py"), "--device", "cpu", "--small",
                    "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    report = json.loads(out.read_text())
    assert report["logits_vs_transformers"]["fp32"]["max_abs_diff"] < 1e-4
    assert report["kv_cache_vs_full_context"]["identical"] is True
    assert report["fused_adamw"]["max_param_diff_after_3_steps"] < 1e-4
    assert all("error" not in value for value in report.values() if isinstance(value, dict))
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "profile_step.py"), "--device", "cpu", "--preset",
                    "gpt2-tiny", "--block", "64", "--batch", "2", "--no-compile", "--out", str(out)],
                   check=True, cwd=ROOT, timeout=600)
    assert json.loads(out.read_text())["wall_ms_per_step"] > 0
