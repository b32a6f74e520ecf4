#!/usr/bin/env bash
# The fault scenarios of benchmarks/RELIABILITY.md. Each one starts a fresh native mesh (redis-server,
# two inference services m1 and m2 serving gemma-3-270m, the router with Redis for its cache and
# limits), puts load_test on it for DUR seconds, breaks one part FAULT_AT seconds in, restores it
# RESTORE_AT seconds in, and stops by itself. It leaves, per scenario, load_test's CSVs (outcomes.csv
# counts the requests by how they ended) and recovery.txt (seconds from the restore until the router
# reported every backend healthy and Redis up again), and benchmarks/results/faults/summary.md.
#
# Usage: benchmarks/faults.sh [SCENARIO ...]
#   scenarios: kill-midstream kill-prefill hang redis-restart router-restart (default: all)
# Needs: target/debug/{inference,router,load_test} (cargo build -p inference -p router -p benchmarks),
#        redis-server, python3, models/gemma-3-270m-q4_k_m.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
OUT=${OUT:-benchmarks/results/faults}
DUR=${DUR:-45} FAULT_AT=${FAULT_AT:-12} RESTORE_AT=${RESTORE_AT:-25}
CONC=${CONC:-4} TIMEOUT=${TIMEOUT:-120}
MODEL=${MODEL:-models/gemma-3-270m-q4_k_m.gguf}
PR=${PR:-18280} P1=${P1:-18281} P2=${P2:-18282} PREDIS=${PREDIS:-18279}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(kill-midstream kill-prefill hang redis-restart router-restart)
mkdir -p "$OUT"
LOGS=$(mktemp -d)
declare -A PID=()

start_redis() { redis-server --port "$PREDIS" --save '' --appendonly no >"$LOGS/redis.log" 2>&1 & PID[redis]=$!; }
start_model() { # id port
  "$BIN/inference" --model "$MODEL" --model-id "$1" --model-name gemma-3-270m --host 127.0.0.1 --port "$2" \
    --device cpu --max-concurrent 2 >>"$LOGS/$1.log" 2>&1 &
  PID[$1]=$!
}
start_router() {
  "$BIN/router" --host 127.0.0.1 --port "$PR" \
    --backends "{\"m1\":\"http://127.0.0.1:$P1\",\"m2\":\"http://127.0.0.1:$P2\"}" \
    --redis-url "redis://127.0.0.1:$PREDIS" --rate-limit-rps 1000 --rate-limit-burst 1000 \
    --health-interval-ms 500 --first-token-timeout-ms 20000 --token-timeout-ms 10000 \
    --router-model /nonexistent --ui-dir /nonexistent >>"$LOGS/router.log" 2>&1 &
  PID[router]=$!
}
stop_all() {
  for p in "${PID[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PID=()
}
trap 'stop_all; echo "logs in $LOGS"' EXIT
# The router's /health once every backend is healthy and Redis is up; waits up to $1 seconds.
full_health() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    if curl -sf -m 2 "http://127.0.0.1:$PR/health" | grep '"healthy_backends":2' | grep -q '"redis":"up"'; then return 0; fi
    sleep 0.2
  done
  return 1
}
ms_now() { date +%s%3N; }

for sc in "${SCENARIOS[@]}"; do
  echo "== $sc"
  start_redis
  start_model m1 "$P1"
  start_model m2 "$P2"
  for p in "$P1" "$P2"; do until curl -sf "http://127.0.0.1:$p/health" >/dev/null; do sleep 0.5; done; done
  start_router
  full_health 60 || { echo "mesh did not come up"; exit 1; }

  # Decode-heavy load for faults that should hit streams mid-way; prefill-heavy (long prompts, few
  # tokens) where the fault should land before the first token; recurring prompts with a seed for
  # the Redis fault so the cache is exercised (hits and misses).
  case $sc in
    kill-prefill) LOAD=(--workload long --max-tokens 8) ;;
    redis-restart) LOAD=(--workload short --max-tokens 32 --repeat-prompts 12) ;;
    *) LOAD=(--workload short --max-tokens 64) ;;
  esac
  "$BIN/load_test" --url "http://127.0.0.1:$PR" --concurrency "$CONC" --duration "$DUR" --timeout "$TIMEOUT" \
    --seed 7 "${LOAD[@]}" --out "$OUT/$sc" --label "fault: $sc" >"$LOGS/load-$sc.log" 2>&1 &
  LT=$!
  sleep "$FAULT_AT"
  case $sc in
    kill-midstream | kill-prefill) kill -9 "${PID[m1]}" ;;
    hang) kill -STOP "${PID[m1]}" ;;
    redis-restart) kill -9 "${PID[redis]}" ;;
    router-restart) kill -TERM "${PID[router]}" ;;
  esac
  echo "fault injected at ${FAULT_AT}s"
  sleep $((RESTORE_AT - FAULT_AT))
  case $sc in
    kill-midstream | kill-prefill) start_model m1 "$P1" ;;
    hang) kill -CONT "${PID[m1]}" ;;
    redis-restart) start_redis ;;
    router-restart) wait "${PID[router]}" 2>/dev/null || true; start_router ;;
  esac
  t0=$(ms_now)
  if full_health 120; then
    rec=$(awk -v a="$t0" -v b="$(ms_now)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
  else
    rec="not recovered within 120 s"
  fi
  echo "restored at ${RESTORE_AT}s; full health after: $rec s"
  echo "$rec" >"$OUT/$sc/recovery.txt" 2>/dev/null || { mkdir -p "$OUT/$sc"; echo "$rec" >"$OUT/$sc/recovery.txt"; }
  wait "$LT" || echo "load_test exited with $?"
  tail -n 12 "$LOGS/load-$sc.log"
  stop_all
done

# The summary covers every scenario with results in $OUT, this run's and earlier ones'.
python3 - "$OUT" kill-midstream kill-prefill hang redis-restart router-restart <<'EOF'
import csv, json, os, sys
out, scenarios = sys.argv[1], sys.argv[2:]
rows = ["| scenario | requests | ok | ok after fallback | stream error (after tokens / before) | HTTP error | transport error | hung past timeout | full health after restore |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for sc in scenarios:
    d = os.path.join(out, sc)
    if not os.path.exists(os.path.join(d, "requests.csv")):
        continue
    with open(os.path.join(d, "requests.csv")) as f:
        recs = list(csv.DictReader(f))
    timeout = json.load(open(os.path.join(d, "run.json"))).get("timeout_s")
    n = len(recs)
    ok = [r for r in recs if r["status"] == "ok"]
    fb = [r for r in ok if int(r.get("routes") or 0) > 1]
    se = [r for r in recs if r["status"] == "stream_error"]
    se_tok = [r for r in se if r["ttft_ms"]]
    he = [r for r in recs if r["status"] == "http_error"]
    te = [r for r in recs if r["status"] == "transport_error"]
    hung = [r for r in recs if "timed out" in r["error"]]
    rec = open(os.path.join(d, "recovery.txt")).read().strip()
    rows.append(f"| {sc} | {n} | {len(ok)} | {len(fb)} | {len(se)} ({len(se_tok)} / {len(se) - len(se_tok)}) | {len(he)} | {len(te)} | {len(hung)} | {rec} s |")
text = "\n".join(rows) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
EOF
