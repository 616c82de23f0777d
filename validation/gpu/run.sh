#!/usr/bin/env bash
# Validate pipeplan on this machine's NVIDIA GPU(s) in under 10 minutes, every step with a timeout:
#
#   1. what is here: nvidia-smi, torch, CUDA, NCCL (a GPU torch can use, or exit 2 saying why not);
#   2. probe the GPU: `pipeplan probe --device cuda --backend nccl` (gloo with one GPU) writes
#      validation/gpu/cluster.json, the spec the plans in validation/gpu/plans/ name (the datasheet
#      spec stays if pipeplan probe is not in this checkout or fails);
#   3. validate the plans: two ranks on one GPU through gloo with host staging; the same under NVIDIA
#      MPS when nvidia-cuda-mps-control exists (a private daemon, stopped on exit); NCCL, one rank per
#      GPU, where there are several GPUs;
#   4. records and a table in validation/records/ (validation/gpu/table.py), the side-by-side Gantt
#      chart of the first run in figures/validation_gpu.png.
#
# Usage: validation/gpu/run.sh   (from anywhere). Environment: PYTHON (default python), PIPEPLAN_GPU_TAG
# (record names; default the GPU's name), PIPEPLAN_GPU_BUDGET_S (default 560), PIPEPLAN_GPU_RECORDS and
# PIPEPLAN_GPU_FIGURE (where records, table and chart go). A step that might not finish inside what is
# left of the budget is skipped, saying so. Exit 2: no GPU torch can use here; 1: no run finished.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python}
BUDGET_S=${PIPEPLAN_GPU_BUDGET_S:-560}
STARTED=$(date +%s)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pipeplan-gpu.XXXXXX")
MPS_STARTED=0
RECORDS=${PIPEPLAN_GPU_RECORDS:-$REPO/validation/records}
FIGURE=${PIPEPLAN_GPU_FIGURE:-$REPO/figures/validation_gpu.png}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

say() { printf 'run.sh: %s\n' "$*" >&2; }

cleanup() {
    if [[ $MPS_STARTED == 1 ]]; then
        echo quit | timeout 20 nvidia-cuda-mps-control || say "could not stop the MPS daemon (pipe $CUDA_MPS_PIPE_DIRECTORY)"
    fi
    if [[ -n $(ls -A "$RUN_DIR") ]]; then
        say "reports, logs and charts of this run: $RUN_DIR"
    else
        rmdir "$RUN_DIR"
    fi
}
trap cleanup EXIT

left() { echo $((BUDGET_S - ($(date +%s) - STARTED))); }

# step NAME SECONDS COMMAND...: run COMMAND under a timeout, or skip it when less than SECONDS are left.
step() {
    local name=$1 limit=$2
    shift 2
    if (($(left) < limit)); then
        say "skipped $name: $(left) s of the ${BUDGET_S} s budget left, it may take $limit s"
        return 1
    fi
    say "$name (at most $limit s)"
    if timeout --kill-after=10 "$limit" "$@" >"$RUN_DIR/$name.log" 2>&1; then
        return 0
    fi
    say "$name failed or timed out; the end of its log ($RUN_DIR/$name.log):"
    tail -n 5 "$RUN_DIR/$name.log" >&2
    return 1
}

# 1. What is here.
if ! command -v nvidia-smi >/dev/null; then
    say "no NVIDIA GPU here (nvidia-smi not found); nothing was run"
    exit 2
fi
GPUS=$(timeout 30 nvidia-smi -L | grep -c '^GPU ' || true)
if ((GPUS < 1)); then
    say "nvidia-smi lists no GPU; nothing was run"
    exit 2
fi
if ! timeout 120 "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "torch here sees no CUDA device (a CPU build of torch?); install a CUDA build and run again"
    exit 2
fi
{
    timeout 30 nvidia-smi
    timeout 120 "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'nccl', torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None)"
    command -v nvidia-cuda-mps-control || echo "no nvidia-cuda-mps-control"
} >"$RUN_DIR/environment.txt" 2>&1 || true
NAME=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 || true)
TAG=${PIPEPLAN_GPU_TAG:-$(echo "${NAME:-gpu}" | tr '[:upper:] ' '[:lower:]-' | tr -cd 'a-z0-9-')}
say "$GPUS GPU(s): ${NAME:-unknown}; records tagged $TAG; budget ${BUDGET_S} s"

