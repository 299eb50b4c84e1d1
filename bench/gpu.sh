#!/usr/bin/env bash
# GPU numbers for the `base` preset, as JSON lines (one per measurement), in under 8 minutes:
#
#   bash bench/gpu.sh            # from the repo root; PYTHON=... to use another interpreter
#
# 1. `posttrain train` (native, bf16) for STEPS steps at the single-gpu profile's batch (16, 4 loader
#    workers) and at the local8gpu profile's per-GPU batch (96 / 8 = 12, 16 workers, capped at the
#    core count): samples/s, step time split into data wait and compute, peak CUDA memory
#    (max_memory_allocated), and the wall time 30,000 / 20,000 steps would take at that step time
#    (projected_30000_steps_h is the single-gpu run; projected_20000_steps_h the local8gpu run, whose
#    8-GPU gradient all-reduce this one GPU cannot measure).
# 2. The loader alone with those worker counts (samples/s the input path can feed).
# The dataset is a smaller synthetic set than the seed's (20 demos x 330 steps at 256², built in
# about a minute; cached in ~/.cache/posttrain-bench): with a frames directory the cost per sample
# does not depend on the dataset size (bench/train.py measures that on CPU).
#
# Needs torch with CUDA (the pinned torch==2.13.0 from the CUDA wheel index). Without a CUDA device it
# prints one line saying so and exits with status 1: nothing was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
STEPS=${STEPS:-150}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA device visible to torch ($PYTHON); this benchmark needs a GPU: nothing measured" >&2
    exit 1
fi

CORES=$(nproc)
WORKERS_8GPU=$(( CORES < 16 ? CORES : 16 ))
SHAPE=(--source-episodes 20 --frames 330 --image-size 256)
LOG=${LOG:-$(mktemp /tmp/posttrain-gpu-bench.XXXXXX.log)}  # progress and warnings; stdout is JSON only
bench() {
    timeout 200 "$PYTHON" bench/train.py "${SHAPE[@]}" "$@" 2>>"$LOG" || {
        echo "bench/gpu.sh: bench/train.py $* failed (status $?); the end of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    }
}

"$PYTHON" -c 'import json, torch; p = torch.cuda.get_device_properties(0); print(json.dumps({"bench": "gpu",
    "device": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__,
    "cuda": torch.version.cuda}))'
bench --trainer --presets base --batch 16 --workers 4 --steps "$STEPS" --mixed-precision bf16
bench --trainer --presets base --batch 12 --workers "$WORKERS_8GPU" --steps "$STEPS" --mixed-precision bf16
bench --presets base --episodes 20 --batch 16 --workers 4 "$WORKERS_8GPU" --steps 60
