#!/usr/bin/env bash
# Checks the deployment files: the systemd unit with `systemd-analyze verify`
# (its ExecStart pointed at the binary built here) and its exposure score;
# the compose files against the compose specification (`docker-compose
# config`, Debian's package); then scripts/check_deploy.py: the Kubernetes
# manifests against the Kubernetes schemas (kubernetes-validate, from PyPI,
# in a virtual environment made here), what each file promises, and every
# flowgate process's environment through the binary's own `check`.
set -euo pipefail
cd "$(dirname "$0")/.."
install() {
  (apt-get install -y "$@" || (apt-get update && apt-get install -y "$@")) >/dev/null
}
command -v systemd-analyze >/dev/null 2>&1 || install systemd
command -v docker-compose >/dev/null 2>&1 || install docker-compose
venv=${DEPLOY_VENV:-${CARGO_TARGET_DIR:-$PWD/target}/deploy-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv" 2>/dev/null || { install python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate>=1.37,<2' 'PyYAML>=6,<7'
fi
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

for file in deploy/compose*.yaml; do
  docker-compose -f "$file" config -q
done
"$venv/bin/python" scripts/check_deploy.py "$bin"
