#!/usr/bin/env bash
# A prepared GPU session for issue 15 (MAML on a GPU), in phases that each fit one device call:
#
#   tests   tests/test_cuda.py: the CPU's numbers on CUDA for every method, and the compiled MAML
#           fast path against the CPU loop (about 2 minutes, most of it compiling);
#   bench   benchmarks/bench_maml.py on CUDA at meta-batch 32: loop, vmap and compiled, second and
#           first order, 5-way 1-shot with one query per class, the paper's training tasks (2-3 min);
#   train   the eight Omniglot MAML settings (5/20-way, 1/5-shot, second/first order) side by side on
#           the one GPU for MAML_MINUTES (default 4) each, then each tested on 600 test episodes.
#
# On the device machine (the preprocessed Omniglot cache travels with `carry`), for example
#   run(command="bash benchmarks/gpu_session.sh tests bench", carry=["data/omniglot"], timeout_s=420)
#   run(command="MAML_MINUTES=5 bash benchmarks/gpu_session.sh train", carry=["data/omniglot"], timeout_s=480)
# Each phase leaves at most a few files under $OUT (logs, the benchmark's JSON, one tar of the
# checkpoints with their records, to unpack here under data/checkpoints/).
#
# Try it on the CPU first, tiny: GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh tests bench train
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DRY=${GPU_SESSION_DRY:-0}
MINUTES=${MAML_MINUTES:-4}
DEVICE=cuda
if [ "$DRY" = 1 ]; then DEVICE=cpu; fi
RUNS=${GPU_SESSION_RUNS:-/tmp/gpu_session_runs}/gpu
PHASES=" $* "
[ "$#" = 0 ] && PHASES=" tests bench train "
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/hardware.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/hardware.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" >> "$OUT/hardware.txt" 2>&1

if [[ "$PHASES" == *" tests "* ]]; then
timeout 200 "$PY" -m pytest -q tests/test_cuda.py > "$OUT/tests.log" 2>&1  # skipped on a CPU
echo "tests: exit $?" | tee -a "$OUT/tests.log"
fi

if [[ "$PHASES" == *" bench "* ]]; then
if [ "$DRY" = 1 ]; then
    "$PY" benchmarks/bench_maml.py --devices cpu --modes loop vmap --orders second --meta-batch 2 \
        --n-query 1 --repeats 1 --threads 1 --json "$OUT/bench_maml.json" > "$OUT/bench.log" 2>&1
else
    timeout 200 "$PY" benchmarks/bench_maml.py --devices cuda --modes loop vmap compiled --n-query 1 \
        --repeats 10 --json "$OUT/bench_maml.json" > "$OUT/bench.log" 2>&1
fi
echo "bench: exit $?" | tee -a "$OUT/bench.log"
fi

if [[ "$PHASES" == *" train "* ]]; then
# 5-way: the compiled meta-step (one inner step compiles in a minute or two); 20-way: vmap, since
# five unrolled inner steps would spend much of a short run compiling. MAML_MODE sets both (use
# vmap if the compiled test failed). The dry run loops: vmap holds every task's graph at once,
# and 20-way 5-shot second order then needs over 20 GB.
MODE5=${MAML_MODE:-compiled}
MODE20=${MAML_MODE:-vmap}
[ "$DRY" = 1 ] && MODE5=${MAML_MODE:-loop} && MODE20=${MAML_MODE:-loop}
mkdir -p "$RUNS"
budget=(--minutes "$MINUTES")
checks=()
if [ "$DRY" = 1 ]; then budget=(--meta-steps 2 --val-every 1 --val-episodes 2); checks=(--episodes 4); fi
pids=()
for setting in "5 1" "5 5" "20 1" "20 5"; do
    set -- $setting
    for order in "" "--first-order"; do
        name="maml_omniglot_${1}w${2}s$([ -n "$order" ] && echo _fo)_gpu"
        MODE=$MODE5
        [ "$1" = 20 ] && MODE=$MODE20
        SHARED="GPU session of benchmarks/gpu_session.sh: 8 MAML runs sharing one GPU, this one in mode $MODE"
        "$PY" -m helpers.maml omniglot --paper --n-way "$1" --k-shot "$2" $order --n-query 1 \
            --mode "$MODE" --device "$DEVICE" --threads 1 "${budget[@]}" --no-progress \
            --hardware "$SHARED" --out "$RUNS/$name.pt" > "$RUNS/$name.log" 2>&1 &
        pids+=($!)
    done
done
for pid in "${pids[@]}"; do wait "$pid"; done
pids=()
for checkpoint in "$RUNS"/*.pt; do
    case "$checkpoint" in *.resume.pt) continue ;; esac
    "$PY" -m helpers.maml test "$checkpoint" --device "$DEVICE" --threads 1 --no-progress "${checks[@]}" \
        > "${checkpoint%.pt}.test.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 3 "$RUNS"/*.log > "$OUT/training.log" 2>&1
tar -czf "$OUT/checkpoints.tar.gz" -C "$(dirname "$RUNS")" gpu
fi
ls -la "$OUT"
