#!/usr/bin/env bash
# The GPU check, one script for a GPU machine that has no Rust toolchain.
#
# `cargo xtask gpu-kit` copies this file (tools/gpu-kit/run.sh) into .gpu-kit/
# beside the compressed, stripped test executables and the release `igpo`.
# On the GPU machine, from the repository root:
#     OUT=/some/dir bash .gpu-kit/run.sh
# It finds the driver, NVRTC and cuBLAS, then runs, each under `timeout`, with
# all output appended to $OUT/gpu-check.log:
#   a  the kernels' GPU tests (kernels/tests/gpu.rs)
#   b  the CUDA backend against the CPU backend, op by op (backend::cuda::tests)
#   d  one SFT step and one RL step, CUDA vs CPU (backend::cuda::tests::train_step_*)
#   h  the NCCL path with one rank (nccl.sh): 2 steps of the demo's IGPO run
#      with the gradients summed through a one-rank NCCL group, equal to a
#      plain run
#   e  tools/bench_side_by_side.sh: igpo and PyTorch on the Qwen2.5-0.5B shape
#      (prefill, decode at batch 1/64/256, a training step at 1x2048 and at
#      8x2048 in micro-batches with MFU, fused scoring vs log_softmax+gather,
#      igpo's IGPO_PROFILE phase breakdown); tables in $OUT/bench/
#   c  a and b under compute-sanitizer memcheck, the attention tests under racecheck
#   g  the agent-rollout bench: 256 concurrent rollouts of a random-weight
#      Qwen2.5-0.5B shape, each calling the instant echo tool once, with and
#      without shared prompt prefixes (igpo bench agent); JSON in $OUT/bench/
#   f  the demo's pipeline on --device cuda (demo.sh) if the budget has room left
#   e  the same bench on the 1.5B shape if the budget has room left
# (d and e run before c: c can take minutes.) A failure is recorded
# and the script goes on; it ends with a PASS/FAIL/SKIPPED table and exits 1 if
# anything failed or timed out, 2 if there is no GPU.
#
# Environment: OUT (default /tmp/gpu-check-out), GPU_CHECK_BUDGET_S (total
# seconds for the steps, default 500), GPU_KIT_ALLOW_NO_GPU=1 (run the steps
# without a GPU: they print SKIPPED; to test this script on a CPU machine).

set -u -o pipefail

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$KIT/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-/tmp/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: >"$LOG"
BUDGET="${GPU_CHECK_BUDGET_S:-500}"
START=$SECONDS
WORK="$(mktemp -d /tmp/igpo-gpu-kit.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
BIN="$WORK/bin"
mkdir -p "$BIN"
# One PTX cache for every step: NVRTC compiles the kernels once.
export IGPO_CACHE_DIR="$WORK/cache"
export RUST_BACKTRACE=1

log() { echo "$*" | tee -a "$LOG"; }

STEPS=()
declare -A STATUS=() SECS=() NOTE=()
FAILED=0

record() { # NAME STATUS SECONDS NOTE
    STEPS+=("$1")
    STATUS[$1]=$2
    SECS[$1]=$3
    NOTE[$1]=$4
    case $2 in FAIL | TIMEOUT) FAILED=1 ;; esac
}

summary() {
    log ""
    log "== summary ($((SECONDS - START)) s in all)"
    log "$(printf '%-28s %-8s %6s  %s' step status secs note)"
    for s in "${STEPS[@]}"; do
        log "$(printf '%-28s %-8s %6s  %s' "$s" "${STATUS[$s]}" "${SECS[$s]}" "${NOTE[$s]}")"
    done
}

