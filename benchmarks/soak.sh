#!/usr/bin/env bash
# The soak of benchmarks/RELIABILITY.md: a native mesh (redis-server, m1 and m2 serving gemma-3-270m, the
# router with Redis and the learned policy: router/model and the MiniLM embedder) under SECS seconds of
# steady mixed load: one load_test stream of recurring prompts with a seed (cache hits after their first
# answer), one of fresh uncacheable requests (misses), and a churn stream (benchmarks/churn.py: new
# prompts, some of 12-16k characters, and recurring ones; each with a new random X-API-Key and a new
# X-Forwarded-For, or one of 2,000 known keys with a limit of its own), so that the embedding cache, the
# limiter's buckets and /last_request_stats all see identities and prompts they have never seen.
# Every 10 s it samples the resident memory (VmRSS) of every process into memory.csv. It stops by itself
# and leaves, under benchmarks/results/soak/: hits/ and misses/ (load_test's CSVs), churn.csv, memory.csv,
# and summary.md (outcomes, and each process's memory after warm-up against the end).
# Usage: benchmarks/soak.sh [SECS]     (default 600; WARMUP seconds, default 120, are left out of the growth)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
WARMUP=${WARMUP:-120}
BIN=${BIN:-target/debug}
OUT=${OUT:-benchmarks/results/soak}
MODEL=${MODEL:-models/gemma-3-270m-q4_k_m.gguf}
PR=${PR:-18380} P1=${P1:-18381} P2=${P2:-18382} PREDIS=${PREDIS:-18379}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
declare -A PID=()
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  echo "logs in $LOGS"
}
trap cleanup EXIT

python3 benchmarks/churn.py --write-keys "$LOGS/keys.json" --known-keys 2000
redis-server --port "$PREDIS" --save '' --appendonly no >"$LOGS/redis.log" 2>&1 & PID[redis]=$!
for m in m1 m2; do
  port=$P1; [ $m = m2 ] && port=$P2
  "$BIN/inference" --model "$MODEL" --model-id $m --model-name gemma-3-270m --host 127.0.0.1 --port "$port" \
    --device cpu --max-concurrent 2 >"$LOGS/$m.log" 2>&1 & PID[$m]=$!
done
for p in "$P1" "$P2"; do until curl -sf "http://127.0.0.1:$p/health" >/dev/null; do sleep 0.5; done; done
"$BIN/router" --host 127.0.0.1 --port "$PR" --backends "{\"m1\":\"http://127.0.0.1:$P1\",\"m2\":\"http://127.0.0.1:$P2\"}" \
  --redis-url "redis://127.0.0.1:$PREDIS" --rate-limit-rps 1000 --rate-limit-burst 1000 --health-interval-ms 1000 \
  --rate-limit-overrides "$LOGS/keys.json" --router-model router/model --embedder-dir models/all-MiniLM-L6-v2 \
  --ui-dir /nonexistent >"$LOGS/router.log" 2>&1 & PID[router]=$!
until curl -sf "http://127.0.0.1:$PR/health" | grep '"healthy_backends":2' | grep -q '"redis":"up"'; do sleep 0.5; done

LT=("$BIN/load_test" --url "http://127.0.0.1:$PR" --duration "$SECS" --timeout 120 --workload short --max-tokens 24 --no-plots)
"${LT[@]}" --concurrency 2 --seed 11 --repeat-prompts 24 --out "$OUT/hits" --label "soak, recurring prompts" >"$LOGS/hits.log" 2>&1 &
H=$!
"${LT[@]}" --concurrency 2 --seed 12 --out "$OUT/misses" --label "soak, fresh prompts" >"$LOGS/misses.log" 2>&1 &
M=$!
python3 benchmarks/churn.py --url "http://127.0.0.1:$PR" --duration "$SECS" --known-keys 2000 \
  --out "$OUT/churn.csv" >"$LOGS/churn.log" 2>&1 &
C=$!

echo "t_s,process,rss_kib" >"$OUT/memory.csv"
t0=$SECONDS
while kill -0 "$H" 2>/dev/null || kill -0 "$M" 2>/dev/null || kill -0 "$C" 2>/dev/null; do
  t=$((SECONDS - t0))
  for name in router m1 m2 redis; do
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/${PID[$name]}/status" 2>/dev/null || echo "")
    echo "$t,$name,${rss:-gone}" >>"$OUT/memory.csv"
  done
  sleep 10
done
wait "$H" || true
wait "$M" || true
wait "$C" || true

python3 - "$OUT" "$WARMUP" <<'EOF'
import csv, os, sys
out, warmup = sys.argv[1], int(sys.argv[2])
lines = []
for part in ("hits", "misses"):
    with open(os.path.join(out, part, "outcomes.csv")) as f:
        rows = list(csv.DictReader(f))
    total = sum(int(r["count"]) for r in rows)
    lines.append(f"**{part}**: {total} requests: " + ", ".join(f'{r["status"]} {r["http_status"]}: {r["count"]}' for r in rows))
    with open(os.path.join(out, part, "requests.csv")) as f:
        recs = list(csv.DictReader(f))
    hits = sum(r["cache_hit"] == "true" for r in recs)
    lines.append(f"  (cache hits {hits} of {len(recs)})")
with open(os.path.join(out, "churn.csv")) as f:
    recs = list(csv.DictReader(f))
for kind in ("fresh", "identity"):
    by = {}
    for r in recs:
        if r["worker"] == kind:
            by[r["status"]] = by.get(r["status"], 0) + 1
    lines.append(f"**churn, {kind}**: {sum(by.values())} requests: " + ", ".join(f"HTTP {k}: {v}" for k, v in sorted(by.items())))
mem = {}
with open(os.path.join(out, "memory.csv")) as f:
    for r in csv.DictReader(f):
        if r["rss_kib"].isdigit():
            mem.setdefault(r["process"], []).append((int(r["t_s"]), int(r["rss_kib"])))
lines += ["", "| process | RSS at warm-up end (MiB) | RSS at the end (MiB) | growth | max (MiB) |", "|---|---:|---:|---:|---:|"]
for p, s in mem.items():
    after = [v for t, v in s if t >= warmup] or [s[-1][1]]
    a, b = after[0], after[-1]
    lines.append(f"| {p} | {a/1024:.1f} | {b/1024:.1f} | {100*(b-a)/a:+.1f}% | {max(v for _, v in s)/1024:.1f} |")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
EOF
