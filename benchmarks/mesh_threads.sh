#!/usr/bin/env bash
# Threads for a mesh (RESULTS.md, "Threads for a mesh"): three model services (m1 gemma-3-270m, m2
# qwen2.5-coder-0.5b, m3 qwen2.5-coder-1.5b) on this machine's cores behind the router, run once per
# `--threads` value given. Per run, two loads, each load_test's `short` workload (temperature 0.7,
# up to 32 tokens, seed 42): "mixed", three load_tests at once, one per model, concurrency 2,
# 8 requests each; then "m3 alone", one load_test on m3 at concurrency 2, 8 requests.
# Output under benchmarks/results/threads-<T>/{m1,m2,m3,m3-alone}/.
# Usage: benchmarks/mesh_threads.sh THREADS [THREADS ...]    (e.g. 2 1)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
OUT=benchmarks/results
PR=${PR:-18380}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
files=(gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf)
for t in "$@"; do
  backends=""
  for i in 1 2 3; do
    port=$((18300 + i))
    "$BIN/inference" --model "models/${files[$((i - 1))]}" --model-id "m$i" --host 127.0.0.1 --port "$port" \
      --device cpu --threads "$t" >"/tmp/threads-m$i.log" 2>&1 & pids+=($!)
    backends+="\"m$i\":\"http://127.0.0.1:$port\","
  done
  for i in 1 2 3; do until curl -sf "http://127.0.0.1:$((18300 + i))/health" >/dev/null; do sleep 1; done; done
  "$BIN/router" --host 127.0.0.1 --port "$PR" --backends "{${backends%,}}" --rate-limit-rps 0 \
    --health-interval-ms 500 --first-token-timeout-ms 120000 --ui-dir /nonexistent >/tmp/threads-router.log 2>&1 & pids+=($!)
  until curl -sf "http://127.0.0.1:$PR/health" | grep -q '"healthy_backends":3'; do sleep 1; done
  LT="$BIN/load_test --url http://127.0.0.1:$PR --max-tokens 32 --temp 0.7 --seed 42 --workload short --no-plots"
  start=$(date +%s.%N)
  lts=()
  for m in m1 m2 m3; do
    $LT --model "$m" --concurrency 2 --requests 8 --out "$OUT/threads-$t/$m" --label "threads $t, mixed, $m" >/dev/null &
    lts+=($!)
  done
  wait "${lts[@]}"
  echo "threads $t: mixed load wall $(echo "$(date +%s.%N) - $start" | bc) s"
  $LT --model m3 --concurrency 2 --requests 8 --out "$OUT/threads-$t/m3-alone" --label "threads $t, m3 alone" | grep -E '^short +2 ALL'
  cleanup
done
