#!/usr/bin/env bash
# `docker-compose up` for real, with podman (../shared/CONTAINERS.md): builds the images from
# binaries compiled on the host (BINARIES=host), brings up redis, the models init service, m1, m2,
# the router and Prometheus, waits for every healthcheck, then checks through :8080: an SSE
# /generate (route, token and done events), the same request answered `X-Cache: HIT` from the
# Redis container, /v1/chat/completions with the official openai client, the UI at /, every
# Prometheus target up, the closed loop (`docker-compose run --rm trainer train` writes a model
# that the running router hot-reloads), a 429 past the burst, every service stopping on SIGTERM
# within a few seconds, and `docker-compose down` leaving no container.
#
# Needs: the host binaries (cargo build; debug by default, BIN_DIR to change), models/ holding
# gemma, qwen-0.5b and MiniLM (fetch-models --only gemma,qwen05,minilm), ui/dist (npm run build).
# Installs podman, runc, netavark, debootstrap and docker-compose with apt when missing; where
# podman cannot be installed it says so loudly and exits 0 (COMPOSE_TEST_REQUIRED=1 makes it fail).
# Run as root (podman's rootful mode; the VM has no user namespaces set up for rootless).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
T0=$(date +%s)
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
MODELS=${MODELS_DIR:-models}
PROJECT=polyllm-test
WORK=$(mktemp -d /tmp/polyllm-compose.XXXXXX)
SOCK_DIR=/run/polyllm-podman
export CONTAINERS_CONF="$REPO/docker/podman/containers.conf"
export DOCKER_HOST="unix://$SOCK_DIR/podman.sock"
export COMPOSE_TEST_MODELS_DIR COMPOSE_TEST_PROMETHEUS_YML="$WORK/prometheus.yml"
COMPOSE_TEST_MODELS_DIR=$(cd "$MODELS" && pwd)
# docker-compose 1.29 talks to podman's Docker API; BuildKit is Docker's, not podman's.
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
DC=(docker-compose -p "$PROJECT" -f docker-compose.yml -f docker/compose-test/docker-compose.test.yml)
SERVICES=(redis models m1 m2 router prometheus)
URL=http://127.0.0.1:8080

say() { echo "== compose-test [$(( $(date +%s) - T0 ))s]: $*"; }
fail() { echo "== compose-test FAILED: $*" >&2; exit 1; }
skip() {
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!! compose-test SKIPPED: $*" >&2
  echo "!! docker-compose.yml was NOT run on this machine." >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  [ "${COMPOSE_TEST_REQUIRED:-0}" = 1 ] && exit 1
  exit 0
}

for f in inference fetch-models router trainer; do
  [ -x "$BIN_DIR/$f" ] || fail "$BIN_DIR/$f is missing: cargo build -p inference -p router -p trainer --bins"
done
for f in gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf all-MiniLM-L6-v2/model.safetensors; do
  [ -f "$MODELS/$f" ] || fail "$MODELS/$f is missing: fetch-models --only gemma,qwen05,minilm"
done
[ -f ui/dist/index.html ] || fail "ui/dist is missing: (cd ui && npm ci && npm run build)"

# --- podman and friends -------------------------------------------------------------------------
need=()
for c in podman runc netavark debootstrap docker-compose; do
  command -v "$c" >/dev/null || [ -x "/usr/lib/podman/$c" ] || need+=("$c")
done
[ -x /usr/lib/podman/aardvark-dns ] || command -v aardvark-dns >/dev/null || need+=(aardvark-dns)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (and iptables, uidmap, tini-free runtime deps)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
      podman runc netavark aardvark-dns iptables uidmap debootstrap docker-compose >/dev/null; } \
    || skip "podman could not be installed with apt-get"
fi
[ "$(id -u)" -eq 0 ] || skip "podman's rootful mode needs root (run the test command as root)"
podman info >/dev/null 2>&1 || skip "podman is installed but does not run here: $(podman info 2>&1 | tail -1)"

