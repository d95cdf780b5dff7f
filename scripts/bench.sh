#!/usr/bin/env bash
# Benchmark: wrk against a bare hyper server, a floor server and flowgate, in
# the same run with the same connections and the same ~1 KB JSON body. The
# floor (benches/floor.rs) does only what no gateway can skip: verify the
# JWT, parse the JSON, XADD the body to Redis. Prints req/s and p99 for each,
# and flowgate's figures as ratios to the bare server and to the floor, with
# CPU per request of the server and of Redis, and Redis commands per request
# (INFO commandstats). Then holds
# async traffic at half the measured async maximum for LAG_DURATION and
# reports the queue lag (acceptance to start) from the gateway's metrics.
# Then the same sync and async scenarios, and the queue lag, on the embedded
# backend (one SQLite file, no Redis), and the sync and async scenarios on
# PostgreSQL (a server of its own, default durability: fsync and
# synchronous_commit on), with the disk its run records take.
# Then, with one outbound webhook subscription to the sync flow's run.ended
# (delivered to the bare server), measures the sync flow again on each
# backend, counts the runs answered 2xx against the run.ended deliveries
# made once the outbox drained (events lost = the difference), and the
# delivery lag (event to first attempt) at half the sync maximum.
# Last, on each backend, it times the web console's runs pages and a
# webhook's delivery log with everything those scenarios stored, topped up
# to at least 100,000 runs and 100,000 delivery attempts.
# Starts its own redis-server (append-only persistence on) on a free port.
#
#   scripts/bench.sh            # 10 s per scenario, 64 connections, 2 threads
#   DURATION=30s CONNECTIONS=128 scripts/bench.sh
#   ONLY=requests scripts/bench.sh   # the request scenarios on Redis only (about a minute)
#   ONLY=postgres scripts/bench.sh   # those, then the same on PostgreSQL (about two minutes)
#   FLOWGATE_BIN=/path/to/flowgate ONLY=requests scripts/bench.sh   # another build, to compare two
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
LAG_SECONDS=${LAG_SECONDS:-20}
ONLY=${ONLY:-all}
FLOWGATE_BIN=${FLOWGATE_BIN:-target/release/flowgate}
BARE_ADDR=127.0.0.1:18090
FLOOR_ADDR=127.0.0.1:18091
GATE_ADDR=127.0.0.1:18080
REDIS_PORT=${REDIS_PORT:-18379}
PG_PORT=${PG_PORT:-18432}

