#!/usr/bin/env bash
# Checks that every feature of every published crate builds on its own (no dev-dependencies),
# and with no feature at all, so that a user who enables one feature gets a crate that compiles.
# The combinations are listed here explicitly; a new feature joins its crate's line.
set -euo pipefail
cd "$(dirname "$0")/.."

# Feature builds have their own target directory: they would otherwise evict the artifacts
# of the test build, whose features are unified.
export CARGO_TARGET_DIR="${FEATURES_TARGET_DIR:-$HOME/.cache/omega-penta/features}"

declare -A FEATURES=(
  [omega-core]="redis tls http axum serde metrics codec"
  [omega-rate-limit]="redis http axum grpc metrics serde"
  [omega-circuit-breaker]="redis http grpc metrics serde"
  [omega-shard-router]="redis http metrics serde"
  [omega-cache]="redis http serde codec metrics"
  [omega-snapshot]="zstd fs redis postgres sqlite http serde metrics"
  [omega-penta]="cache rate-limit circuit-breaker shard-router snapshot sql fs redis http axum grpc metrics tls codec config yaml full"
)

failed=0
for crate in "${!FEATURES[@]}"; do
  for feature in "" ${FEATURES[$crate]}; do
    label="${feature:-<none>}"
    if ! cargo check --quiet -p "$crate" --no-default-features ${feature:+--features "$feature"} 2>/tmp/check-features.$$; then
      echo "check-features: $crate with feature $label does not build:" >&2
      cat /tmp/check-features.$$ >&2
      failed=1
    else
      echo "check-features: $crate [$label] ok"
    fi
  done
done
rm -f /tmp/check-features.$$
exit "$failed"
