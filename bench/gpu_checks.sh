#!/usr/bin/env bash
# lmforge's CUDA paths in one pass, for a session that is lent a GPU (about 6 minutes on one H200).
#
#   bash bench/gpu_checks.sh [OUT_DIR]       # default bench/results/gpu; one log and the JSON reports
#
# Runs from the repository root without installing anything (PYTHONPATH=src): the machine's own torch,
# transformers and lmforge's light dependencies must be there. Each step has its own time limit, and a
# failing step does not stop the others. What each step checks:
#   1. bench/cuda_checks.py: logits vs transformers (fp32, bf16), flash SDPA, KV cache, fused AdamW, decode speed
#   2. bench/mfu.py: GPT-2 124M at block 1024, bf16, compiled, then eager (model FLOPs utilisation), and
#      bench/profile_step.py: where the compiled step's GPU time goes (matmuls, attention, loss, optimizer)
#   3. lmforge train on tiny shakespeare on the GPU: precision auto (bf16), fp16 with loss scaling, compiled
#   4. lmforge generate from the trained checkpoint on the GPU
#   5. the demo (`lmforge train`) with a 90 s budget: the size probe and the time budget on a GPU
set -u -o pipefail
out=${1:-bench/results/gpu}
mkdir -p "$out"
log="$out/gpu_checks.log"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
runs=$(mktemp -d)
shakespeare=(python3 -m lmforge train shakespeare-char --data.path=testdata/tinyshakespeare/input.txt
             --train.device=cuda --train.sample_interval=0)

deadline=${GPU_CHECKS_SECONDS:-560}  # the whole script's limit: a step that would overrun it is skipped
step() {  # step NAME SECONDS COMMAND...: run it under a time limit and log it
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    if (( SECONDS + limit > deadline )); then
        echo "=== $name: skipped, $((deadline - SECONDS)) s left of $deadline" | tee -a "$log"
        return
    fi
    echo "=== $name: $*" | tee -a "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$log"

step cuda_checks 120 python3 bench/cuda_checks.py --out "$out/cuda_checks.json"
grep -E "^(logits|flash|kv_cache|fused|decode)" "$log"
step mfu_compiled 150 python3 bench/mfu.py --out "$out/mfu_compiled.json"
step mfu_eager 60 python3 bench/mfu.py --no-compile --steps 15 --warmup 3 --out "$out/mfu_eager.json"
step profile_compiled 90 python3 bench/profile_step.py --out "$out/profile_compiled.json"
grep -E "MFU|wall .* ms/step" "$log" | tail -n 4
step train_auto 80 "${shakespeare[@]}" --train.max_steps=1000 --train.out_dir="$runs/auto"
step train_fp16 60 "${shakespeare[@]}" --train.max_steps=500 --train.precision=fp16 --train.out_dir="$runs/fp16"
step train_compiled 75 "${shakespeare[@]}" --train.max_steps=500 --train.compile=true --train.out_dir="$runs/compiled"
grep -E "^(device|stopped|train loss|diagnosis)" "$log"
step generate 40 python3 -m lmforge generate "$runs/auto/best" --prompt "ROMEO:" --max-new-tokens 80 --seed 1
step demo_90s 125 python3 -m lmforge train --train.max_time=90 --train.out_dir="$runs/demo"
grep -E "^(model:|device|time budget|stopped|train loss)" "$log" | tail -n 8
echo "=== done; the whole log: $log"
