#!/bin/bash
# Data-parallel SFT of SmolLM2-135M-Instruct on 2 ranks (mpirun), one
# micro-batch a rank a step: each rank's peak RSS and the step's tokens/s
# with the gradients summed after the backward (optim.bucket_mb = 0) or in
# 25 MiB buckets during it, for ZeRO stages 0, 1 and 2. docs/benchmarks.md
# has the numbers. Needs Open MPI, GNU time, an igpo built with the `mpi`
# feature and the imported model (`cargo xtask test` makes both):
#   IGPO=target/debug/igpo bash tools/bench_data_parallel.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
igpo=${IGPO:-$root/target/release/igpo}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/sft.toml" <<TOML
model = "$root/target/models/smollm2-135m-instruct"

[data]
train = "$root/examples/sft/capitals.jsonl"
max_seq_len = 128

[train]
run_dir = "$work/run"
steps = 4
micro_batch = 4
grad_accum = 2
seed = 0
checkpoint_every = 0
keep_last = 1

[optim]
lr = 5e-5
TOML
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
printf '%-6s %-10s %-26s %-22s %s\n' stage bucket_mb "peak RSS rank 0, 1 (GB)" "tok/s steps 2-4" "losses"
for stage in 0 1 2; do
  for mb in 0 25; do
    rm -rf "$work/run"
    # Each rank's peak resident set, labelled with its rank.
    mpirun --oversubscribe -np 2 bash -c '/usr/bin/time -f "rank $OMPI_COMM_WORLD_RANK maxrss_kb %M" "$0" "$@"' \
      "$igpo" sft --config "$work/sft.toml" --set optim.zero_stage=$stage --set optim.bucket_mb=$mb \
      > "$work/out" 2> "$work/err" || { cat "$work/err"; exit 1; }
    rss=$(grep -h maxrss_kb "$work/err" | sort | awk '{printf "%.2f ", $4/1e6}')
    python3 - "$stage" "$mb" "$rss" "$work/run/metrics.jsonl" <<'PY'
import json, sys
stage, mb, rss, path = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
tps = [round(r["tokens_per_s"]) for r in rows[1:]]
print(f"{stage:<6} {mb:<10} {rss:<26} {str(tps):<22} {[round(r['loss'], 4) for r in rows]}")
PY
  done
done