source scripts/bench-common.sh
cargo build --release --quiet --bin flowgate --example bare-hyper --example floor

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_postgres
  sleep 0.3; rm -rf "$work"
}
# PostgreSQL of its own, as the postgres user when run as root (it refuses root).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
start_postgres() {
  [ -n "$pg_bin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  mkdir -p "$work/pg"; chmod 711 "$work"
  [ "$(id -u)" = 0 ] && chown postgres: "$work/pg"
  as_postgres "$pg_bin/initdb" -D "$work/pg/data" -A trust -U postgres -E UTF8 >/dev/null
  as_postgres "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pg -c max_connections=200" start >/dev/null
}
stop_postgres() { [ -f "$work/pg/data/postmaster.pid" ] && as_postgres "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1 || true; }
# CPU ticks of the PostgreSQL server and its backends.
pg_ticks() {
  local main; main=$(head -1 "$work/pg/data/postmaster.pid")
  echo $(( $(cpu_ticks "$main") $(for c in $(pgrep -P "$main"); do printf ' + %s' "$(cpu_ticks "$c" 2>/dev/null || echo 0)"; done) ))
}
psql_value() { "$pg_bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc "$1"; }
trap cleanup EXIT

export FLOWGATE_REDIS__URL="redis://127.0.0.1:$REDIS_PORT/0"
# The webhook scenario delivers to the bare server on loopback over plain HTTP.
export FLOWGATE_WEBHOOKS__ALLOW_HTTP=true FLOWGATE_HTTP__ALLOW_PRIVATE_NETWORKS=true

lua() { # $1 = authorization header value or empty
  cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = [[${body}]]
wrk.headers["Content-Type"] = "application/json"
$( [ -n "$1" ] && echo "wrk.headers[\"Authorization\"] = \"$1\"" )
LUA
  echo "$work/post.lua"
}



# Redis's per-command call counts, "command calls" per line.
redis_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\).*/\1 \2/p' | sort
}

# Prints "req_per_sec p99_ms non_2xx server_cpu_us_per_req redis_cpu_us_per_req
# redis_commands_per_req", and writes the commands per request, by command,
# to $work/cmds-<label>.txt.
run_wrk() { # $1 url, $2 script, $3 server pid, $4 label
  local s0 r0 s1 r1
  redis_calls > "$work/calls0.txt"
  s0=$(cpu_ticks "$3"); r0=$(cpu_ticks "$redis")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$2" "$1" > "$work/out.txt"
  s1=$(cpu_ticks "$3"); r1=$(cpu_ticks "$redis")
  redis_calls > "$work/calls1.txt"
  local rps p99 total
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/out.txt")
  total=$(awk '/requests in/ {print $1}' "$work/out.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/out.txt")
  non2xx=$(awk '/Non-2xx/ {print $4}' "$work/out.txt")
  join -a2 -e0 -o 0,1.2,2.2 "$work/calls0.txt" "$work/calls1.txt" |
    awk -v n="$total" '($3 - $2) / n >= 0.005 && $1 != "info" { printf "%s %.2f\n", $1, ($3 - $2) / n }' > "$work/cmds-${4:-x}.txt"
  awk -v rps="$rps" -v p99="$p99" -v bad="${non2xx:-0}" -v n="$total" -v s=$(( (s1 - s0) * TICK_US )) -v r=$(( (r1 - r0) * TICK_US )) \
    -v c="$(awk '{ t += $2 } END { printf "%.2f", t }' "$work/cmds-${4:-x}.txt")" \
    'BEGIN { printf "%s %s %s %.1f %.1f %s\n", rps, p99, bad, s / n, r / n, c }'
}

# Sync runs of the flow with a webhook subscription, 3 s at a time, until
# the command $1 prints at least 100,000 (delivery log entries plus
# deliveries waiting); then waits until the command $2 (deliveries
# waiting) prints 0.
fill_log() {
  local sync_lua
  sync_lua=$(lua "Bearer $token")
  for _ in $(seq 1 60); do
    [ "$(eval "$1")" -ge 100000 ] && break
    wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$sync_lua" "http://$GATE_ADDR/v1/flow-webhook/bench-sync" >/dev/null
  done
  for _ in $(seq 1 600); do [ "$(eval "$2")" = "0" ] && return 0; sleep 0.5; done
  echo "warning: the webhook outbox did not drain" >&2
}

# Runs answered 2xx in the last run_wrk.
answered() { awk '/requests in/ { n = $1 } /Non-2xx/ { bad = $4 } END { print n - bad }' "$work/out.txt"; }
# Run.ended deliveries the running gateway made that succeeded.
succeeded() { curl -s "http://$GATE_ADDR/metrics" | awk '/^flowgate_webhook_deliveries_total\{outcome="succeeded"\}/ { print $2 }'; }

# A viewer's console session cookie, signed in with a one-time link.
console_session() {
  local link
  link=$("$FLOWGATE_BIN" --config benches/config.toml console-link --role viewer 2>/dev/null | sed 's/.*#link=//')
  curl -s -o /dev/null -D - -H "Origin: http://$GATE_ADDR" --data-urlencode "link=$link" "http://$GATE_ADDR/console/sign-in" |
    tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p'
}
# "median slowest" milliseconds of 20 loads of console page $2 with cookie $1
# (curl on loopback: the server's time plus a connection).
page_ms() {
  for _ in $(seq 1 20); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "Cookie: $1" "http://$GATE_ADDR$2" || echo "curl-$? 0"
  done | sort -k2 -n | awk -v page="$2" '$1 != 200 { bad = $1 } { v[NR] = $2 * 1000 } END {
    if (bad) { print "warning: " page " answered " bad > "/dev/stderr" }
    printf "%.1f %.1f\n", v[int((NR + 1) / 2)], v[NR] }'
}
console_row() { # label path cookie
  read -r med worst < <(page_ms "$3" "$2")
  printf '  %-34s %8s ms %8s ms\n' "$1" "$med" "$worst"
}

