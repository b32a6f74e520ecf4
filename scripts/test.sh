#!/usr/bin/env bash
# The test command of the README: installs what the tests need, fetches the two small models,
# then runs every test of the workspace and the UI's tests. Safe to re-run; works on a fresh
# Debian 12 machine (as root, or with sudo rights for apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need_apt+=(prometheus-node-exporter)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
python3 -c 'import openai' 2>/dev/null || { echo "== installing the openai Python client"; python3 -m pip install -q openai; }

# One build of the whole workspace: building a single package first (`cargo run -p inference`)
# would unify dependency features differently and compile candle twice.
echo "== building the workspace and its tests"
cargo build --workspace --all-targets

echo "== fetching test models into ${MODELS_DIR:-models}"
"${CARGO_TARGET_DIR:-target}/debug/fetch-models" --only gemma,qwen05

echo "== running the Rust tests"
cargo test --workspace -- --test-threads "${TEST_THREADS:-2}"

echo "== running the UI tests"
E2E_NO_BUILD=1 ./ui/scripts/test.sh