# 2. Probe (pipeplan probe is issue 15's part 1: it may not be in this checkout yet).
PROBE_BACKEND=nccl
((GPUS >= 2)) || PROBE_BACKEND=gloo  # NCCL times links between ranks on different GPUs only
if "$PYTHON" -m pipeplan probe --help >/dev/null 2>&1; then
    if step probe 150 "$PYTHON" -m pipeplan probe --device cuda --backend "$PROBE_BACKEND" \
        --out "$RUN_DIR/cluster.json"; then
        cp "$RUN_DIR/cluster.json" "$HERE/cluster.json"
        say "probed: $HERE/cluster.json (the a-priori predictions below use it)"
    else
        say "the probe did not finish; the a-priori predictions use the datasheet spec in $HERE/cluster.json"
    fi
else
    say "pipeplan probe is not in this checkout (issue 15, part 1); the a-priori predictions use the datasheet" \
        "spec in $HERE/cluster.json"
fi

# 3. Validate. Each entry: MODE PLAN SCALE.
REPORTS=()
validate() {
    local mode=$1 plan=$2 scale=$3 backend=gloo
    shift 3
    [[ $mode == nccl ]] && backend=nccl
    local name
    name="$mode-$(basename "$plan" .json)"
    if step "$name" 110 env "$@" "$PYTHON" -m pipeplan validate "$HERE/plans/$plan" --device cuda \
        --backend "$backend" --scale "$scale" --timeout 100 --iterations 10 --warmup 3 \
        --out "$RUN_DIR/$name.json" --gantt "$RUN_DIR/$name.png"; then
        REPORTS+=("$mode=$RUN_DIR/$name.json")
        tail -n 8 "$RUN_DIR/$name.log" >&2
    fi
}
ONE_GPU=(CUDA_VISIBLE_DEVICES=0)  # several ranks on one GPU, however many there are
validate gloo llama3-8b-1f1b-p2.json 0.25 "${ONE_GPU[@]}" || true
validate gloo llama3-8b-zb-h1-p2.json 0.25 "${ONE_GPU[@]}" || true
if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY="$RUN_DIR/mps-pipe" CUDA_MPS_LOG_DIRECTORY="$RUN_DIR/mps-log"
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if CUDA_VISIBLE_DEVICES=0 timeout 30 nvidia-cuda-mps-control -d; then
        MPS_STARTED=1
        validate mps llama3-8b-1f1b-p2.json 0.25 "${ONE_GPU[@]}" || true
        validate mps llama3-8b-zb-h1-p2.json 0.25 "${ONE_GPU[@]}" || true
        echo quit | timeout 20 nvidia-cuda-mps-control || say "could not stop the MPS daemon"
        MPS_STARTED=0
    else
        say "nvidia-cuda-mps-control -d failed (see $CUDA_MPS_LOG_DIRECTORY); no MPS runs"
    fi
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
else
    say "no nvidia-cuda-mps-control here; no MPS runs"
fi
if ((GPUS >= 2)); then
    validate nccl llama3-8b-1f1b-p2.json 0.25 || true
    validate nccl gpt2-xl-interleaved-p2.json 0.5 || true
    if ((GPUS >= 4)); then
        validate nccl llama3-8b-1f1b-p4.json 0.25 || true
    fi
else
    say "one GPU: no NCCL runs (NCCL takes one rank per GPU)"
fi

# 4. Records, table, figure.
if ((${#REPORTS[@]} == 0)); then
    say "no run finished; nothing recorded"
    exit 1
fi
"$PYTHON" "$HERE/table.py" --tag "$TAG" --records "$RECORDS" "${REPORTS[@]}"
FIRST=${REPORTS[0]#*=}
if [[ -f ${FIRST%.json}.png ]]; then
    cp "${FIRST%.json}.png" "$FIGURE"
    say "side-by-side chart: $FIGURE"
fi
say "done in $(($(date +%s) - STARTED)) s: ${#REPORTS[@]} run(s) recorded"
