#!/usr/bin/env bash
# The semantic cache under load: a router (Redis, in front of one gemma-3-270m service) gets the
# 120 prompts of datasets/prompts/paraphrases.jsonl (60 paraphrase pairs) drawn at random, greedy,
# 240 requests at concurrency 1, once with the semantic cache and once without (the exact cache on
# both times). Prints the cache hit rate and latency of each; results in benchmarks/results/semantic/.
#   BIN_DIR=target/release bash benchmarks/semantic_cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
OUT=benchmarks/results/semantic
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 600); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "no answer from $1" >&2; exit 1; }
run() {  # name, extra load_test flags
  local name=$1; shift
  redis-server --port 16379 --save "" --appendonly no >/dev/null & pids+=($!)
  RUST_LOG=warn "$BIN/inference" --model models/gemma-3-270m-q4_k_m.gguf --model-id m1 --host 127.0.0.1 --port 18101 --threads 2 >/dev/null 2>&1 & pids+=($!)
  wait_http http://127.0.0.1:18101/health
  BACKENDS='{"m1":"http://127.0.0.1:18101"}' REDIS_URL=redis://127.0.0.1:16379 RATE_LIMIT_RPS=0 \
    EMBEDDER_DIR=models/all-MiniLM-L6-v2 ROUTER_MODEL=/nonexistent UI_DIR=/nonexistent RUST_LOG=warn \
    "$BIN/router" --host 127.0.0.1 --port 18080 >/dev/null 2>&1 & pids+=($!)
  wait_http http://127.0.0.1:18080/health
  "$BIN/load_test" --url http://127.0.0.1:18080 --prompts datasets/prompts/paraphrases.jsonl --workload short \
    --repeat-prompts 120 --requests 240 --concurrency 1 --max-tokens 16 --temp 0 --seed 7 --no-plots \
    --label "$name" --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
  curl -fsS http://127.0.0.1:18080/metrics | grep -E '^router_(cache_hits_total|cache_misses_total|semantic_cache_total)' >"$OUT/$name.metrics"
  cleanup; pids=()
  sleep 1
}
run exact-only
run semantic --semantic-cache
for n in exact-only semantic; do
  echo "== $n"; cat "$OUT/$n.metrics"; grep -E '^\| *short' "$OUT/$n.log" | head -3 || true
done
