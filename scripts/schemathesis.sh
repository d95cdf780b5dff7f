#!/usr/bin/env bash
# The admin API against its own document: schemathesis (installed into a
# virtual environment this script makes) runs every check, with a bounded
# number of examples per operation, against a gateway seeded with the shipped
# example flows, a few runs and one webhook subscription. Any failure fails.
#
#   scripts/schemathesis.sh [extra schemathesis options]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
venv=${SCHEMATHESIS_VENV:-$target/schemathesis-venv}
examples=${SCHEMATHESIS_EXAMPLES:-25}

if [ ! -x "$venv/bin/schemathesis" ]; then
  command -v python3 >/dev/null 2>&1 || apt-get install -y python3 >/dev/null
  python3 -m venv "$venv" 2>/dev/null || {
    apt-get install -y python3-venv >/dev/null && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4,<5'
fi

cargo build -q --bin flowgate
bin=$target/debug/flowgate

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
cat >"$work/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[paths]
flows = "$root/flows"
templates = "$root/templates"
[auth]
signing_key_file = "$work/signing.key"
generate_missing_key = true
[storage]
backend = "embedded"
path = "$work/flowgate.db"
[http]
allow_private_networks = true
[webhooks]
allow_http = true
EOF
fg() { "$bin" --config "$work/config.toml" "$@"; }

"$bin" --config "$work/config.toml" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done

# Seed: three runs of the signup flow, one subscription.
sender=$(fg token issue signup)
for i in 1 2 3; do
  curl -fsS -o /dev/null -H "Authorization: Bearer $sender" -H 'Content-Type: application/json' \
    -d "{\"email\":\"user$i@example.com\",\"first_name\":\"A\",\"last_name\":\"B\",\"company_id\":\"c$i\"}" \
    "$base/v1/flow-webhook/signup"
done
fg webhooks create --name seeded --url "http://127.0.0.1:9/hook" --events '*' >/dev/null
ops=$(fg token admin --role ops --sub schemathesis)
admin() { curl -fsS -H "Authorization: Bearer $ops" "$base/v1/admin/$1"; }
first_id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])'; }
run=$(admin 'runs?limit=1' | first_id)
subscription=$(admin 'webhooks?limit=1' | first_id)
delivery=$(admin "webhooks/$subscription/deliveries?limit=1" | first_id)

curl -fsS -o "$work/openapi.json" -H "Authorization: Bearer $ops" "$base/v1/admin/openapi.json"
# What the document cannot say, and so what schemathesis is told:
# - a cursor is opaque (only one the API handed out is valid; a made-up one
#   is refused with 400), so lists are walked from their first page;
# - whether a delivery URL is public and resolves, or a whsec_ secret's
#   base64 decodes to 16 to 64 bytes, only the server can judge: those
#   answer 422, which the document lists.
cat >"$work/schemathesis.toml" <<EOF
[parameters]
"query.cursor" = ""

[[operations]]
include-operation-id = ["getRun", "getRunValue", "replayRun", "abortRun"]
parameters = { "path.id" = "$run" }

[[operations]]
include-operation-id = ["resendDelivery"]
parameters = { "path.id" = "$delivery" }

[[operations]]
include-operation-id = ["createWebhook", "updateWebhook", "rotateWebhookSecret"]
checks.positive_data_acceptance.expected-statuses = ["2XX", "401", "403", "404", "409", "422"]
EOF
cd "$work"
"$venv/bin/schemathesis" run openapi.json --url "$base" \
  -H "Authorization: Bearer $ops" \
  --checks all --max-examples "$examples" --seed 1 --no-color "$@"
