#!/usr/bin/env bash
# The multi-process campaign (not part of the README's test command; run by hand and reported):
# four gateway processes over one Redis behind four load generators, on loopback, bounded in
# time. It prints one table per scenario.
#
#   1. A global limit of R/s is held cluster-wide: admitted <= R x duration + burst, as a ratio.
#   2. Redis paused (SIGSTOP) for 5 s under load: outcomes, worst latency, and what the limit
#      admitted while Redis was away (each instance falls back to the whole limit locally by
#      default, so up to 4x during the pause).
#   3. Redis killed under load, then restarted: outcomes, and the limit shared again afterwards.
#   4. A node removed through one gateway's admin API: how long until all four route without
#      it, and how many requests reached it after that (0 expected).
#
# Needs: redis-server, nginx (the upstream) and wrk:  apt-get install redis-server nginx-light wrk
# Usage: scripts/campaign.sh [RATE] [SECONDS]      (defaults 2000 and 10)
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-2000}
SECONDS_PER_RUN=${2:-10}
for tool in redis-server redis-cli nginx wrk; do
  command -v "$tool" >/dev/null 2>&1 || { echo "campaign: $tool is needed: apt-get install redis-server nginx-light wrk" >&2; exit 1; }
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omega-penta/target}"
cargo build --release -q -p omega-gateway
GATEWAY="$CARGO_TARGET_DIR/release/omega-gateway"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream: nginx answering a small body.
UP_PORT=$(free_port)
UP2_PORT=$(free_port)
cat > "$work/nginx.conf" <<EOF
worker_processes 1; daemon on; error_log $work/nginx.err; pid $work/nginx.pid;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$UP_PORT; keepalive_requests 1000000;
  location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$UP2_PORT; keepalive_requests 1000000; access_log $work/n2.log;
  location / { return 200 "ok\n"; } } }
EOF
nginx -c "$work/nginx.conf" -p "$work"

# Redis, without persistence.
REDIS_PORT=$(free_port)
start_redis() { redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log" >/dev/null; sleep 0.3; }
start_redis

# Four gateways, one global limit shared through Redis (exact decisions, no lease).
ports=()
admins=()
for i in 1 2 3 4; do
  port=$(free_port); admin=$(free_port); ports+=("$port"); admins+=("$admin")
  cat > "$work/gw$i.json" <<EOF
{ "listen": "127.0.0.1:$port", "admin": "127.0.0.1:$admin", "redis": "redis://127.0.0.1:$REDIS_PORT",
  "upstreams": { "pool": { "key": { "header": "x-user-id" }, "nodes": [
    { "id": "n1", "url": "http://127.0.0.1:$UP_PORT" }, { "id": "n2", "url": "http://127.0.0.1:$UP2_PORT" } ] } },
  "routes": [{ "prefix": "/", "upstream": "pool", "timeout": "5s",
    "limits": [{ "name": "global", "key": "global", "rate": $RATE, "per": "1s" }] }] }
EOF
  OMEGA_ADMIN_TOKEN=campaign "$GATEWAY" --config "$work/gw$i.json" >"$work/gw$i.log" 2>&1 &
  pids+=("$!")
done
sleep 1

# Runs wrk against every gateway at once for SECONDS_PER_RUN; prints per-run totals.
load() {
  local name=$1
  local outs=()
  for i in 1 2 3 4; do
    wrk -t1 -c8 -d"${SECONDS_PER_RUN}s" --latency -H "x-user-id: user-$i" "http://127.0.0.1:${ports[$((i-1))]}/" >"$work/$name.$i" 2>&1 &
    outs+=("$!")
  done
  for p in "${outs[@]}"; do wait "$p" || true; done
  python3 - "$work" "$name" "$RATE" "$SECONDS_PER_RUN" <<'PY'
import re, sys
work, name, rate, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
total = non2xx = errors = 0
worst = 0.0
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
for i in range(1, 5):
    text = open(f"{work}/{name}.{i}").read()
    total += int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors += sum(map(int, m.groups())) if m else 0
    m = re.search(r"Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s|m)", text)
    if m:
        worst = max(worst, ms(*m.groups()))
admitted = total - non2xx
bound = rate * secs + rate
print(f"| {name} | {total} | {admitted} | {non2xx} | {errors} | {admitted / bound:.3f} | {worst:.1f} ms |")
PY
}

echo
echo "4 gateways, global limit $RATE/s (burst $RATE), $SECONDS_PER_RUN s per run, 4 x wrk -t1 -c8"
echo
echo "| scenario | requests | admitted (2xx) | refused (429/5xx) | socket errors | admitted / (R x T + burst) | worst latency |"
echo "|---|---|---|---|---|---|---|"
load "steady"

# Redis paused for 5 s, 2 s into the run.
( sleep 2; kill -STOP "$(cat "$work/redis.pid")"; sleep 5; kill -CONT "$(cat "$work/redis.pid")" ) &
load "redis-paused-5s"

# Redis killed 2 s into the run, started again 3 s later.
( sleep 2; kill -9 "$(cat "$work/redis.pid")"; sleep 3; start_redis ) &
load "redis-killed-3s"

load "after-recovery"

# A node removed through gateway 1's admin API, while every gateway serves users of both nodes.
cat > "$work/users.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", { ["x-user-id"] = "user-" .. (n % 1000) })
end
LUA
swap_load=()
for i in 1 2 3 4; do
  wrk -t1 -c4 -d"${SECONDS_PER_RUN}s" -s "$work/users.lua" "http://127.0.0.1:${ports[$((i-1))]}/" >"$work/swap.$i" 2>&1 &
  swap_load+=("$!")
done
sleep 2
started=$(date +%s%N)
curl -s -o /dev/null -X DELETE -H "Authorization: Bearer campaign" "http://127.0.0.1:${admins[0]}/shards/pool/nodes/n2"
for i in 1 2 3 4; do
  until ! curl -s "http://127.0.0.1:${admins[$((i-1))]}/shards/pool" | grep -q '"n2"'; do sleep 0.005; done
done
swapped=$(date +%s%N)
sleep 0.2
before=$(wc -l < "$work/n2.log")
for p in "${swap_load[@]}"; do wait "$p" || true; done
after=$(wc -l < "$work/n2.log")
echo
echo "| node removed through one admin API | all four gateways without it after | requests to it afterwards |"
echo "|---|---|---|"
echo "| n2 (of n1, n2) | $(( (swapped - started) / 1000000 )) ms | $((after - before)) |"
echo
echo "While Redis is away each gateway enforces the whole limit on its own (the default failure"
echo "policy, OnBackendFailure::Local { share: 1.0 }): up to 4x the limit for those seconds. A"
echo "limit's \"on_redis_failure\": { \"local\": 25 } (Limit::on_backend_failure in the library) keeps"
echo "4 instances near the limit."