cleanup() {
  local rc=$?
  set +e
  if [ -n "${STARTED:-}" ]; then
    [ $rc -ne 0 ] && { say "logs of the failed run"; "${DC[@]}" logs --no-color --tail 40 2>&1 | tail -200; }
    "${DC[@]}" --profile tools down -v -t 10 >/dev/null 2>&1
  fi
  [ -n "${HC_PID:-}" ] && kill "$HC_PID" 2>/dev/null
  [ -n "${SVC_PID:-}" ] && kill "$SVC_PID" 2>/dev/null
  rm -rf "$WORK" "$REPO/docker/.host" "$REPO"/docker/ca-certificates/host-*.crt
  exit $rc
}
trap cleanup EXIT

# --- the Debian base image, made without pulling ------------------------------------------------
if ! podman image exists localhost/debian:bookworm-slim; then
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
  say "making the debian:bookworm-slim base with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; skip "debootstrap could not make a base image"; }
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | podman import -q - localhost/debian:bookworm-slim >/dev/null
  rm -rf "$WORK/rootfs"
fi

# --- podman's Docker API for docker-compose, and healthchecks without systemd ---------------------
mkdir -p "$SOCK_DIR"
rm -f "$SOCK_DIR/podman.sock"
podman system service --time=0 "$DOCKER_HOST" >"$WORK/podman-service.log" 2>&1 &
SVC_PID=$!
for _ in $(seq 50); do [ -S "$SOCK_DIR/podman.sock" ] && break; sleep 0.2; done
[ -S "$SOCK_DIR/podman.sock" ] || fail "podman system service did not start: $(cat "$WORK/podman-service.log")"
# podman 4.3 schedules healthchecks with systemd timers; there is no systemd here.
( set +e; while :; do for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
    podman healthcheck run "$c" >/dev/null 2>&1; done; sleep 2; done ) &
HC_PID=$!
# A run killed before its cleanup may have left containers of this project behind.
"${DC[@]}" --profile tools down -v -t 5 >/dev/null 2>&1 || true

# --- images from the host's binaries --------------------------------------------------------------
rm -rf docker/.host && mkdir -p docker/.host/bin
for f in inference fetch-models router trainer; do
  # Line tables only matter for backtraces; without them the build context is a fraction.
  objcopy --strip-debug "$BIN_DIR/$f" "docker/.host/bin/$f"
done
cp -r ui/dist docker/.host/ui
# This host's own extra CAs (a TLS-intercepting egress) for the images' pip and PyPI downloads.
for c in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$c" ] && cp "$c" "docker/ca-certificates/host-$(basename "$c")"
done
cat >"$COMPOSE_TEST_PROMETHEUS_YML" <<'YML'
# prometheus/prometheus.yml's jobs, limited to the services this test starts.
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: router
    static_configs: [{targets: ["router:8080"]}]
  - job_name: models
    static_configs: [{targets: ["m1:8101", "m2:8102"]}]
YML
say "building images"
"${DC[@]}" --profile tools build "${SERVICES[@]}" trainer >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; fail "docker-compose build"; }
say "images built"

