#!/usr/bin/env bash
# Continuous batching through the router (RESULTS.md, "Continuous batching"): one model service, m2
# (qwen2.5-coder-0.5b), behind the router (in-process cache, no rate limit), and load_test's short
# workload forced to m2 at concurrency 1, 2, 4 and 8, 16 requests per point, 64 tokens each; once per
# inference binary given, one after the other on the same machine. CSVs and figures go to
# benchmarks/results/batching-<label>/.
# Usage: benchmarks/batching_router.sh LABEL BINARY MAX_CONCURRENT [LABEL BINARY MAX_CONCURRENT ...]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
OUT=benchmarks/results
PM=${PM:-18202} PR=${PR:-18280}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
while [ $# -ge 3 ]; do
  label=$1 binary=$2 slots=$3
  shift 3
  "$binary" --model models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --model-id m2 --host 127.0.0.1 --port "$PM" \
    --device cpu --max-concurrent "$slots" >"/tmp/batching-$label.log" 2>&1 & pids+=($!)
  until curl -sf "http://127.0.0.1:$PM/health" >/dev/null; do sleep 1; done
  "$BIN/router" --host 127.0.0.1 --port "$PR" --backends "{\"m2\":\"http://127.0.0.1:$PM\"}" \
    --rate-limit-rps 0 --health-interval-ms 500 --first-token-timeout-ms 120000 --ui-dir /nonexistent \
    >"/tmp/batching-router-$label.log" 2>&1 & pids+=($!)
  until curl -sf "http://127.0.0.1:$PR/health" | grep -q '"healthy_backends":1'; do sleep 1; done
  "$BIN/load_test" --url "http://127.0.0.1:$PR" --max-tokens 64 --temp 0.7 --seed 42 --workload short --model m2 \
    --sweep 1,2,4,8 --requests 16 --out "$OUT/batching-$label" --label "m2 through the router, $label"
  cleanup
done
