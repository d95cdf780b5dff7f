#!/usr/bin/env bash
# Runs the gateway with the example flows. The shipped config keeps
# everything in one SQLite file (.flowgate/flowgate.db): nothing else is
# needed. With storage.backend = "redis" (in config.toml or
# FLOWGATE_STORAGE__BACKEND=redis) and no Redis answering at 127.0.0.1:6379,
# this starts one with persistence in .flowgate/redis, installing
# redis-server if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${FLOWGATE_STORAGE__BACKEND:-$(sed -n '/^\[storage\]/,/^\[/s/^backend *= *"\([a-z]*\)".*/\1/p' config.toml | head -1)}
if [ "${backend:-embedded}" = "redis" ]; then
  port=${FLOWGATE_REDIS_PORT:-6379}
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    if ! command -v redis-server >/dev/null 2>&1; then
      echo "installing redis-server..." >&2
      (apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) >/dev/null
    fi
    mkdir -p .flowgate/redis
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$PWD/.flowgate/redis" \
      --appendonly yes --save "" --logfile "$PWD/.flowgate/redis/redis.log"
    echo "started redis-server on 127.0.0.1:$port (data in .flowgate/redis)" >&2
  fi
fi
exec cargo run --release -- serve "$@"