# --- up, and wait for every healthcheck -----------------------------------------------------------
STARTED=1
"${DC[@]}" up -d "${SERVICES[@]}" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "docker-compose up -d"; }
cid() { "${DC[@]}" ps -q "$1"; }
health() { podman inspect --format '{{.State.Health.Status}}' "$(cid "$1")" 2>/dev/null; }
deadline=$(( $(date +%s) + 300 ))
for s in redis m1 m2 router prometheus; do
  until [ "$(health "$s")" = healthy ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { "${DC[@]}" ps; fail "$s is not healthy after 300 s"; }
    sleep 2
  done
done
models_exit=$(podman inspect --format '{{.State.ExitCode}}' "$(cid models)")
[ "$models_exit" = 0 ] || fail "the models init service exited $models_exit"
say "healthy: ${SERVICES[*]}"
"${DC[@]}" ps

# The router admits the model services as their health answers.
for _ in $(seq 60); do
  n=$(curl -fsS "$URL/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["healthy_backends"])')
  [ "$n" -ge 2 ] && break; sleep 1
done
[ "$n" -ge 2 ] || fail "the router sees $n healthy backends, expected m1 and m2"
curl -fsS "$URL/health" | grep -q '"redis":"up"' || fail "the router is not connected to the Redis container: $(curl -sS "$URL/health")"

# --- SSE /generate, then the same request from the cache ---------------------------------------------
body='{"prompt":"def add(a, b):","max_tokens":8,"temp":0}'
curl -sS -N -D "$WORK/h1" -o "$WORK/sse1" --max-time 120 "$URL/generate" -H 'content-type: application/json' -d "$body"
for ev in route token done; do
  grep -q "^event: $ev" "$WORK/sse1" || fail "no '$ev' event in /generate's stream: $(head -c 600 "$WORK/sse1")"
done
grep -qi '^x-cache: MISS' "$WORK/h1" || fail "first request was not a cache miss: $(cat "$WORK/h1")"
curl -sS -N -D "$WORK/h2" -o "$WORK/sse2" --max-time 60 "$URL/generate" -H 'content-type: application/json' -d "$body"
grep -qi '^x-cache: HIT' "$WORK/h2" || fail "the repeat was not answered from the cache: $(cat "$WORK/h2")"
keys=$(podman exec "$(cid redis)" redis-cli --scan --pattern 'polyllm:*' | wc -l)
[ "$keys" -gt 0 ] || fail "no polyllm keys in the Redis container"
say "SSE /generate ok (route, token, done); repeat X-Cache: HIT; $keys keys in the Redis container"

# --- the OpenAI API with the official client --------------------------------------------------------
python3 - "$URL" <<'PY' || fail "/v1/chat/completions with the openai client"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Say hi."}],
                                   max_tokens=8, temperature=0)
assert r.choices[0].message.content, r
chunks = list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Count to 3."}],
                                              max_tokens=8, temperature=0, stream=True))
assert any(c.choices and c.choices[0].delta.content for c in chunks), chunks
print("openai client: ok,", repr(r.choices[0].message.content), "from", r.model)
PY

# --- the UI --------------------------------------------------------------------------------------
page=$(curl -fsS -H 'accept: text/html' "$URL/")
grep -q '<div id="root">' <<<"$page" || fail "/ does not serve the UI: $(head -c 300 <<<"$page")"
asset=$(grep -o 'src="/assets/[^"]*\.js"' <<<"$page" | head -1 | cut -d'"' -f2)
[ -n "$asset" ] && curl -fsS -o /dev/null "$URL$asset" || fail "the UI's script $asset is not served"
say "UI served at / ($asset)"