mkdir -p "$work/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work/redis" --save "" --appendonly yes >/dev/null & redis=$!; pids+=($redis)
wait_port "127.0.0.1:$REDIS_PORT"
# Tokens are minted for each flow's current generation, read from Redis.
token=$("$FLOWGATE_BIN" --config benches/config.toml token issue bench-sync)
failed_token=$("$FLOWGATE_BIN" --config benches/config.toml token issue bench-sync-failed)
async_token=$("$FLOWGATE_BIN" --config benches/config.toml token issue bench-async)
target/release/examples/bare-hyper "$BARE_ADDR" 2>/dev/null & bare=$!; pids+=($bare)
target/release/examples/floor "$FLOOR_ADDR" "$FLOWGATE_REDIS__URL" 2>/dev/null & floor=$!; pids+=($floor)
start_gateway() { # extra serve flags
  RUST_LOG=warn "$FLOWGATE_BIN" --config benches/config.toml serve "$@" 2>>"$work/gateway.log" & gateway=$!; pids+=($gateway)
  wait_port "$GATE_ADDR"
}
restart_gateway() { kill "$gateway"; wait "$gateway" 2>/dev/null || true; start_gateway "$@"; }
# The request scenarios measure the gateway alone, as deployed beside
# separate workers; workers start for the queue lag phase.
wait_port "127.0.0.1:$REDIS_PORT"; wait_port "$BARE_ADDR"; wait_port "$FLOOR_ADDR"; start_gateway --no-worker

printf 'body: %d bytes, %s connections, %s threads, %s per scenario\n' "${#body}" "$CONNECTIONS" "$THREADS" "$DURATION"
read -r bare_rps bare_p99 _ bare_cpu _ _ < <(run_wrk "http://$BARE_ADDR/" "$(lua '')" "$bare" bare)
read -r floor_rps floor_p99 floor_non2xx floor_cpu floor_redis floor_cmds < <(run_wrk "http://$FLOOR_ADDR/" "$(lua "Bearer $token")" "$floor" floor)
redis-cli -p "$REDIS_PORT" del floor:runs >/dev/null
read -r sync_rps sync_p99 sync_non2xx sync_cpu sync_redis sync_cmds < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer $token")" "$gateway" sync)
sleep 3 # run records of the sync scenario are written in the background: let them land
read -r lean_rps lean_p99 lean_non2xx lean_cpu lean_redis lean_cmds < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync-failed" "$(lua "Bearer $failed_token")" "$gateway" lean)
read -r rej_rps rej_p99 _ rej_cpu _ _ < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer forged.token.value")" "$gateway" rejected)
read -r async_rps async_p99 async_non2xx async_cpu async_redis async_cmds < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-async" "$(lua "Bearer $async_token")" "$gateway" async)
# Peak resident memory of the gateway through the request scenarios.
gateway_rss=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$gateway/status")
gateway_text=$(awk '/^RssFile/ { printf "%.1f", $2 / 1024 }' "/proc/$gateway/status")
for scenario in floor sync lean async; do
  eval "bad=\${${scenario}_non2xx:-0}"
  if [ "$bad" != "0" ]; then echo "warning: $bad non-2xx answers in the $scenario scenario" >&2; fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# The table of request scenarios; rows of scenarios not run are left out.
