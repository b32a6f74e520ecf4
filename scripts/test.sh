#!/usr/bin/env bash
# The test command of the README: installs what the tests need, fetches the two small models,
# then runs every test of the workspace. Safe to re-run; works on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import openai' 2>/dev/null || { echo "== installing the openai Python client"; python3 -m pip install -q openai; }

echo "== fetching test models into ${MODELS_DIR:-models}"
cargo run -q -p inference --bin fetch-models -- --only gemma,qwen05

echo "== running the tests"
cargo test --workspace -- --test-threads "${TEST_THREADS:-2}"
