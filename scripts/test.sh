#!/usr/bin/env bash
# The test command: unit and integration tests. Integration tests start their
# own redis-server processes on free ports, so redis-server must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server..." >&2
  (apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) >/dev/null
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
