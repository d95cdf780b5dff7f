#!/usr/bin/env bash
# Soak test: normal sync and async traffic while hostile clients attack the
# gateway (slow headers, slow bodies, unauthenticated bodies, idle
# connections, deeply nested, oversized and compressed-bomb bodies, forged
# tokens) and Redis restarts halfway. Prints accepted vs executed async runs
# (they must be equal), the normal requests' success rate and p99, and the
# gateway's peak RSS; exits 1 if an accepted run never executed.
#
#   scripts/soak.sh          # 10 minutes
#   scripts/soak.sh 60       # 60 seconds
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server..." >&2
  (apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) >/dev/null
fi
cargo build --release --quiet --bin flowgate --example soak
exec target/release/examples/soak "$seconds" target/release/flowgate
