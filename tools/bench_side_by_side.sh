#!/usr/bin/env bash
# The engine and PyTorch side by side on random weights of real model shapes:
# what `cargo xtask bench --device cuda` runs, and the GPU kit's bench step
# (tools/gpu-kit/run.sh), so both measure the same things the same way.
#
#     IGPO=target/release/igpo OUT=target/bench/cuda PYTHON=python3 DEVICE=cuda \
#         bash tools/bench_side_by_side.sh qwen2.5-0.5b [qwen2.5-1.5b ...]
#
# For each preset: `igpo model init` writes random weights (bf16 safetensors +
# config.json + the Qwen2.5 tokenizer) that both engines load; then
#   igpo bench forward  /  bench_torch.py forward   (prefill, decode, training step)
#   the same, training only, at ACCUM_BATCH x TRAIN_SEQ tokens per optimizer step in micro-batches
#     of ACCUM_MICRO sequences (gradient accumulation), PyTorch also under torch.compile
#   igpo bench attention / bench_torch.py attention (causal attention at TRAIN_SEQ, the preset's heads:
#     our kernels vs SDPA's FlashAttention backend, TFLOP/s forward and backward)
#   igpo bench score    /  bench_torch.py score     (fused log-prob vs log_softmax+gather)
#   bench_compare.py: the table with ratios and MFU -> $OUT/PRESET.md, $OUT/PRESET.json
# Sizes come from the environment (defaults: the issue's GPU measurements):
#   PREFILL=2048 DECODE_TOKENS=32 BATCHES=1,64,256 TRAIN_SEQ=2048 TRAIN_BATCH=1
#   SCORE_TOKENS=8192 REPEATS=3 PEAK_TFLOPS, PEAK_GBS (default: from the GPU's name)
#   DECODE_PROMPT=1024 (context before the timed decode steps) BATCHES=1,64,256,512
#   ACCUM_BATCH=8 ACCUM_MICRO=1 (ACCUM_BATCH=0 skips that run) COMPILE=1 (0: no torch.compile column)
#   IGPO_PROFILE=1 (the igpo side prints and records its per-phase breakdown)
#   HALF_TIMEOUT (seconds for each half; unset: no limit)
# A failed half is reported and the other half still runs; exit 1 if any failed.

set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IGPO="${IGPO:-$ROOT/target/release/igpo}"
OUT="${OUT:-$ROOT/target/bench/side-by-side}"
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
TOKENIZER="${TOKENIZER:-$ROOT/tools/gpu-kit/tokenizer.json}"
PREFILL="${PREFILL:-2048}"
DECODE_TOKENS="${DECODE_TOKENS:-32}"
BATCHES="${BATCHES:-1,64,256,512}"
DECODE_PROMPT="${DECODE_PROMPT:-1024}"
TRAIN_SEQ="${TRAIN_SEQ:-2048}"
TRAIN_BATCH="${TRAIN_BATCH:-1}"
SCORE_TOKENS="${SCORE_TOKENS:-8192}"
REPEATS="${REPEATS:-3}"
ACCUM_BATCH="${ACCUM_BATCH:-8}"
ACCUM_MICRO="${ACCUM_MICRO:-1}"
COMPILE="${COMPILE:-1}"
THREADS="${THREADS:-$(nproc)}"

[ $# -ge 1 ] || { echo "usage: bench_side_by_side.sh PRESET [PRESET...]" >&2; exit 2; }
mkdir -p "$OUT"
if [ -z "${PEAK_TFLOPS:-}" ] && [ "${DEVICE%%:*}" = cuda ]; then
    # Dense bf16 tensor-core peak of the device (datasheet numbers).
    case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
    *H100* | *H200* | *H800* | *H20*) PEAK_TFLOPS=989 ;;
    *A100* | *A800*) PEAK_TFLOPS=312 ;;
    *L40S*) PEAK_TFLOPS=362 ;;
    *) PEAK_TFLOPS= ;;
    esac
fi
if [ -z "${PEAK_GBS:-}" ] && [ "${DEVICE%%:*}" = cuda ]; then
    # Peak memory bandwidth, GB/s (datasheet numbers): decode's limit.
    case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
    *H200*) PEAK_GBS=4800 ;;
    *H100*SXM* | *H100\ 80GB\ HBM3*) PEAK_GBS=3350 ;;
    *H100*) PEAK_GBS=2000 ;;
    *A100*80GB*) PEAK_GBS=2039 ;;
    *A100*) PEAK_GBS=1555 ;;
    *L40S*) PEAK_GBS=864 ;;
    *) PEAK_GBS= ;;
    esac
fi
FAILED=0
half() { # LABEL COMMAND...: runs one half, keeps going when it fails
    local label=$1
    shift
    echo "== $label: $*"
    local t0=$SECONDS
    [ -n "${HALF_TIMEOUT:-}" ] && set -- timeout -k 5 "$HALF_TIMEOUT" "$@"
    if "$@"; then
        echo "== $label: done in $((SECONDS - t0)) s"
    else
        echo "== $label: FAILED (exit $?) after $((SECONDS - t0)) s"
        FAILED=1
    fi
}