# step NAME TIMEOUT_S [optional] -- COMMAND...: runs COMMAND under `timeout`,
# output into the log. An optional step is skipped when less than its whole
# timeout is left; any other step gets what is left of the budget.
step() {
    local name=$1 limit=$2 optional=0
    shift 2
    if [ "$1" = optional ]; then optional=1; shift; fi
    [ "$1" = -- ] && shift
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 20 || (optional && left < limit))); then
        log "== $name: SKIPPED (${left} s of the budget left)"
        record "$name" SKIPPED 0 "budget: ${left} s left"
        return
    fi
    ((limit > left)) && limit=$left
    log ""
    log "== $name (timeout ${limit} s): $*"
    local t0=$SECONDS out="$WORK/step.out"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out" >>"$LOG"
    local rc=${PIPESTATUS[0]}
    local dt=$((SECONDS - t0))
    # the last lines on the console, all of it in the log
    tail -n 4 "$out"
    if ((rc == 124 || rc == 137)); then
        record "$name" TIMEOUT "$dt" "killed after ${limit} s"
    elif ((rc != 0)); then
        local why
        why=$(grep -m1 -E "panicked at|ERROR SUMMARY: [1-9]|error:|FAILED|failures:" "$out" | cut -c1-90)
        record "$name" FAIL "$dt" "exit $rc ${why}"
    elif grep -q "SKIPPED" "$out"; then
        if [ "$GPU" = 1 ]; then
            record "$name" FAIL "$dt" "a test printed SKIPPED on a GPU machine"
        else
            record "$name" SKIPPED "$dt" "no GPU: the tests printed SKIPPED"
        fi
    else
        local n
        n=$(grep -E "^test result:" "$out" | tail -1 | cut -c1-60)
        record "$name" PASS "$dt" "$n"
    fi
}

skip_all() { # REASON
    for s in a-kernels-gpu b-backend-cuda d-train-step c1-memcheck-kernels c2-memcheck-backend e-bench-0.5b; do
        record "$s" SKIPPED 0 "$1"
    done
}

log "== igpo GPU check kit: $(cat "$KIT/MANIFEST" 2>/dev/null | head -1)"
log "date: $(date -u +%FT%TZ)  host: $(uname -srm)  glibc: $(ldd --version 2>/dev/null | head -1)"
cat "$KIT/MANIFEST" >>"$LOG" 2>/dev/null

# ---- the GPU ------------------------------------------------------------
GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >>"$LOG" 2>&1; then
    GPU=1
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | tee -a "$LOG"
    nvidia-smi 2>/dev/null | grep -m1 "CUDA Version" | tee -a "$LOG"
else
    log "NO GPU: nvidia-smi is missing or lists no device (nvidia-smi -L failed)."
    if [ "${GPU_KIT_ALLOW_NO_GPU:-0}" != 1 ]; then
        log "Stopping here: every GPU step needs a device (GPU_KIT_ALLOW_NO_GPU=1 runs them anyway)."
        skip_all "no GPU"
        summary
        exit 2
    fi
    log "GPU_KIT_ALLOW_NO_GPU=1: running the steps anyway (they print SKIPPED)."
fi
log "libcuda: $(ldconfig -p 2>/dev/null | grep -m1 -o '/[^ ]*libcuda\.so\.1' || echo 'not in the ldconfig cache')"

# ---- unpack the binaries ------------------------------------------------
unpack() { # FILE -> $BIN/NAME
    local f=$1 name
    name=$(basename "$f")
    name=${name%.*}
    case $f in
    *.xz)
        if command -v xz >/dev/null; then xz -dc "$f" >"$BIN/$name"; else
            python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$f" "$BIN/$name"
        fi ;;
    *.zst)
        if command -v zstd >/dev/null; then zstd -q -dc --long=31 "$f" >"$BIN/$name"; else
            python3 -c 'import sys,shutil
try:
    from compression import zstd; r = zstd.open(sys.argv[1])
except ImportError:
    import zstandard; r = zstandard.ZstdDecompressor().stream_reader(open(sys.argv[1],"rb"))
