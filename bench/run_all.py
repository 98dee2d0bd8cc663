"""Run every benchmark in bench/ and collect their results and targets in one summary.

    python bench/run_all.py [--quick] [--only NAME,...] [--results-dir bench/results]

Runs, one after the other (each in its own process, so none disturbs another's memory figures):

    generate_speed.py      greedy generation vs HF                    -> generate_speed.json
    serve_batching.py      8 HTTP clients at once vs one after another -> serve_batching.json
    finetune_memory.py     full vs LoRA vs QLoRA memory               -> finetune_memory.json
    ingest_throughput.py   ingest MB/s, pages/s (prints only)          -> ingest_throughput.txt
    train_speed.py         training throughput vs HF and litgpt, MFU  -> train_speed.json
    quality_per_minute.py  best val loss in the peer's wall time      -> quality_per_minute.json

each with its defaults; `--quick` passes `--quick` to the scripts that have it (train_speed,
quality_per_minute: short runs that check the benchmark works; their numbers are not the targets'
conditions). `--reuse NAME,...` collects those benchmarks' result files from an earlier run instead of
running them again (e.g. figures taken on an idle machine). Then writes `summary.json` (every benchmark's command, exit status, seconds, JSON
result and targets) and `summary.md` (one table of every target with met / not met, then each
benchmark's own tables) into the results folder. A benchmark that fails is reported as failed and
the others still run. The whole default run takes about 20 minutes on 2 cores.

Other processes on the machine make timings slower and noisier: for each benchmark the CPU time the
rest of the machine used while it ran is measured (/proc/stat minus our own processes' CPU time), and
the summary names the benchmarks during which others kept more than BUSY_CPU cores busy on average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: bench/ siblings
from contention import cpu_snapshot, others_cpu  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# name -> (script, writes JSON via --out, has --quick)
BENCHMARKS = {
    "generate_speed": ("generate_speed.py", True, False),
    "serve_batching": ("serve_batching.py", True, False),
    "finetune_memory": ("finetune_memory.py", True, False),
    "ingest_throughput": ("ingest_throughput.py", False, False),
    "train_speed": ("train_speed.py", True, True),
    "quality_per_minute": ("quality_per_minute.py", True, True),
    "mfu": ("mfu.py", True, True),  # GPT-2 124M at block 1024: run by default only where CUDA is available
}
BUSY_CPU = 0.2  # cores other processes kept busy, on average, above which a benchmark is flagged


def shown_path(path: Path) -> str:
    """`path` as written into the summary: relative to the repository when inside it, so no machine's
    absolute paths end up in committed results."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def reuse_one(name: str, results_dir: Path) -> dict:
    """A benchmark not run now: its targets are read from the result file an earlier run left."""
    script, writes_json, _ = BENCHMARKS[name]
    out_file = results_dir / (f"{name}.json" if writes_json else f"{name}.txt")
    if not out_file.is_file():
        raise SystemExit(f"--reuse {name}: {out_file} does not exist; run the benchmark first")
    entry = {"name": name, "command": f"(not run: {out_file.name} of an earlier run of {script})", "returncode": 0,
             "seconds": 0.0, "load_average_before_after": None, "others_cpu": None, "reused": True,
             "result_file": shown_path(out_file), "targets": [], "stdout": ""}
    if writes_json:
        data = json.loads(out_file.read_text())
        entry["targets"] = [normalise_target(t) for t in data.get("targets", [])]
        entry["quick"] = bool(data.get("quick", False))
        entry["others_cpu"] = data.get("others_cpu")
        entry["stdout"] = data.get("markdown") or _table_from_results(data)
    else:
        entry["stdout"] = out_file.read_text()
    return entry


def _table_from_results(data: dict) -> str:
    """A compact view of a result file that carries no markdown of its own (e.g. finetune_memory.json)."""
    rows = data.get("results") or []
    if not rows or not isinstance(rows[0], dict):
        return "(see the JSON file)"
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float, str)) and k != "ids"][:9]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k))
                                       for k in keys) + " |")
    return "\n".join(lines)


def run_one(name: str, results_dir: Path, quick: bool) -> dict:
    script, writes_json, has_quick = BENCHMARKS[name]
    command = [sys.executable, str(BENCH / script)]
    out_file = results_dir / (f"{name}.json" if writes_json else f"{name}.txt")
    if writes_json:
        command += ["--out", str(out_file)]
    if quick and has_quick:
        command.append("--quick")
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    load_before, start, before = os.getloadavg()[0], time.perf_counter(), cpu_snapshot()
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    contention = others_cpu(before, cpu_snapshot())
    entry = {"name": name, "command": " ".join(["python", str(Path(script).as_posix())] + command[2:]),
             "returncode": proc.returncode, "seconds": time.perf_counter() - start,
             "load_average_before_after": [load_before, os.getloadavg()[0]], "others_cpu": contention,
             "stdout": proc.stdout,
             "result_file": shown_path(out_file), "targets": []}
    if proc.returncode != 0:
        entry["error"] = proc.stderr[-4000:]
        print(f"   failed ({proc.returncode}); see summary.json", file=sys.stderr)
        return entry
    if writes_json:
        data = json.loads(out_file.read_text())
        entry["targets"] = [normalise_target(t) for t in data.get("targets", [])]
        entry["quick"] = bool(data.get("quick", False))
    else:
        out_file.write_text(proc.stdout)
    print(f"   done in {entry['seconds']:.0f} s", file=sys.stderr)
    return entry


