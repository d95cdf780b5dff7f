#!/usr/bin/env bash
# Benchmark: wrk against a bare hyper server and against flowgate, in the same
# run with the same connections and the same ~1 KB JSON body. Prints req/s and
# p99 for each, and flowgate's figures as ratios to the bare server.
#
#   scripts/bench.sh            # 10 s per scenario, 64 connections, 2 threads
#   DURATION=30s CONNECTIONS=128 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BARE_ADDR=127.0.0.1:18090
GATE_ADDR=127.0.0.1:18080

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk..." >&2
  (apt-get install -y wrk || (apt-get update && apt-get install -y wrk)) >/dev/null
fi
cargo build --release --quiet --bin flowgate --example bare-hyper

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# A ~1 KB JSON body, like a typical signup event.
items=$(printf '{"sku":"SKU-%04d","qty":%d,"price":19.99},' $(seq 1 22 | awk '{print $1, $1}') | sed 's/,$//')
body="{\"email\":\"Ada.Lovelace@Example.com\",\"first_name\":\"Ada\",\"last_name\":\"Lovelace\",\"company_id\":4242,\"plan\":\"enterprise\",\"source\":\"benchmark\",\"items\":[${items}]}"
export FLOWGATE_SIGNING_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
token=$(target/release/flowgate --config benches/config.toml token issue bench-sync)

lua() { # $1 = authorization header value or empty
  cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = [[${body}]]
wrk.headers["Content-Type"] = "application/json"
$( [ -n "$1" ] && echo "wrk.headers[\"Authorization\"] = \"$1\"" )
LUA
  echo "$work/post.lua"
}

wait_port() { for _ in $(seq 1 100); do (echo > "/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "no server on $1" >&2; exit 1; }

# Prints "req_per_sec p99_ms".
run_wrk() { # $1 url, $2 script
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$2" "$1" > "$work/out.txt"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/out.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/out.txt")
  non2xx=$(awk '/Non-2xx/ {print $4}' "$work/out.txt")
  echo "$rps $p99 ${non2xx:-0}"
}

target/release/examples/bare-hyper "$BARE_ADDR" 2>/dev/null & pids+=($!)
RUST_LOG=warn target/release/flowgate --config benches/config.toml serve 2>"$work/gateway.log" & pids+=($!)
wait_port "$BARE_ADDR"; wait_port "$GATE_ADDR"

printf 'body: %d bytes, %s connections, %s threads, %s per scenario\n' "${#body}" "$CONNECTIONS" "$THREADS" "$DURATION"
read -r bare_rps bare_p99 _ < <(run_wrk "http://$BARE_ADDR/" "$(lua '')")
read -r sync_rps sync_p99 sync_non2xx < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer $token")")
read -r rej_rps rej_p99 _ < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer forged.token.value")")
if [ "${sync_non2xx:-0}" != "0" ]; then echo "warning: $sync_non2xx non-2xx answers in the sync scenario" >&2; fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
printf '\n%-28s %12s %10s %12s %10s\n' scenario "req/s" "p99 ms" "req/s ratio" "p99 ratio"
printf '%-28s %12.0f %10.2f %12s %10s\n' "bare hyper (baseline)" "$bare_rps" "$bare_p99" "1.00x" "1.00x"
printf '%-28s %12.0f %10.2f %12s %10s\n' "flowgate sync transform" "$sync_rps" "$sync_p99" "$(ratio "$sync_rps" "$bare_rps")" "$(ratio "$sync_p99" "$bare_p99")"
printf '%-28s %12.0f %10.2f %12s %10s\n' "flowgate 401 rejection" "$rej_rps" "$rej_p99" "$(ratio "$rej_rps" "$bare_rps")" "$(ratio "$rej_p99" "$bare_p99")"
