# Shared by scripts/bench.sh and scripts/bench-cluster.sh (sourced from the
# repository's root): the tools they need, the request body, and helpers.

for tool in wrk redis-server redis-cli:redis-tools; do
  command=${tool%%:*} package=${tool#*:}
  if ! command -v "$command" >/dev/null 2>&1; then
    echo "installing $package..." >&2
    (apt-get install -y "$package" || (apt-get update && apt-get install -y "$package")) >/dev/null
  fi
done

# A ~1 KB JSON body, like a typical signup event.
items=$(printf '{"sku":"SKU-%04d","qty":%d,"price":19.99},' $(seq 1 22 | awk '{print $1, $1}') | sed 's/,$//')
body="{\"email\":\"Ada.Lovelace@Example.com\",\"first_name\":\"Ada\",\"last_name\":\"Lovelace\",\"company_id\":4242,\"plan\":\"enterprise\",\"source\":\"benchmark\",\"items\":[${items}]}"
export FLOWGATE_SIGNING_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

wait_port() { for _ in $(seq 1 100); do (echo > "/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "no server on $1" >&2; exit 1; }

# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