def normalise_target(t: dict) -> dict:
    """The scripts' target rows in one form (generate_speed's rows are ratios compared with >=)."""
    comparison, unit = t.get("comparison", ">="), t.get("unit", "x")
    return {"name": t["name"], "measured": t["measured"], "target": t["target"], "comparison": comparison,
            "unit": unit, "met": bool(t["met"]), "note": t.get("note", "")}


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.4f}" if abs(value) >= 1e-2 else f"{value:.1e}"


def summary_markdown(entries: list[dict], quick: bool) -> str:
    command = " ".join(["python bench/run_all.py", *sys.argv[1:]])
    lines = ["# Benchmark summary", "",
             f"`{command}` on {machine()['cpu']} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}."]
    if quick:
        lines.append("**--quick**: shortened runs that check the benchmarks work; their figures are not the targets' "
                     "conditions.")
    lines += ["", "| benchmark | target | measured | target | met |", "|---|---|---:|---:|---|"]
    for e in entries:
        if e["returncode"] != 0:
            lines.append(f"| {e['name']} | (failed, exit {e['returncode']}) | | | no |")
        for t in e["targets"]:
            note = f" ({t['note']})" if t["note"] else ""
            target = f"{t['comparison']} {fmt(t['target'], t['unit'])}"
            lines.append(f"| {e['name']} | {t['name']}{note} | {fmt(t['measured'], t['unit'])} | {target} | "
                         f"{'yes' if t['met'] else 'no'} |")
    met = sum(t["met"] for e in entries for t in e["targets"])
    total = sum(len(e["targets"]) for e in entries)
    lines += ["", f"{met} of {total} targets met."]
    busy = [e for e in entries if (e["others_cpu"] or 0) > BUSY_CPU]
    if busy:
        lines.append(f"Taken under contention (other processes kept more than {BUSY_CPU} of the {os.cpu_count()} "
                     "cores busy on average): " + ", ".join(f"{e['name']} ({e['others_cpu']:.2f} cores)" for e in busy)
                     + ". Timings there are slower and noisier than on an idle machine.")
    for e in entries:
        if e.get("reused"):
            lines += ["", f"## {e['name']}", "", f"{e['command']}", ""]
        else:
            lines += ["", f"## {e['name']}", "", f"`{e['command']}`: exit {e['returncode']}, {e['seconds']:.0f} s, "
                      f"other processes kept {e['others_cpu']:.2f} cores busy on average", ""]
        if e["returncode"] != 0:
            lines += ["```", e.get("error", "").strip()[-1500:], "```"]
        else:
            lines.append(e["stdout"].strip())
    return "\n".join(lines) + "\n"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def torch_cuda_available() -> bool:
    """Asked in a child process, so that this script itself does not import torch."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=False)
    return probe.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it")
    default = [n for n in BENCHMARKS if n != "mfu" or torch_cuda_available()]
    parser.add_argument("--only", default=",".join(default), help=f"comma-separated from {', '.join(BENCHMARKS)}")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument("--reuse", default="", help="comma-separated benchmarks not to run: their result files in "
                        "--results-dir, from an earlier run, are collected as they are")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    reuse = [n for n in args.reuse.split(",") if n]
    unknown = (set(names) | set(reuse)) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    start, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")
    entries = [reuse_one(name, results_dir) if name in reuse else run_one(name, results_dir, args.quick)
               for name in names]
    targets = [{"benchmark": e["name"], **t} for e in entries for t in e["targets"]]
    summary = {"machine": machine(), "quick": args.quick, "started": started,
               "wall_seconds": time.perf_counter() - start, "targets": targets,
               "targets_met": sum(t["met"] for t in targets), "targets_total": len(targets),
               "benchmarks": entries}
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = summary_markdown(entries, args.quick)
    (results_dir / "summary.md").write_text(text)
    print(text.split("\n## ")[0])
    print(f"written {results_dir / 'summary.json'} and {results_dir / 'summary.md'}", file=sys.stderr)
    if any(e["returncode"] != 0 for e in entries):
        sys.exit(1)


if __name__ == "__main__":
    main()