# --- Prometheus sees every target up -----------------------------------------------------------------
for _ in $(seq 30); do
  targets=$(curl -fsS http://127.0.0.1:9090/api/v1/targets)
  summary=$(python3 -c 'import json,sys; t=json.load(sys.stdin)["data"]["activeTargets"]; print(len(t), sum(x["health"]=="up" for x in t))' <<<"$targets")
  read -r total up <<<"$summary"
  [ "$total" -eq 3 ] && [ "$up" -eq 3 ] && break; sleep 2
done
[ "$total" -eq 3 ] && [ "$up" -eq 3 ] || fail "Prometheus targets up: $up of $total: $targets"
say "Prometheus: $up of $total targets up"

# --- the closed loop: the trainer writes, the running router hot-reloads ------------------------------
before=$(curl -fsS "$URL/router_model")
"${DC[@]}" --profile tools run --rm -T trainer train --max-rounds 30 --folds 2 --threads 2 \
  --seed 99 >"$WORK/train.log" 2>&1 || { tail -30 "$WORK/train.log"; fail "trainer train in its container"; }
for _ in $(seq 30); do
  after=$(curl -fsS "$URL/router_model")
  [ "$after" != "$before" ] && grep -q '"loaded":true' <<<"$after" && break; sleep 1
done
[ "$after" != "$before" ] && grep -q '"loaded":true' <<<"$after" || fail "the router did not reload the trained model: $after"
say "closed loop: the router reloaded the model written by the trainer container: $(grep -o '"trained_at":"[^"]*"' <<<"$after")"

# --- a 429 past the burst (RATE_LIMIT_BURST=6, 1 request/s in the test override) ---------------------
codes=""
for _ in $(seq 12); do
  codes+=" $(curl -s -o /dev/null -w '%{http_code}' "$URL/generate" -H 'content-type: application/json' -d "$body")"
done
grep -q 429 <<<"$codes" || fail "no 429 past the burst: $codes"
say "rate limit: $codes"

# --- X-Forwarded-For counts only from the ui profile's proxy address (TRUSTED_PROXIES) ----------------
# Two throwaway containers on the compose network, each firing requests back to back: one at the ui
# proxy's fixed address, one at any other. An empty prompt passes the limiter and is refused 400.
xff_burst() {  # $1: extra podman args, $2: X-Forwarded-For values, one request each
  podman run --rm --network "${PROJECT}_default" $1 --entrypoint sh polyllm-router:latest -c '
    for ip in '"$2"'; do
      printf " %s" "$(curl -s -o /dev/null -w "%{http_code}" http://router:8080/generate \
        -H "content-type: application/json" -H "X-Forwarded-For: $ip" -d "{\"prompt\":\"\"}")"
    done'
}
ui_ip=${POLYLLM_UI_IP:-10.201.8.250}
same=$(xff_burst "--ip $ui_ip" "$(printf '198.51.100.7 %.0s' $(seq 9)) 198.51.100.8")
grep -q 429 <<<"$same" || fail "9 requests through the ui proxy's address for one forwarded client were never limited: $same"
[ "${same##* }" = 400 ] || fail "a second forwarded client behind the ui proxy shared the first one's bucket: $same"
spoof=$(xff_burst "" "$(for i in $(seq 9); do printf '203.0.113.%s ' "$i"; done)")
grep -q 429 <<<"$spoof" || fail "a client outside TRUSTED_PROXIES escaped its limit by rotating X-Forwarded-For: $spoof"
say "X-Forwarded-For: trusted from the ui proxy ($same), ignored from elsewhere ($spoof)"

# --- SIGTERM: every service stops within a few seconds, and down leaves nothing ---------------------------
# The healthcheck loop execs into the containers; stop it first, so that no `podman healthcheck run`
# holds a container's lock while it is being stopped (what is timed is the service, not podman).
kill "$HC_PID" 2>/dev/null || true; wait "$HC_PID" 2>/dev/null || true; HC_PID=
slow=""
for s in router m1 m2 prometheus redis; do
  c=$(cid "$s")
  t=$(date +%s%N)
  podman stop -t 10 "$c" >/dev/null 2>&1  # (podman 4.3 warns that there is no systemd timer to remove)
  ms=$(( ($(date +%s%N) - t) / 1000000 ))
  code=$(podman inspect --format '{{.State.ExitCode}}' "$c" 2>/dev/null)
  echo "   $s stopped on SIGTERM in ${ms} ms (exit code $code)"
  # Where a Rust service's stop went: draining connections (drain_ms, bounded by
  # --shutdown-grace-ms), then closing the response log. (The router once took 6.9 s: a client
  # killed halfway through its headers held hyper's graceful shutdown; such connections are now
  # closed at once, router/tests/bounds.rs.)
  podman logs --tail 8 "$c" 2>&1 | grep -E 'drain_ms|shutdown grace|response log closed' | sed 's/^/     /' || true
  # Exit code 0, within 5 s: the service stopped by itself, promptly.
  if [ "$ms" -ge 5000 ] || [ "$code" != 0 ]; then
    slow+=" $s (${ms} ms, exit code $code)"
    echo "   its last log lines:"; podman logs --tail 15 "$c" 2>&1 | sed 's/^/     /'
  fi
done
[ -z "$slow" ] || fail "not stopped by SIGTERM alone within 5 s (or a nonzero exit code):$slow"
"${DC[@]}" --profile tools down -v -t 10 >/dev/null 2>&1
STARTED=
left=$(podman ps -a -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
[ "$left" -eq 0 ] || fail "$left containers left after docker-compose down"
say "PASS (docker-compose down left no container)"
