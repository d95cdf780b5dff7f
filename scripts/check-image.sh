#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman and checks it.
# No registry is needed: the base images are made here, a Debian root file
# system by debootstrap (from the package mirror), and a builder on it that
# uses this machine's Rust toolchain and crate cache. podman cannot start
# containers on every machine (crun may be refused its rlimits), so the
# image's root file system is exported and its binary run from it, as the
# image's user, and sent the quick start's requests.
#
#   scripts/check-image.sh          # IMAGE_CACHE=/var/tmp/flowgate-image keeps the bases
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  (apt-get install -y "${missing[@]}" || (apt-get update && apt-get install -y "${missing[@]}")) >/dev/null
fi
podman() { command podman --storage-driver vfs "$@"; }
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${IMAGE_CACHE:-/var/tmp/flowgate-image}
base=localhost/flowgate-base:bookworm
builder=localhost/flowgate-builder:bookworm
image=localhost/flowgate:check
mkdir -p "$cache"

# $1 image, $2 packages beyond minbase, then `podman import --change` options.
make_base() {
  local name=$1 include=$2 root
  shift 2
  podman image exists "$name" && return 0
  root="$cache/$(echo "$name" | tr -c 'a-z0-9\n' '-')"
  rm -rf "$root"
  echo "making $name with debootstrap..." >&2
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$root" "$mirror" >/dev/null
  tar -C "$root" -c . | podman import "$@" - "$name" >/dev/null
  rm -rf "$root"
}
make_base "$base" ""
make_base "$builder" "gcc,g++,libc6-dev,make,pkg-config,ca-certificates" \
  --change "ENV PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "ENV CARGO_HOME=/root/.cargo" --change "ENV RUSTUP_HOME=/root/.rustup"

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
rustup_home=${RUSTUP_HOME:-$(rustup show home 2>/dev/null || echo "$HOME/.rustup")}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
mkdir -p target/image
echo "building $image..." >&2
podman build --isolation chroot --format docker --layers=false \
  --build-arg BUILDER_IMAGE="$builder" --build-arg RUNTIME_IMAGE="$base" \
  --build-arg FLOWGATE_COMMIT="$commit" \
  -v "$rustup_home:/root/.rustup:ro" -v "$cargo_home:/root/.cargo" \
  -v "$PWD/target/image:/src/target" \
  -t "$image" . >"$cache/build.log" 2>&1 || { tail -40 "$cache/build.log" >&2; exit 1; }

fail() { echo "image check failed: $*" >&2; exit 1; }
settings=$(podman image inspect --format '{{.Config.User}}|{{.Config.StopSignal}}|{{json .Config.Healthcheck.Test}}|{{json .Config.Volumes}}|{{json .Config.ExposedPorts}}|{{.Config.WorkingDir}}' "$image")
expected='10001:10001|SIGTERM|["CMD","/usr/local/bin/flowgate","healthcheck"]|{"/var/lib/flowgate":{}}|{"8080/tcp":{}}|/etc/flowgate'
[ "$settings" = "$expected" ] || fail "settings are $settings, expected $expected"

work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
  # The bases stay for the next run; the image checked and what its build left go.
  podman rm -f flowgate-check >/dev/null 2>&1 || true
  podman rmi -f "$image" >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
}
trap cleanup EXIT
chmod 0755 "$work"   # the image's root, which its user must be able to enter
# Created, never started (no health check timer either): only exported.
podman create --no-healthcheck --name flowgate-check "$image" >/dev/null
podman export flowgate-check | tar -x -C "$work"
podman rm flowgate-check >/dev/null
[ "$(stat -c %u:%a "$work/var/lib/flowgate")" = 10001:700 ] ||
  fail "/var/lib/flowgate is $(stat -c %u:%a "$work/var/lib/flowgate"), not the image user's alone (10001:700)"
in_image() { chroot --userspec=10001:10001 "$work" /usr/local/bin/flowgate --config /etc/flowgate/config.toml "$@"; }
version=$(in_image --version)
[ "$version" = "flowgate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) ($commit)" ] || fail "--version says $version"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export FLOWGATE_SIGNING_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLOWGATE_SERVER__LISTEN=127.0.0.1:$port
# chroot execs the binary, so $! is the server itself (a function would be a subshell).
chroot --userspec=10001:10001 "$work" /usr/local/bin/flowgate --config /etc/flowgate/config.toml serve \
  2>"$work/serve.log" & server=$!
for _ in $(seq 1 100); do in_image healthcheck 2>/dev/null && break; sleep 0.1; done
in_image healthcheck || { cat "$work/serve.log" >&2; fail "healthcheck"; }

token=$(in_image token issue signup)
answer=$(curl -s -w '\n%{http_code}' -X POST "http://127.0.0.1:$port/v1/flow-webhook/signup" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"email":" Ada@Example.com ","first_name":"Ada","last_name":"Lovelace","company_id":42}')
[ "$(tail -1 <<<"$answer")" = 200 ] || fail "signup answered $answer"
grep -q '"crm_forwarded": *false' <<<"$answer" || fail "signup answered $answer"
token=$(in_image token issue lead-enrichment)
status=$(curl -s -o "$work/async.json" -w '%{http_code}' -X POST "http://127.0.0.1:$port/v1/flow-webhook/lead-enrichment" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"email":"Bob@Corp.io","employees":420,"plan":"enterprise"}')
[ "$status" = 202 ] || fail "lead-enrichment answered $status $(cat "$work/async.json")"
run=$(sed -n 's/.*"run_id": *"\([^"]*\)".*/\1/p' "$work/async.json")
for _ in $(seq 1 100); do
  in_image runs show "$run" --json 2>/dev/null | grep -q '"status": *"succeeded"' && break
  sleep 0.2
done
in_image runs show "$run" --json | grep -q '"status": *"succeeded"' || fail "run $run did not succeed"
[ -s "$work/var/lib/flowgate/flowgate.db" ] || fail "no database on the volume"
[ "$(stat -c %a "$work/var/lib/flowgate/flowgate.db")" = 600 ] || fail "the database is readable by others"
kill -TERM "$server"; wait "$server" || fail "serve exited $? on SIGTERM"; server=
echo "image $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }'), settings, quick start and SIGTERM ok"
