#!/usr/bin/env bash
# The NCCL path with one rank (issue 26), on a GPU machine without MPI: the
# demo's IGPO run file for 2 steps on the demo's tiny Qwen2 (random weights,
# the demo's synthetic world; an entropy bonus, so the untrained policy has
# gradients), once as a plain process and once with its
# gradients and start-up broadcast going through a one-rank NCCL group
# (IGPO_NCCL=1), in buckets of 0.05 MiB (each layer its own, summed with
# ncclAllReduce while the backward runs). A one-rank sum is the identity, so
# the two runs' metrics must be equal, bit for bit.
#
#     OUT=/some/dir bash .gpu-kit/nccl.sh            (run.sh calls it)
#
# libnccl.so.2 comes from the nvidia-nccl wheel PyTorch installs (python3's
# site-packages). DEVICE=cpu NCCL_OPTIONAL=1 checks this script on a CPU
# machine (the CPU backend has no device group: both runs are plain).
set -euo pipefail

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$KIT"
while [ ! -d "$ROOT/examples/demo" ] && [ "$ROOT" != / ]; do ROOT="$(dirname "$ROOT")"; done
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-/tmp/gpu-check-out}/nccl"
IGPO="${IGPO:-$KIT/bin/igpo}"
PLUGINS="${PLUGINS:-$KIT/plugins}"
W="$(mktemp -d /tmp/igpo-nccl.XXXXXX)"
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT" "$W/examples/demo" "$W/target/demo" "$W/target/plugins"

NCCL_LIB=$(python3 - <<'PY' || true
import glob, os, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for f in sorted(glob.glob(os.path.join(d, "nvidia", "nccl", "lib", "libnccl.so*"))):
        print(os.path.dirname(f))
        sys.exit(0)
PY
)
if [ -n "$NCCL_LIB" ]; then
    echo "libnccl: $NCCL_LIB"
    export LD_LIBRARY_PATH="$NCCL_LIB:${LD_LIBRARY_PATH:-}"
elif [ -z "${NCCL_OPTIONAL:-}" ]; then
    echo "error: no libnccl.so* under python3's site-packages (nvidia/nccl/lib)"
    exit 1
fi

cp "$ROOT"/examples/demo/*.toml "$W/examples/demo/"
cp "$PLUGINS"/{bm25-search,qa-dataset,qa-reward}.wasm "$W/target/plugins/"
D="$W/examples/demo"
export IGPO_CACHE_DIR="${IGPO_CACHE_DIR:-$W/cache}"
"$IGPO" -q data synth --out "$W/target/demo/data" --agent-config "$D/eval.toml" --seed 0 --lazy 0.7
"$IGPO" -q model init "$W/target/demo/init" --arch qwen2 --hidden 128 --heads 4 --kv-heads 2 \
    --layers 2 --intermediate 384 --tied --dtype f32 --seed 0 \
    --vocab-from "$W/target/demo/data/tokenizer.json"
sed 's#^model = .*#model = "../../target/demo/init"#' "$D/igpo.toml" >"$D/rl.toml"
for mode in plain nccl; do
    echo "== $mode"
    env $([ "$mode" = nccl ] && echo IGPO_NCCL=1) "$IGPO" train --config "$D/rl.toml" --device "$DEVICE" \
        --set train.steps=2 --set eval.limit=25 --set loss.entropy_coef=0.01 \
        --set "optim.bucket_mb=$([ "$mode" = nccl ] && echo 0.05 || echo 0)" \
        --set "train.run_dir=\"../../target/demo/rl-$mode\"" \
        2>&1 | tee "$OUT/$mode.log"
    cp "$W/target/demo/rl-$mode/metrics.jsonl" "$OUT/$mode-metrics.jsonl"
done
if [ "$DEVICE" != cpu ] && ! grep -q "gradients summed on the device" "$OUT/nccl.log"; then
    echo "error: the IGPO_NCCL=1 run did not join an NCCL group (see $OUT/nccl.log)"
    exit 1
fi
python3 - "$OUT/plain-metrics.jsonl" "$OUT/nccl-metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) == 2, (len(a), len(b))
differ = [(i + 1, k, x[k], y.get(k)) for i, (x, y) in enumerate(zip(a, b))
          for k in x if not k.endswith("_s") and x[k] != y.get(k)]
for d in differ:
    print("differs: step %d %s: %r vs %r" % d)
print("NCCL one-rank run vs plain run: %s" % ("equal, every metric of both steps" if not differ else "%d metrics differ" % len(differ)))
sys.exit(1 if differ else 0)
PY
