#!/usr/bin/env bash
# The test command: unit and integration tests. Integration tests start their
# own redis-server processes on free ports (one with TLS, its certificates
# made by openssl), so both must be installed; this installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  (apt-get install -y "${missing[@]}" || (apt-get update && apt-get install -y "${missing[@]}")) >/dev/null
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
