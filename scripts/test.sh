#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine.
#
# The tests start their own throwaway redis-server instances (and a 3-node Redis Cluster) and
# their own PostgreSQL server on free loopback ports. This script makes sure what they need is
# installed: redis-server, PostgreSQL's server binaries and a C compiler, with apt when one is
# missing. Anything it cannot fix, it names, with the command that fixes it.
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

# --- curl: the gateway's TLS test drives it as a client. ---
if ! command -v curl >/dev/null 2>&1; then
  apt_install curl ||
    die "curl is needed (the gateway's TLS test runs it). Install it: 'apt-get install curl' (Debian/Ubuntu) or 'brew install curl' (macOS), then run this script again."
fi

# --- A C compiler: zstd and SQLite are built from their C sources. ---
if ! command -v cc >/dev/null 2>&1; then
  apt_install build-essential ||
    die "a C compiler is needed (zstd and SQLite are built from C). Install one: 'apt-get install build-essential' (Debian/Ubuntu) or 'xcode-select --install' (macOS), then run this script again."
fi

# --- PostgreSQL: the tests start a throwaway server of their own (initdb + postgres, trust
# auth, a free port, a temporary directory), so only the server binaries are needed; with
# OMEGA_TEST_POSTGRES_URL set, they use that server instead. ---
pg_binaries() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
    { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }
}
if [ -z "${OMEGA_TEST_POSTGRES_URL:-}" ] && ! pg_binaries; then
  apt_install postgresql ||
    die "PostgreSQL's server binaries (initdb, postgres) are needed. Install them: 'apt-get install postgresql' (Debian/Ubuntu) or 'brew install postgresql' (macOS), or set OMEGA_TEST_POSTGRES_URL to a server where the user may CREATE DATABASE."
fi

cargo test --workspace --all-features "$@"

# The self-checking examples (they assert what they print) run too, on a full run.
if [ "$#" -eq 0 ]; then
  for example in "layers" "tonic_grpc" "bank_account --demo"; do
    say "running example $example"
    # shellcheck disable=SC2086 # the name and its arguments, split on purpose
    set -- $example
    cargo run --quiet --all-features --example "$1" -- "${@:2}" >/dev/null
  done
fi