print_requests() {
  printf '\n%-28s %9s %7s %7s %7s %7s %7s %9s %9s %8s\n' scenario "req/s" "p99 ms" "req/s" "p99" "req/s" "p99" "server" "redis" "redis"
  printf '%-28s %9s %7s %7s %7s %7s %7s %9s %9s %8s\n' "" "" "" "/bare" "/bare" "/floor" "/floor" "cpu us/r" "cpu us/r" "cmds/r"
  row() { # name rps p99 cpu redis_cpu redis_cmds
    [ -n "$2" ] || return 0
    printf '%-28s %9.0f %7.2f %7s %7s %7s %7s %9s %9s %8s\n' "$1" "$2" "$3" "$(ratio "$2" "$bare_rps")" "$(ratio "$3" "$bare_p99")" \
      "$(ratio "$2" "$floor_rps")" "$(ratio "$3" "$floor_p99")" "$4" "${5:--}" "${6:--}"
  }
  row "bare hyper (baseline)" "$bare_rps" "$bare_p99" "$bare_cpu"
  row "floor (jwt+json+xadd)" "$floor_rps" "$floor_p99" "$floor_cpu" "$floor_redis" "$floor_cmds"
  row "flowgate sync transform" "$sync_rps" "$sync_p99" "$sync_cpu" "$sync_redis" "$sync_cmds"
  row "flowgate sync, keep=failed" "$lean_rps" "$lean_p99" "$lean_cpu" "$lean_redis" "$lean_cmds"
  row "flowgate 401 rejection" "$rej_rps" "$rej_p99" "$rej_cpu"
  row "flowgate async accept" "$async_rps" "$async_p99" "$async_cpu" "$async_redis" "$async_cmds"
  row "flowgate sync + webhook" "${hook_rps:-}" "${hook_p99:-}" "${hook_cpu:-}" "${hook_redis:-}" "${hook_cmds:-}"
  row "embedded sync transform" "${emb_sync_rps:-}" "${emb_sync_p99:-}" "${emb_sync_cpu:-}"
  row "embedded async accept" "${emb_async_rps:-}" "${emb_async_p99:-}" "${emb_async_cpu:-}"
  row "embedded sync + webhook" "${emb_hook_rps:-}" "${emb_hook_p99:-}" "${emb_hook_cpu:-}"
  printf '\ngateway peak RSS through the request scenarios: %s MiB (file-backed, mostly the binary'"'"'s code, at the end: %s MiB)\n' "$gateway_rss" "$gateway_text"
  printf 'release binary: %s MiB (%s MiB of code)\n' "$(stat -c %s "$FLOWGATE_BIN" | awk '{ printf "%.1f", $1 / 1048576 }')" \
    "$(size -A "$FLOWGATE_BIN" | awk '$1 == ".text" { printf "%.1f", $2 / 1048576 }')"
  printf 'Redis commands per request, by command:\n'
  for scenario in floor sync lean async; do
    printf '  %-6s %s\n' "$scenario" "$(tr '\n' ' ' < "$work/cmds-$scenario.txt")"
  done
}
if [ "$ONLY" = requests ]; then print_requests; exit 0; fi

