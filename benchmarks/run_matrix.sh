#!/usr/bin/env bash
# The load-test matrix of benchmarks/RESULTS.md ("Load test"): starts the native CPU mesh (m1 gemma-3-270m,
# m2 qwen2.5-coder-0.5b, m3 qwen2.5-coder-1.5b on the CPU; a router with the learned routing model of
# router/model, the in-process cache, no rate limit and a 120 s first-token timeout), runs load_test for
# each point and leaves CSVs + figures under benchmarks/results/<run>/.
# Usage: benchmarks/run_matrix.sh [REQUESTS_PER_POINT] [MAX_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8}
MT=${2:-32}
BIN=target/debug
OUT=benchmarks/results
P1=${P1:-18101} P2=${P2:-18102} P3=${P3:-18103} PR=${PR:-18080}
[ -n "${SKIP_BUILD:-}" ] || cargo build -q --workspace
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 2  # a service finishing an in-flight request would keep `wait` blocked: don't wait for it
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
$BIN/inference --model models/gemma-3-270m-q4_k_m.gguf --model-id m1 --host 127.0.0.1 --port "$P1" --device cpu --max-concurrent 2 >/tmp/lt-m1.log 2>&1 & pids+=($!)
$BIN/inference --model models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --model-id m2 --host 127.0.0.1 --port "$P2" --device cpu --max-concurrent 2 >/tmp/lt-m2.log 2>&1 & pids+=($!)
$BIN/inference --model models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --model-id m3 --host 127.0.0.1 --port "$P3" --device cpu --max-concurrent 2 >/tmp/lt-m3.log 2>&1 & pids+=($!)
for p in "$P1" "$P2" "$P3"; do
  until curl -sf "http://127.0.0.1:$p/health" >/dev/null; do sleep 1; done
done
$BIN/router --host 127.0.0.1 --port "$PR" --backends "{\"m1\":\"http://127.0.0.1:$P1\",\"m2\":\"http://127.0.0.1:$P2\",\"m3\":\"http://127.0.0.1:$P3\"}" \
  --rate-limit-rps 0 --health-interval-ms 500 --first-token-timeout-ms 120000 --ui-dir /nonexistent >/tmp/lt-router.log 2>&1 & pids+=($!)
until curl -sf "http://127.0.0.1:$PR/health" | grep -q '"healthy_backends":3'; do sleep 1; done
LT="$BIN/load_test --url http://127.0.0.1:$PR --max-tokens $MT --seed 42"
sweep() { $LT --workload "$1" --sweep "${SWEEP:-1,2,4,8}" --requests "${2:-$N}" --out "$OUT/cpu-$1" --label "CPU mesh, $1"; }
sweep short
if [ -z "${SKIP_CACHE:-}" ]; then
  $LT --workload short --concurrency 2 --requests $((2 * N)) --repeat-prompts 4 --out "$OUT/cache-hit" --label "short, 4 recurring prompts"
  $LT --workload short --concurrency 2 --requests $((2 * N)) --out "$OUT/cache-miss" --label "short, no seed (uncacheable)"
fi
if [ -z "${SKIP_MODELS:-}" ]; then
  for m in auto m1 m2 m3; do
    $LT --workload medium --concurrency 2 --requests "$N" --model "$m" --out "$OUT/model-$m" --label "medium, model=$m"
  done
fi
sweep medium
sweep long "${NLONG:-$N}"
