#!/usr/bin/env bash
# The UI's tests: installs chromium if missing, installs the locked npm packages, builds ui/dist,
# runs the vitest unit tests, then the end-to-end test against a real router and model service.
# Needs target/debug/{inference,router} (built here if missing) and models/gemma-3-270m-q4_k_m.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
  echo "== installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi

echo "== ui: npm ci"
npm ci --no-audit --no-fund
echo "== ui: build"
npm run build
echo "== ui: unit tests"
npx vitest run
echo "== ui: end-to-end test"
node scripts/e2e.mjs
