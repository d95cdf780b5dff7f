#!/usr/bin/env bash
# Checks the deployment files: the systemd unit with `systemd-analyze verify`
# (its ExecStart pointed at the binary built here) and its exposure score.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null 2>&1 ||
  (apt-get install -y systemd || (apt-get update && apt-get install -y systemd)) >/dev/null
bin=${FLOWGATE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/flowgate}
[ -x "$bin" ] || cargo build --quiet --bin flowgate
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|/usr/local/bin/flowgate|$bin|" deploy/systemd/flowgate.service > "$work/flowgate.service"
# Unknown or misspelt keys are only warned about: any warning fails here.
# (--man=no: the man page is installed by hand, from `flowgate man`.)
warnings=$(systemd-analyze verify --man=no "$work/flowgate.service" 2>&1) || { echo "$warnings" >&2; exit 1; }
if [ -n "$warnings" ]; then echo "$warnings" >&2; exit 1; fi
score=$(systemd-analyze security --offline=yes "$work/flowgate.service" | sed -n 's/.*exposure level for flowgate.service: \([0-9.]*\).*/\1/p')
echo "systemd unit: verified, exposure $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || { echo "exposure $score is above 2.0" >&2; exit 1; }