for preset in "$@"; do
    model="$OUT/model-$preset"
    rm -rf "$model" "$OUT/$preset"-*.json "$OUT/$preset.json" "$OUT/$preset.md"
    torch_compile=()
    [ "$COMPILE" = 1 ] && torch_compile=(--compile)
    half "$preset: random weights" "$IGPO" model init "$model" --preset "$preset" --vocab-from "$TOKENIZER"
    [ -f "$model/config.json" ] || { FAILED=1; continue; }
    read -r dim vocab heads kv_heads < <("$PYTHON" -c 'import json,sys; c = json.load(open(sys.argv[1])); print(c["hidden_size"], c["vocab_size"], c["num_attention_heads"], c["num_key_value_heads"])' "$model/config.json")
    at=(--seq "$TRAIN_SEQ" --heads "$heads" --kv-heads "$kv_heads" --head-dim "$((dim / heads))" --repeats "$REPEATS")
    fw=(--prefill-tokens "$PREFILL" --decode-prompt-tokens "$DECODE_PROMPT" --decode-tokens "$DECODE_TOKENS" --batches "$BATCHES"
        --repeats "$REPEATS" --train-seq "$TRAIN_SEQ" --train-batch "$TRAIN_BATCH")
    sc=(--tokens "$SCORE_TOKENS" --hidden "$dim" --vocab "$vocab" --repeats "$REPEATS")
    half "$preset: igpo forward" "$IGPO" bench forward --model "$model" --device "$DEVICE" "${fw[@]}" \
        --out "$OUT/$preset-forward-igpo.json"
    half "$preset: pytorch forward" "$PYTHON" "$ROOT/tools/bench_torch.py" forward --model "$model" \
        --device "$DEVICE" --threads "$THREADS" "${fw[@]}" --out "$OUT/$preset-forward-pytorch.json"
    if [ "$ACCUM_BATCH" -gt 0 ]; then
        # Training only (prefill and decode kept tiny): tokens per optimizer step as RL trains.
        acc=(--prefill-tokens 16 --decode-tokens 2 --batches 1 --repeats "$REPEATS" --train-seq "$TRAIN_SEQ"
             --train-batch "$ACCUM_BATCH" --train-micro-batch "$ACCUM_MICRO")
        half "$preset: igpo train ${ACCUM_BATCH}x$TRAIN_SEQ" "$IGPO" bench forward --model "$model" \
            --device "$DEVICE" "${acc[@]}" --out "$OUT/$preset-accum-igpo.json"
        half "$preset: pytorch train ${ACCUM_BATCH}x$TRAIN_SEQ" "$PYTHON" "$ROOT/tools/bench_torch.py" forward \
            --model "$model" --device "$DEVICE" --threads "$THREADS" "${acc[@]}" "${torch_compile[@]}" \
            --out "$OUT/$preset-accum-pytorch.json"
    fi
    half "$preset: igpo attention" "$IGPO" bench attention --device "$DEVICE" "${at[@]}" \
        --out "$OUT/$preset-attention-igpo.json"
    half "$preset: pytorch attention" "$PYTHON" "$ROOT/tools/bench_torch.py" attention --device "$DEVICE" \
        --threads "$THREADS" "${at[@]}" --out "$OUT/$preset-attention-pytorch.json"
    half "$preset: igpo score" "$IGPO" bench score --device "$DEVICE" "${sc[@]}" \
        --out "$OUT/$preset-score-igpo.json"
    half "$preset: pytorch score" "$PYTHON" "$ROOT/tools/bench_torch.py" score --device "$DEVICE" \
        --threads "$THREADS" "${sc[@]}" --out "$OUT/$preset-score-pytorch.json"
    rm -rf "$model"
    compare=(--title "$preset shape, random weights, $DEVICE")
    [ -f "$OUT/$preset-forward-igpo.json" ] && [ -f "$OUT/$preset-forward-pytorch.json" ] &&
        compare+=(--forward "$OUT/$preset-forward-igpo.json" "$OUT/$preset-forward-pytorch.json")
    [ -f "$OUT/$preset-accum-igpo.json" ] && [ -f "$OUT/$preset-accum-pytorch.json" ] &&
        compare+=(--forward "$OUT/$preset-accum-igpo.json" "$OUT/$preset-accum-pytorch.json")
    [ -f "$OUT/$preset-attention-igpo.json" ] && [ -f "$OUT/$preset-attention-pytorch.json" ] &&
        compare+=(--attention "$OUT/$preset-attention-igpo.json" "$OUT/$preset-attention-pytorch.json")
    [ -f "$OUT/$preset-score-igpo.json" ] && [ -f "$OUT/$preset-score-pytorch.json" ] &&
        compare+=(--score "$OUT/$preset-score-igpo.json" "$OUT/$preset-score-pytorch.json")
    [ -n "${PEAK_TFLOPS:-}" ] && compare+=(--peak-tflops "$PEAK_TFLOPS")
    [ -n "${PEAK_GBS:-}" ] && compare+=(--peak-gbs "$PEAK_GBS")
    if [ ${#compare[@]} -gt 2 ]; then
        half "$preset: table" "$PYTHON" "$ROOT/tools/bench_compare.py" "${compare[@]}" \
            --out "$OUT/$preset.json" --markdown "$OUT/$preset.md"
    fi
done
exit "$FAILED"
