#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine.
#
# The tests start their own throwaway redis-server instances (and a 3-node Redis Cluster) on
# free loopback ports, and create a fresh PostgreSQL database per run. This script makes sure
# what they need is there: it installs redis-server with apt when it is missing, and starts
# the local PostgreSQL server when it is installed but stopped. Anything it cannot fix, it
# names, with the command that fixes it.
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p omega-core`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Redis: the tests run redis-server and redis-cli themselves. ---
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  apt_install redis-server ||
    die "redis-server and redis-cli are needed. Install them: 'apt-get install redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS), then run this script again."
fi

# --- PostgreSQL: the harness creates (and drops) a database per test run. ---
PG_URL="${OMEGA_TEST_POSTGRES_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -d "$PG_URL"
  else
    # Without the client tools, at least check that something listens on the port.
    local hostport="${PG_URL#*@}"; hostport="${hostport%%/*}"
    (exec 3<>"/dev/tcp/${hostport%%:*}/${hostport##*:}") 2>/dev/null
  fi
}
if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in /etc/postgresql/*; do
      say "starting PostgreSQL $(basename "$version")"
      as_root pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
  elif apt_install postgresql; then
    for version in /etc/postgresql/*; do
      as_root pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
  fi
  for _ in $(seq 1 50); do pg_ready && break; sleep 0.2; done
  pg_ready ||
    die "no PostgreSQL answers at $PG_URL. Start one (Debian: 'pg_ctlcluster 15 main start'), or point OMEGA_TEST_POSTGRES_URL at a server where the user may CREATE DATABASE."
fi

cargo test --workspace --all-features "$@"

# The self-checking examples (they assert what they print) run too, on a full run.
if [ "$#" -eq 0 ]; then
  for example in layers tonic_grpc; do
    say "running example $example"
    cargo run --quiet --all-features --example "$example" >/dev/null
  done
fi
