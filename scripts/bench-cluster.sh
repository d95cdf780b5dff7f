#!/usr/bin/env bash
# Benchmark: async accept on one Redis node against a Redis Cluster of three
# masters, in the same run, with wrk, the same ~1 KB JSON body and the same
# gateway build. Each Redis (single or cluster node) has append-only
# persistence on (`everysec`). For each setup it prints req/s and p99, CPU
# per request of the gateways and of Redis (all nodes together), and how the
# Redis CPU split over the nodes. Then it repeats the cluster run with two
# gateways side by side, each with its own wrk, to show whether the gateway
# or Redis is the limit on this machine.
#
#   scripts/bench-cluster.sh                 # 10 s per scenario, 64 connections
#   DURATION=30s PARTITIONS=32 scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PARTITIONS=${PARTITIONS:-16}
GATE_ADDR=127.0.0.1:18080
GATE2_ADDR=127.0.0.1:18081
SINGLE_PORT=${SINGLE_PORT:-18379}
CLUSTER_PORTS=(18401 18402 18403)

source scripts/bench-common.sh
cargo build --release --quiet --bin flowgate

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; [ -s "$work/gateway.log" ] && tail -5 "$work/gateway.log" >&2; rm -rf "$work"; }
trap cleanup EXIT



redis_node() { # port, extra args...
  local port=$1; shift
  mkdir -p "$work/r$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work/r$port" --save "" \
    --appendonly yes --appendfsync everysec "$@" >/dev/null &
  pids+=($!)
  wait_port "127.0.0.1:$port"
}
redis_node "$SINGLE_PORT"; single=${pids[-1]}
cluster=()
for port in "${CLUSTER_PORTS[@]}"; do
  redis_node "$port" --cluster-enabled yes --cluster-port $((port + 100)) --cluster-config-file nodes.conf
  cluster+=(${pids[-1]})
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.2; done

single_env() { export FLOWGATE_REDIS__URL="redis://127.0.0.1:$SINGLE_PORT/0"; }
cluster_env() {
  export FLOWGATE_REDIS__URL="redis://127.0.0.1:${CLUSTER_PORTS[0]}" FLOWGATE_REDIS__CLUSTER=true \
    FLOWGATE_REDIS__NODES="[\"redis://127.0.0.1:${CLUSTER_PORTS[1]}\", \"redis://127.0.0.1:${CLUSTER_PORTS[2]}\"]" \
    FLOWGATE_REDIS__PARTITIONS="$PARTITIONS"
}
gateway() { # single_env or cluster_env, listen address
  ( $1; export FLOWGATE_SERVER__LISTEN="$2" RUST_LOG=warn
    exec target/release/flowgate --config benches/config.toml serve --no-worker 2>>"$work/gateway.log" ) &
  pids+=($!)
  wait_port "$2"
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

token=$(single_env; target/release/flowgate --config benches/config.toml token issue bench-async)
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = [[${body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${token}"
LUA

# Runs wrk against every address given at once (connections split evenly);
# prints "req/s p99_ms non_2xx gateway_us_per_req redis_us_per_req split",
# the split being each Redis process's share of the Redis CPU.
measure() { # "gateway pids" "redis pids" addresses...
  local gws=$1 rds=$2; shift 2
  local g0=0 g1=0 r0=() r1=() i=0 runs=()
  for p in $gws; do g0=$((g0 + $(cpu_ticks "$p"))); done
  for p in $rds; do r0+=($(cpu_ticks "$p")); done
  for addr in "$@"; do
    wrk -t"$THREADS" -c$((CONNECTIONS / $#)) -d"$DURATION" --latency -s "$work/post.lua" \
      "http://$addr/v1/flow-webhook/bench-async" > "$work/out-$i.txt" &
    runs+=($!)
    i=$((i + 1))
  done
  for j in "${runs[@]}"; do wait "$j"; done
  for p in $gws; do g1=$((g1 + $(cpu_ticks "$p"))); done
  for p in $rds; do r1+=($(cpu_ticks "$p")); done
  cat "$work"/out-*.txt > "$work/out.txt"; rm -f "$work"/out-*.txt
  local rps total p99 bad rsum=0 split=""
  rps=$(awk '/Requests\/sec/ { s += $2 } END { printf "%.0f", s }' "$work/out.txt")
  total=$(awk '/requests in/ { s += $1 } END { print s }' "$work/out.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; if (v > m) m = v} END { print m }' "$work/out.txt")
  bad=$(awk '/Non-2xx/ { s += $4 } END { print s + 0 }' "$work/out.txt")
  for k in "${!r0[@]}"; do rsum=$((rsum + r1[k] - r0[k])); done
  for k in "${!r0[@]}"; do split+="$(awk -v a=$((r1[k] - r0[k])) -v t=$rsum 'BEGIN { printf "%.0f%%", t ? 100 * a / t : 0 }')/"; done
  awk -v rps="$rps" -v p99="$p99" -v bad="$bad" -v n="$total" -v g=$(( (g1 - g0) * TICK_US )) -v r=$(( rsum * TICK_US )) -v sp="${split%/}" \
    'BEGIN { printf "%s %s %s %.1f %.1f %s\n", rps, p99, bad, g / n, r / n, sp }'
}

printf 'body: %d bytes, %s connections, %s threads, %s per scenario, %s partitions\n' "${#body}" "$CONNECTIONS" "$THREADS" "$DURATION" "$PARTITIONS"
printf '\n%-36s %9s %8s %7s %11s %11s  %s\n' scenario "req/s" "p99 ms" non-2xx "gateway µs" "Redis µs" "Redis CPU split"
row() { printf '%-36s %9s %8s %7s %11s %11s  %s\n' "$1" $2; }

gateway single_env "$GATE_ADDR"; gw=${pids[-1]}
row "async accept, 1 Redis node" "$(measure "$gw" "$single" "$GATE_ADDR")"
stop "$gw"

gateway cluster_env "$GATE_ADDR"; gw=${pids[-1]}
row "async accept, cluster of 3 masters" "$(measure "$gw" "${cluster[*]}" "$GATE_ADDR")"
gateway cluster_env "$GATE2_ADDR"; gw2=${pids[-1]}
row "  two gateways, cluster" "$(measure "$gw $gw2" "${cluster[*]}" "$GATE_ADDR" "$GATE2_ADDR")"
stop "$gw"; stop "$gw2"

gateway single_env "$GATE_ADDR"; gw=${pids[-1]}
gateway single_env "$GATE2_ADDR"; gw2=${pids[-1]}
row "  two gateways, 1 Redis node" "$(measure "$gw $gw2" "$single" "$GATE_ADDR" "$GATE2_ADDR")"
