#!/usr/bin/env bash
# The multi-process scale-and-fault campaign (not part of the README's test command; run by hand
# and reported): four gateway processes over one Redis, then over a 3-node Redis Cluster, each
# Redis node behind a fault proxy, three upstream nodes and one load generator, all on loopback
# and bounded in time. What it measures is described at the top of
# benches/gateway-load/benches/campaign/main.rs; it prints one table per scenario.
#
# Then the fuzzers of the configuration and header parsers run with many more generated inputs
# than the test suite gives them (OMEGA_FUZZ_CASES, bounded by FUZZ_SECONDS).
#
# Needs: redis-server and redis-cli (apt-get install redis-server).
# Usage: scripts/campaign.sh [campaign options]     e.g. --rate 2000 --seconds 10 --keys 1000000
#                                                        --redis single|cluster|both
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || { echo "campaign: $tool is needed: apt-get install redis-server" >&2; exit 1; }
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omega-penta/target}"
cargo build --release -q -p omega-gateway
OMEGA_GATEWAY_BIN="$CARGO_TARGET_DIR/release/omega-gateway" \
  cargo bench -q -p omega-gateway-load --bench campaign -- "$@"

echo
echo "## Fuzzing the configuration and header parsers (${FUZZ_CASES:=50000} cases each, at most ${FUZZ_SECONDS:=600} s)"
cargo test -q -p omega-gateway --all-features --test fuzz --no-run
status=0
OMEGA_FUZZ_CASES=$FUZZ_CASES timeout "$FUZZ_SECONDS" \
  cargo test -q -p omega-gateway --all-features --test fuzz -- --nocapture --test-threads 1 >"${TMPDIR:-/tmp}/omega-fuzz.log" 2>&1 || status=$?
grep -E "^test |test result|statuses|panicked|minimal failing" "${TMPDIR:-/tmp}/omega-fuzz.log" || true
case $status in
  0) ;;
  124) echo "fuzzing stopped after $FUZZ_SECONDS s without a failure (FUZZ_SECONDS to give it longer)" ;;
  *) echo "fuzzing found a failure: ${TMPDIR:-/tmp}/omega-fuzz.log"; exit 1 ;;
esac