# PostgreSQL: the sync and async request scenarios, gateways without workers.
start_postgres
postgres() { FLOWGATE_STORAGE__BACKEND=postgres FLOWGATE_POSTGRES__URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable" "$@"; }
pg_wrk() { # $1 flow, $2 token: "rps p99 non2xx gateway_cpu postgres_cpu"
  local p0 p1 line total
  p0=$(pg_ticks)
  line=$(run_wrk "http://$GATE_ADDR/v1/flow-webhook/$1" "$(lua "Bearer $2")" "$gateway")
  p1=$(pg_ticks)
  total=$(awk '/requests in/ {print $1}' "$work/out.txt")
  echo "$line" | awk -v p=$(( (p1 - p0) * TICK_US )) -v n="$total" '{ printf "%s %s %s %s %.1f\n", $1, $2, $3, $4, p / n }'
}
kill "$gateway"; wait "$gateway" 2>/dev/null || true
postgres start_gateway --no-worker
read -r pg_sync_rps pg_sync_p99 pg_sync_non2xx pg_sync_cpu pg_sync_db < <(pg_wrk bench-sync "$token")
sleep 3
read -r pg_async_rps pg_async_p99 pg_async_non2xx pg_async_cpu pg_async_db < <(pg_wrk bench-async "$async_token")
for scenario in pg_sync pg_async; do
  eval "bad=\${${scenario}_non2xx:-0}"
  if [ "$bad" != "0" ]; then echo "warning: $bad non-2xx answers in the $scenario scenario" >&2; fi
done
psql_value 'VACUUM ANALYZE flowgate.runs' >/dev/null
pg_runs=$(psql_value 'SELECT count(*) FROM flowgate.runs')
pg_bytes=$(psql_value "SELECT pg_total_relation_size('flowgate.runs')")
kill "$gateway"; wait "$gateway" 2>/dev/null || true
stop_postgres
start_gateway --no-worker
print_postgres() {
  printf '\nPostgreSQL (its own server, fsync and synchronous_commit on), gateways without workers:\n'
  printf '  %-22s %9s %7s %7s %7s %9s %9s\n' scenario "req/s" "p99 ms" "/floor" "/Redis" "cpu us/r" "pg us/r"
  printf '  %-22s %9.0f %7.2f %7s %7s %9s %9s\n' "sync transform" "$pg_sync_rps" "$pg_sync_p99" "$(ratio "$pg_sync_rps" "$floor_rps")" "$(ratio "$pg_sync_rps" "$sync_rps")" "$pg_sync_cpu" "$pg_sync_db"
  printf '  %-22s %9.0f %7.2f %7s %7s %9s %9s\n' "async accept" "$pg_async_rps" "$pg_async_p99" "$(ratio "$pg_async_rps" "$floor_rps")" "$(ratio "$pg_async_rps" "$async_rps")" "$pg_async_cpu" "$pg_async_db"
  printf '  disk: %.0f MB for %s run records (table and indexes): %.0f MB per 100,000 runs\n' \
    "$(awk -v b="$pg_bytes" 'BEGIN { print b / 1048576 }')" "$pg_runs" "$(awk -v b="$pg_bytes" -v n="$pg_runs" 'BEGIN { print b / 1048576 / n * 100000 }')"
}
if [ "$ONLY" = postgres ]; then print_requests; print_postgres; exit 0; fi

queue_depth() { curl -s "http://$GATE_ADDR/readyz" | sed -n 's/.*"queue_depth":\([0-9]*\).*/\1/p'; }
wait_drained() {
  for _ in $(seq 1 600); do [ "$(queue_depth)" = "0" ] && return 0; sleep 0.5; done
  echo "warning: the queue did not drain" >&2
}

# Queue lag at a steady half of the async maximum, on a fresh gateway.
restart_gateway
wait_drained
restart_gateway
target_rate=$(awk -v r="$async_rps" 'BEGIN { printf "%d", r / 2 }')
lag_connections=20
cat > "$work/steady.lua" <<LUA
wrk.method = "POST"
wrk.body = [[${body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${async_token}"
function delay() return ${lag_connections} * 1000 / ${target_rate} end
LUA
wrk -t"$THREADS" -c"$lag_connections" -d"${LAG_SECONDS}s" -s "$work/steady.lua" "http://$GATE_ADDR/v1/flow-webhook/bench-async" > "$work/steady.txt"
steady_rps=$(awk '/Requests\/sec/ {print $2}' "$work/steady.txt")
wait_drained
curl -s "http://$GATE_ADDR/metrics" > "$work/metrics.txt"
# Percentiles from a histogram: the upper bound of the first bucket holding them.
lag_pct() { # $1 quantile, $2 metric (default the queue lag)
  local metric=${2:-flowgate_queue_lag_seconds}
  awk -v q="$1" -v m="$metric" '
    BEGIN { n = 0 }
    $1 == m "_count" { total = $2 }
    index($0, m "_bucket") == 1 { match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); les[n] = le; counts[n] = $2; n++ }
    END { for (i = 0; i < n; i++) if (counts[i] >= q * total) { if (les[i] == "+Inf") print "over 45000"; else printf "<= %g", les[i] * 1000; exit } }
  ' "$work/metrics.txt"
}
lag_max=$(awk '/^flowgate_queue_lag_seconds_max/ { printf "%.1f", $2 * 1000 }' "$work/metrics.txt")
lag_count=$(awk '/^flowgate_queue_lag_seconds_count/ { print $2 }' "$work/metrics.txt")

# The embedded backend: the same scenarios on one SQLite file.
embedded() { FLOWGATE_STORAGE__BACKEND=embedded FLOWGATE_STORAGE__PATH="$work/db/flowgate.db" "$@"; }
kill "$gateway"; wait "$gateway" 2>/dev/null || true
embedded start_gateway --no-worker
read -r emb_sync_rps emb_sync_p99 _ emb_sync_cpu _ _ < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer $token")" "$gateway")
sleep 3
read -r emb_async_rps emb_async_p99 emb_async_non2xx emb_async_cpu _ _ < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-async" "$(lua "Bearer $async_token")" "$gateway")
if [ "${emb_async_non2xx:-0}" != "0" ]; then echo "warning: $emb_async_non2xx non-2xx answers in the embedded async scenario" >&2; fi
kill "$gateway"; wait "$gateway" 2>/dev/null || true
embedded start_gateway
wait_drained
kill "$gateway"; wait "$gateway" 2>/dev/null || true
embedded start_gateway
emb_rate=$(awk -v r="$emb_async_rps" 'BEGIN { printf "%d", r / 2 }')
sed -e "s|/ ${target_rate} end|/ ${emb_rate} end|" "$work/steady.lua" > "$work/emb.lua"
wrk -t"$THREADS" -c"$lag_connections" -d"${LAG_SECONDS}s" -s "$work/emb.lua" "http://$GATE_ADDR/v1/flow-webhook/bench-async" > "$work/emb.txt"
emb_steady=$(awk '/Requests\/sec/ {print $2}' "$work/emb.txt")
wait_drained
curl -s "http://$GATE_ADDR/metrics" > "$work/metrics.txt"
emb_lag50=$(lag_pct 0.5); emb_lag99=$(lag_pct 0.99)
emb_lag_max=$(awk '/^flowgate_queue_lag_seconds_max/ { printf "%.1f", $2 * 1000 }' "$work/metrics.txt")
emb_lag_count=$(awk '/^flowgate_queue_lag_seconds_count/ { print $2 }' "$work/metrics.txt")
# The console on the embedded backend: at least 100,000 runs and a
# webhook's delivery log of at least 100,000 attempts.
emb_count() { # an SQL query's one value, read-only beside the running server
  python3 -c 'import sqlite3, sys; print(sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True).execute(sys.argv[2]).fetchone()[0])' \
    "$work/db/flowgate.db" "$1" 2>/dev/null || echo 0
}
embedded "$FLOWGATE_BIN" --config benches/config.toml webhooks create --name bench \
  --url "http://$BARE_ADDR/hook" --events run.ended --flows bench-sync >/dev/null
kill "$gateway"; wait "$gateway" 2>/dev/null || true
embedded start_gateway --no-worker
sleep 2
emb_before=$(succeeded)
read -r emb_hook_rps emb_hook_p99 _ emb_hook_cpu _ _ < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer $token")" "$gateway")
emb_answered=$(answered)
emb_waiting() { emb_count "select (select count(*) from events) + (select count(*) from deliveries where state = 'pending')"; }
for _ in $(seq 1 600); do [ "$(emb_waiting)" = "0" ] && break; sleep 0.5; done
emb_delivered=$(succeeded)
emb_lost=$(( emb_answered - ${emb_delivered:-0} + ${emb_before:-0} ))
kill "$gateway"; wait "$gateway" 2>/dev/null || true
embedded start_gateway
fill_log "emb_count \"select (select count(*) from delivery_log) + (select count(*) from deliveries where state = 'pending')\"" \
  emb_waiting
emb_runs=$(emb_count 'select count(*) from runs')
emb_log=$(emb_count 'select count(*) from delivery_log')
emb_hook=$(emb_count 'select subscription from delivery_log limit 1')
emb_cookie=$(console_session)
{
  console_row "runs, newest" "/console/runs" "$emb_cookie"
  console_row "runs of one flow" "/console/runs?flow=bench-sync" "$emb_cookie"
  console_row "failed runs (none stored)" "/console/runs?status=failed" "$emb_cookie"
  console_row "a webhook's delivery log" "/console/webhooks/$emb_hook" "$emb_cookie"
} > "$work/emb-console.txt"
kill "$gateway"; wait "$gateway" 2>/dev/null || true
start_gateway --no-worker

# Outbound webhooks: one subscription to the sync flow's run.ended.
"$FLOWGATE_BIN" --config benches/config.toml webhooks create --name bench \
  --url "http://$BARE_ADDR/hook" --events run.ended --flows bench-sync >/dev/null
restart_gateway --no-worker
sleep 2
redis_before=$(succeeded)
read -r hook_rps hook_p99 hook_non2xx hook_cpu hook_redis hook_cmds < <(run_wrk "http://$GATE_ADDR/v1/flow-webhook/bench-sync" "$(lua "Bearer $token")" "$gateway")
redis_answered=$(answered)
# Deliveries waiting, and events not yet turned into deliveries.
outbox() { echo $(( $(redis-cli -p "$REDIS_PORT" zcard 'flowgate:{flowgate}:outbox') + $(redis-cli -p "$REDIS_PORT" zcard 'flowgate:{flowgate}:events') )); }
wait_delivered() {
  for _ in $(seq 1 600); do [ "$(outbox)" = "0" ] && return 0; sleep 0.5; done
  echo "warning: the webhook outbox did not drain" >&2
}
wait_delivered
redis_delivered=$(succeeded)
redis_lost=$(( redis_answered - ${redis_delivered:-0} + ${redis_before:-0} ))
restart_gateway --no-worker
sleep 2
hook_rate=$(awk -v r="$hook_rps" 'BEGIN { printf "%d", r / 2 }')
sed -e "s/${async_token}/${token}/" -e "s|/ ${target_rate} end|/ ${hook_rate} end|" "$work/steady.lua" > "$work/hook.lua"
wrk -t"$THREADS" -c"$lag_connections" -d"${LAG_SECONDS}s" -s "$work/hook.lua" "http://$GATE_ADDR/v1/flow-webhook/bench-sync" > "$work/hook.txt"
hook_steady=$(awk '/Requests\/sec/ {print $2}' "$work/hook.txt")
wait_delivered
curl -s "http://$GATE_ADDR/metrics" > "$work/metrics.txt"
delivered=$(awk '/^flowgate_webhook_deliveries_total\{outcome="succeeded"\}/ { print $2 }' "$work/metrics.txt")
failed=$(awk '/^flowgate_webhook_deliveries_total\{outcome="failed"\}/ { print $2 }' "$work/metrics.txt")
hook_max=$(awk '/^flowgate_webhook_delivery_lag_seconds_count/ { print $2 }' "$work/metrics.txt")
hook_id=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'flowgate:{flowgate}:webhooks:log:*' | head -1 | sed 's/.*:log://')
hook_log() { redis-cli -p "$REDIS_PORT" xlen "flowgate:{flowgate}:webhooks:log:$hook_id"; }
fill_log 'echo $(( $(hook_log) + $(outbox) ))' outbox
redis_runs=$(( $(redis-cli -p "$REDIS_PORT" zcard 'flowgate:{flowgate}:runs:bench-sync') + $(redis-cli -p "$REDIS_PORT" zcard 'flowgate:{flowgate}:runs:bench-async') ))
redis_log=$(hook_log)
redis_memory=$(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }')
cookie=$(console_session)
{
  console_row "runs, newest" "/console/runs" "$cookie"
  console_row "runs of one flow" "/console/runs?flow=bench-sync" "$cookie"
  console_row "failed runs (none stored)" "/console/runs?status=failed" "$cookie"
  console_row "a webhook's delivery log" "/console/webhooks/$hook_id" "$cookie"
} > "$work/console.txt"

