#!/usr/bin/env bash
# The demo's whole pipeline (`cargo xtask demo`) on a GPU machine without a
# Rust toolchain: the same run files (examples/demo/), the kit's `igpo` and
# plugins, every training and evaluation step on `--device $DEVICE` (cuda).
#
#     DEVICE=cuda OUT=/some/dir bash .gpu-kit/demo.sh      (run.sh calls it)
#
# Steps, as the xtask runs them: igpo data synth -> model init (the tiny
# Qwen2) -> sft -> eval (greedy) -> train IGPO -> train GRPO -> eval of the
# IGPO policy. The dev F1 lines of each eval and the trainings' eval.jsonl
# end up in $OUT/demo/. SFT_STEPS / RL_STEPS shorten the runs (to check this
# script on a CPU machine); the demo's own numbers need them unset.
set -euo pipefail

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The repository root: above .gpu-kit/ (the kit), or above tools/gpu-kit/.
ROOT="$KIT"
while [ ! -d "$ROOT/examples/demo" ] && [ "$ROOT" != / ]; do ROOT="$(dirname "$ROOT")"; done
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-/tmp/gpu-check-out}/demo"
IGPO="${IGPO:-$KIT/bin/igpo}"
PLUGINS="${PLUGINS:-$KIT/plugins}"
W="$(mktemp -d /tmp/igpo-demo.XXXXXX)"
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT" "$W/examples/demo" "$W/target/demo" "$W/target/plugins"

# The run files name ../../target/...: give them a target/ of their own.
cp "$ROOT"/examples/demo/*.toml "$W/examples/demo/"
cp "$PLUGINS"/{bm25-search,qa-dataset,qa-reward}.wasm "$W/target/plugins/"
if [ -n "${SFT_STEPS:-}" ]; then
    sed -i "s/^steps = 1000/steps = $SFT_STEPS/" "$W/examples/demo/sft.toml"
    sed -i "s#demo/sft/checkpoints/step-1000#demo/sft/checkpoints/step-$SFT_STEPS#" \
        "$W/examples/demo/igpo.toml" "$W/examples/demo/eval.toml"
fi
if [ -n "${RL_STEPS:-}" ]; then
    sed -i "s/^steps = 30/steps = $RL_STEPS/; s/^every = 5/every = $RL_STEPS/" "$W/examples/demo/igpo.toml"
fi
RL_LAST=$(sed -n 's/^steps = \([0-9]*\)/\1/p' "$W/examples/demo/igpo.toml" | head -1)
D="$W/examples/demo"
export IGPO_CACHE_DIR="${IGPO_CACHE_DIR:-$W/cache}"

stage() { # NAME COMMAND...: one step, timed, output kept
    echo "== demo: $1"
    local t0=$SECONDS name=$1
    shift
    "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== demo: $name done in $((SECONDS - t0)) s"
}

stage synth "$IGPO" data synth --out "$W/target/demo/data" --agent-config "$D/eval.toml" --seed 0 --lazy 0.7
# The demo's policy: xtask/src/demo.rs DEMO_MODEL.
stage init "$IGPO" model init "$W/target/demo/init" --arch qwen2 --hidden 128 --heads 4 --kv-heads 2 \
    --layers 2 --intermediate 384 --tied --dtype f32 --seed 0 \
    --vocab-from "$W/target/demo/data/tokenizer.json"
stage sft "$IGPO" sft --config "$D/sft.toml" --device "$DEVICE"
stage eval-sft "$IGPO" eval --config "$D/eval.toml" --out-dir "$W/target/demo/eval-sft" --device "$DEVICE"
for est in igpo grpo; do
    sed "s/estimator = \"igpo\"/estimator = \"$est\"/; s#demo/igpo\"#demo/$est\"#" "$D/igpo.toml" >"$D/$est-run.toml"
    stage "train-$est" "$IGPO" train --config "$D/$est-run.toml" --device "$DEVICE"
    cp "$W/target/demo/$est/eval.jsonl" "$OUT/$est-eval.jsonl"
    cp "$W/target/demo/$est/metrics.jsonl" "$OUT/$est-metrics.jsonl"
done
sed "s#demo/sft/checkpoints/step-[0-9]*#demo/igpo/checkpoints/step-$RL_LAST#" "$D/eval.toml" >"$D/eval-igpo.toml"
stage eval-igpo "$IGPO" eval --config "$D/eval-igpo.toml" --out-dir "$W/target/demo/eval-igpo" --device "$DEVICE"
echo "== demo on $DEVICE: dev F1 over IGPO / GRPO training (eval.jsonl):"
paste -d' ' <(sed 's/.*"step":\([0-9]*\).*"f1":\([0-9.]*\).*/step \1 IGPO \2/' "$OUT/igpo-eval.jsonl") \
    <(sed 's/.*"f1":\([0-9.]*\).*/GRPO \1/' "$OUT/grpo-eval.jsonl")