shutil.copyfileobj(r, open(sys.argv[2],"wb"))' "$f" "$BIN/$name"
        fi ;;
    *) return 0 ;;
    esac || return 1
    chmod +x "$BIN/$name"
}
t0=$SECONDS
UNPACK_OK=1
for f in "$KIT"/*.xz "$KIT"/*.zst; do
    [ -e "$f" ] || continue
    unpack "$f" || { log "cannot unpack $f"; UNPACK_OK=0; }
done
if [ -f "$KIT/SHA256SUMS" ]; then
    (cd "$BIN" && sha256sum -c "$KIT/SHA256SUMS") >>"$LOG" 2>&1 || { log "checksums differ (see above)"; UNPACK_OK=0; }
fi
log "unpacked into $BIN in $((SECONDS - t0)) s: $(cd "$BIN" && ls | tr '\n' ' ')"
if [ "$UNPACK_OK" != 1 ] || ! "$BIN/igpo" --version >>"$LOG" 2>&1; then
    log "the kit's binaries do not run here (glibc too old? see MANIFEST: needs glibc)"
    "$BIN/igpo" --version 2>&1 | head -3 | tee -a "$LOG"
    skip_all "binaries do not run"
    summary
    exit 1
fi

# ---- NVRTC, headers, cuBLAS ---------------------------------------------
# Prefer the local CUDA (its NVRTC matches the driver), else the NVIDIA wheels
# of the Python environment (torch's nvidia/cu13/lib).
WHEELS=$(python3 -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null || true)
LIBDIRS=("${IGPO_NVRTC_DIR:-}" "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
INCDIRS=("${IGPO_CUDA_INCLUDE:-}" "${CUDA_HOME:-/usr/local/cuda}/include" /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include)
for w in $WHEELS; do
    LIBDIRS+=("$w/cu13/lib" "$w/cuda_nvrtc/lib" "$w/cublas/lib")
    INCDIRS+=("$w/cu13/include" "$w/cuda_runtime/include" "$w/cuda_nvrtc/include")
done
first_with() { # FILE DIR... -> the first DIR holding FILE
    local f=$1 d
    shift
    for d in "$@"; do
        [ -n "$d" ] && [ -e "$d/$f" ] && { (cd "$d" && pwd); return 0; }
    done
    return 1
}
if NVRTC_DIR=$(first_with libnvrtc.so.13 "${LIBDIRS[@]}"); then
    export IGPO_NVRTC_DIR=$NVRTC_DIR
    NVRTC_VERSION=$(python3 -c 'import ctypes,sys
l = ctypes.CDLL(sys.argv[1]); a, b = ctypes.c_int(), ctypes.c_int()
l.nvrtcVersion(ctypes.byref(a), ctypes.byref(b)); print(f"{a.value}.{b.value}")' "$NVRTC_DIR/libnvrtc.so.13" 2>&1)
    log "NVRTC: $NVRTC_DIR/libnvrtc.so.13 (version $NVRTC_VERSION)"
else
    log "NVRTC: libnvrtc.so.13 not found in: ${LIBDIRS[*]}"
fi
if INC=$(first_with cuda_bf16.h "${INCDIRS[@]}"); then
    export IGPO_CUDA_INCLUDE=$INC
    log "CUDA headers: $INC"
else
    log "CUDA headers: cuda_bf16.h not found in: ${INCDIRS[*]}"
fi
# cudarc opens libcublas / libcublasLt by name: put their folders on the path.
for lib in libcublas.so.13 libcublasLt.so.13; do
    if d=$(first_with "$lib" "${LIBDIRS[@]}"); then
        case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
        log "$lib: $d"
    else
        log "$lib: not found in: ${LIBDIRS[*]}"
    fi
done
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
log "compute-sanitizer: ${SANITIZER:-not found}"
log "setup took $((SECONDS - START)) s; budget for the steps: ${BUDGET} s in all"

# ---- the steps ------------------------------------------------------------
KT="$BIN/kernels-gpu-tests"
ET="$BIN/igpo-lib-tests"
TT=(--test-threads=1 --nocapture)

step a-kernels-gpu 60 -- "$KT" "${TT[@]}"
step b-backend-cuda 75 -- "$ET" backend::cuda "${TT[@]}" --skip train_step
step d-train-step 45 -- "$ET" backend::cuda::tests::train_step "${TT[@]}"
if [ "$GPU" = 1 ]; then
    step h-nccl-one-rank 90 -- env DEVICE=cuda IGPO="$BIN/igpo" PLUGINS="$KIT/plugins" \
        OUT="$OUT" bash "$KIT/nccl.sh"
else
    record h-nccl-one-rank SKIPPED 0 "no GPU"
fi
# The issue's side by side with PyTorch (the machine's python3 has torch):
# tools/bench_side_by_side.sh, the same script `cargo xtask bench --device cuda`
# runs; each half under its own timeout so one slow half loses only itself.
# IGPO_PROFILE=1: the igpo half records its per-phase breakdown; the 8x2048
# accumulated training runs too, torch.compile only when COMPILE=1 is asked for
# (compiling can take minutes of the budget).
BENCH=(env IGPO="$BIN/igpo" OUT="$OUT/bench" PYTHON=python3 DEVICE=cuda REPEATS=3 HALF_TIMEOUT=120
    IGPO_PROFILE=1 COMPILE="${COMPILE:-0}" ACCUM_BATCH="${ACCUM_BATCH:-8}"
    TOKENIZER="$KIT/tokenizer.json" bash "$ROOT/tools/bench_side_by_side.sh")
if [ "$GPU" = 1 ]; then
    step e-bench-0.5b 240 -- "${BENCH[@]}" qwen2.5-0.5b
else
    record e-bench-0.5b SKIPPED 0 "no GPU"
fi
if [ -n "$SANITIZER" ]; then
    MC=("$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 30)
    step c1-memcheck-kernels 90 -- "${MC[@]}" "$KT" "${TT[@]}"
    step c2-memcheck-backend 80 -- "${MC[@]}" "$ET" backend::cuda "${TT[@]}"
    # Shared-memory races in the attention kernels (cp.async double buffers,
    # ldmatrix reads): the attention tests under racecheck.
    RC=("$SANITIZER" --tool racecheck --error-exitcode 1 --print-limit 30)
    step c3-racecheck-attention 120 optional -- "${RC[@]}" "$KT" attention "${TT[@]}"
else
    record c1-memcheck-kernels SKIPPED 0 "no compute-sanitizer"
    record c2-memcheck-backend SKIPPED 0 "no compute-sanitizer"
    record c3-racecheck-attention SKIPPED 0 "no compute-sanitizer"
fi
# The agent-rollout bench, with shared prompt prefixes and without (its own
# bash: `timeout` runs no shell function).
AGENT_BENCH='set -e
model="$WORK/agent-bench-model"
# The real Qwen2.5 tokenizer (unpacked with the binaries): the tiny one of
# the kit cannot spell the forced tool call.
"$BIN/igpo" model init "$model" --preset qwen2.5-0.5b --vocab-from "$BIN/qwen2.5-tokenizer.json"
cp "$BIN/qwen2.5-tokenizer.json" "$model/tokenizer.json"
mkdir -p "$OUT/bench"
for sharing in "" --no-prefix-sharing; do
    "$BIN/igpo" bench agent --device cuda --model "$model" --tool "$KIT/plugins/echo-tool.wasm" \
        --rollouts 256 --group-size 16 --max-new-tokens 128 $sharing \
        --out "$OUT/bench/agent${sharing:+-unshared}.json"
done'
if [ "$GPU" = 1 ]; then
    step g-agent-bench 120 optional -- env BIN="$BIN" KIT="$KIT" OUT="$OUT" WORK="$WORK" bash -c "$AGENT_BENCH"
    # The demo's whole pipeline (SFT, IGPO, GRPO, evals) on the GPU: its dev
    # F1 beside the CPU run's (README). Last, and only with the time it needs.
    step f-demo-cuda 420 optional -- env DEVICE=cuda IGPO="$BIN/igpo" PLUGINS="$KIT/plugins" \
        OUT="$OUT" bash "$KIT/demo.sh"
    step e-bench-1.5b 240 optional -- "${BENCH[@]}" qwen2.5-1.5b
fi

# The device tool brings back only a handful of files: the bench's JSON and
# tables travel as one archive, without the random-weight models.
if [ -d "$OUT/bench" ]; then
    rm -rf "$OUT"/bench/model-*
    tar czf "$OUT/bench.tgz" -C "$OUT" bench && rm -rf "$OUT/bench"
fi
summary
exit "$FAILED"