print_requests
print_postgres
printf '\nqueue lag at %.0f req/s (half the async maximum) for %ss, %s runs:\n' "$steady_rps" "$LAG_SECONDS" "$lag_count"
printf '  p50 %s ms, p99 %s ms, max %s ms\n' "$(lag_pct 0.5)" "$(lag_pct 0.99)" "$lag_max"
printf '\nsync with one run.ended subscription: %s of the sync req/s without on Redis, %s on embedded\n' "$(ratio "$hook_rps" "$sync_rps")" "$(ratio "$emb_hook_rps" "$emb_sync_rps")"
# Runs still in flight when wrk stopped end and are delivered without being
# counted as answered: more deliveries than answers is not a loss.
printf 'run.ended events lost (runs answered 2xx that got no delivery): Redis %s of %s, embedded %s of %s\n' \
  "$(( redis_lost > 0 ? redis_lost : 0 ))" "$redis_answered" "$(( emb_lost > 0 ? emb_lost : 0 ))" "$emb_answered"
printf 'delivery lag at %.0f req/s (half the sync maximum) for %ss, %s deliveries (%s succeeded, %s failed):\n' "$hook_steady" "$LAG_SECONDS" "$hook_max" "$delivered" "${failed:-0}"
printf '  p50 %s ms, p99 %s ms\n' "$(lag_pct 0.5 flowgate_webhook_delivery_lag_seconds)" "$(lag_pct 0.99 flowgate_webhook_delivery_lag_seconds)"
printf '\nembedded vs Redis: sync %s, async accept %s\n' "$(ratio "$emb_sync_rps" "$sync_rps")" "$(ratio "$emb_async_rps" "$async_rps")"
printf 'embedded queue lag at %.0f req/s (half its async maximum) for %ss, %s runs:\n' "$emb_steady" "$LAG_SECONDS" "$emb_lag_count"
printf '  p50 %s ms, p99 %s ms, max %s ms\n' "$emb_lag50" "$emb_lag99" "$emb_lag_max"
printf '\nRedis memory: %.0f MB with %s runs kept (and %s delivery log entries): %.0f MB per 100,000 runs\n' \
  "$(awk -v b="$redis_memory" 'BEGIN { print b / 1048576 }')" "$redis_runs" "$redis_log" \
  "$(awk -v b="$redis_memory" -v n="$redis_runs" 'BEGIN { print b / 1048576 / n * 100000 }')"
printf '\nconsole pages, 20 loads each (median, slowest):\n'
printf ' Redis, %s runs stored, %s delivery log entries:\n' "$redis_runs" "$redis_log"
cat "$work/console.txt"
printf ' embedded, %s runs stored, %s delivery log entries:\n' "$emb_runs" "$emb_log"
cat "$work/emb-console.txt"
