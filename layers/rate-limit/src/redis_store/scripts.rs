//! The Lua scripts of the Redis store.
//!
//! # Time and arithmetic
//!
//! Every script decides on the Redis server's clock (`TIME`, whole microseconds since the
//! epoch, about 1.8e15: exact in a Lua number, a double, below 2^53). The arithmetic is the
//! in-memory GCRA's, in integer nanoseconds, but relative to now: a TAT is read as the
//! nanoseconds it lies ahead of now, a number no larger than the limit's capacity, so every
//! sum, product and comparison is exact (for capacities up to 2^53 ns, 104 days). Divisions
//! are floored exactly (`idiv`). Redis and memory therefore reach the same decisions with the
//! same figures at the same time; `consistency.rs` checks it with random quotas, costs and
//! times passed to the scripts.
//!
//! A TAT is stored as `<µs since the epoch>.<ns, three digits>` (`1712345678901234.567`):
//! exact, and still a number to a reader that parses it as one. A value written by an earlier
//! version (microseconds as a float) is read as such, rounded up to the nanosecond.
//!
//! # A script that runs twice
//!
//! redis-rs's cluster client re-sends a request whose connection dropped after it was sent,
//! so one call could run twice. The last key of every call is its own decision id (`<first
//! key>:d:<16 random bytes>`, in the first key's hash slot): a script first looks for its id,
//! and if it ran already takes nothing and answers as the first run did (the per-slot and
//! lease scripts keep their small reply under the id; the batch script, whose reply is large
//! and which runs on a standalone server only, keeps a mark and answers an error, so the
//! decisions fall back to their failure policies). The id lives `ARGV[2]` milliseconds:
//! four operation timeouts and at least 2 s, longer than a re-send of a call whose caller
//! still waits. It costs Redis one `GET` and one small `SET` per call, and memory for the ids
//! of the last 2 s of calls (about 100 bytes each).
//!
//! # Common arguments
//!
//! `ARGV[1]` is the time to decide at, in µs since the epoch (`0`: the server's clock; tests
//! pass their own), `ARGV[2]` the decision id's lifetime in ms.

/// The shared part: the clock, the decision id, TAT parsing and formatting, exact division.
macro_rules! prelude {
    () => {
        r#"
local tonumber, floor, ceil = tonumber, math.floor, math.ceil
local now = tonumber(ARGV[1])
local fixed = now ~= 0
if not fixed then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local idk = KEYS[#KEYS]
local seen = redis.call('GET', idk)
-- The nanoseconds a stored TAT lies ahead of now (0 when it has passed or is absent).
local function ahead_of(v)
  if not v then return 0 end
  local a
  local us, ns = string.match(v, '^(%d+)%.(%d%d%d)$')
  if us then
    a = (tonumber(us) - now) * 1000 + tonumber(ns)
  else
    local x = tonumber(v)
    if not x then return 0 end
    a = ceil((x - now) * 1000)
  end
  if a < 0 then return 0 end
  return a
end
-- Stores a TAT `a` ns ahead of now; the key expires when its bucket is full again.
local function store(k, a)
  local px = ceil(a / 1000000) + 1
  if fixed then px = 600000 end
  redis.call('SET', k, string.format('%d.%03d', now + floor(a / 1000), a % 1000), 'PX', px)
end
-- floor(a / b) for integers 0 <= a, 0 < b below 2^53, exactly.
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
"#
    };
}

/// A second run answers the first run's reply, kept under the decision id (small replies).
macro_rules! replayed {
    () => {
        r#"
if seen then return cmsgpack.unpack(seen) end
local function done(out)
  redis.call('SET', idk, cmsgpack.pack(out), 'PX', tonumber(ARGV[2]))
  return out
end
"#
    };
}

/// A second run takes nothing and fails (a batch's reply is large: only a mark is kept).
macro_rules! marked {
    () => {
        r#"
if seen then return redis.error_reply('rate_limit_batch: this call ran already') end
local function done(out)
  redis.call('SET', idk, '1', 'PX', tonumber(ARGV[2]))
  return out
end
"#
    };
}

/// One decision over several keys (the cluster's one call per slot). `ARGV[3]` is `take` or
/// `refund`; then four arguments per key: interval (ns), capacity (ns), cost, shadow flag.
/// The reply: `1` when every enforcing limit admitted (and all were taken) or `0`, then per
/// key `flag, a, b`: flag 1 admitted with `a` cells left and the bucket full in `b` ns; 0
/// denied, or 2 a shadow limit that would deny, admitted no earlier than `a` ns from now, full
/// in `b` ns. A refund gives `cost` cells back to each key.
pub(super) const GCRA_MULTI: &str = concat!(
    prelude!(),
    replayed!(),
    r#"
local refund = ARGV[3] == 'refund'
local n = #KEYS - 1
local tats = redis.call('MGET', unpack(KEYS, 1, n))
local out = {1}
local new = {}
local denied = false
for i = 1, n do
  local b = 3 + 4 * (i - 1)
  local interval = tonumber(ARGV[b + 1])
  local cost = tonumber(ARGV[b + 3])
  local ahead = ahead_of(tats[i])
  if refund then
    if tats[i] then
      local nt = ahead - cost * interval
      if nt <= 0 then redis.call('DEL', KEYS[i]) else store(KEYS[i], nt) end
    end
  else
    local cap = tonumber(ARGV[b + 2])
    local nt = ahead + cost * interval
    if nt <= cap then
      new[i] = nt
      out[#out + 1] = 1
      out[#out + 1] = idiv(cap - nt, interval)
      out[#out + 1] = nt
    else
      new[i] = false
      local shadow = ARGV[b + 4] == '1'
      if not shadow then denied = true end
      out[#out + 1] = shadow and 2 or 0
      out[#out + 1] = math.min(nt - cap, 9e15)
      out[#out + 1] = ahead
    end
  end
end
if refund then return done(out) end
if denied then
  out[1] = 0
  return done(out)
end
for i = 1, n do
  if new[i] then store(KEYS[i], new[i]) end
end
return done(out)
"#
);

/// Many decisions in one call. After the common arguments, `ARGV` holds the number of
/// distinct limit parameter sets `L`, then `L` triples (interval ns, capacity ns, shadow
/// flag), then one binary string with every decision: its limit count `n` (u16), its cost
/// (u32), and `n` pairs (parameter set index, key index in `KEYS`; u16 each), little-endian.
/// Decoding bytes with `string.byte` spares Redis a decimal parse (`strtod`) per number, the
/// largest part of its work per decision when numbers come as strings. The reply holds five
/// numbers per decision, so that Redis converts little:
/// - admitted: `1, j, cells left, ns until full, shadow bits` for its binding limit `j` (the
///   first enforcing one with the fewest whole cells left, as in memory; 0 when only shadow
///   limits applied);
/// - denied: `0, j, ns until admitted, ns until full, shadow bits` for the denying limit `j`
///   that frees up last.
///
/// Bit `j - 1` of the shadow bits is set when shadow limit `j` would have denied.
pub(super) const GCRA_BATCH: &str = concat!(
    prelude!(),
    marked!(),
    r#"
local nk = #KEYS - 1
local raw = redis.call('MGET', unpack(KEYS, 1, nk))
local tat = {}
for i = 1, nk do
  tat[i] = ahead_of(raw[i])
end
local nl = tonumber(ARGV[3])
local interval, cap, shadow = {}, {}, {}
for l = 1, nl do
  local b = 4 + 3 * (l - 1)
  interval[l] = tonumber(ARGV[b])
  cap[l] = tonumber(ARGV[b + 1])
  shadow[l] = ARGV[b + 2] == '1'
end
local dirty = {}
local out = {}
local o = 0
local blob = ARGV[4 + 3 * nl]
local byte = string.byte
local p, len = 1, #blob
local ls, ks = {}, {}
while p <= len do
  local n0, n1, c0, c1, c2, c3 = byte(blob, p, p + 5)
  local n = n0 + 256 * n1
  local cost = c0 + 256 * (c1 + 256 * (c2 + 256 * c3))
  p = p + 6
  local ok = true
  local bj, best, reset = 0, -1, 0
  local shadows = 0
  for j = 1, n do
    local l0, l1, k0, k1 = byte(blob, p, p + 3)
    p = p + 4
    local l, k = l0 + 256 * l1, k0 + 256 * k1
    ls[j], ks[j] = l, k
    local nt = tat[k] + cost * interval[l]
    if nt <= cap[l] then
      if ok and not shadow[l] then
        local left = idiv(cap[l] - nt, interval[l])
        if best < 0 or left < best then bj, best, reset = j, left, nt end
      end
    elseif shadow[l] then
      shadows = shadows + 2 ^ (j - 1)
    elseif ok or nt - cap[l] > best then
      ok = false
      bj, best, reset = j, math.min(nt - cap[l], 9e15), tat[k]
    end
  end
  if ok then
    for j = 1, n do
      local k, l = ks[j], ls[j]
      local nt = tat[k] + cost * interval[l]
      if nt <= cap[l] then
        tat[k] = nt
        dirty[k] = true
      end
    end
    out[o + 1] = 1
    out[o + 3] = bj > 0 and best or 0
  else
    out[o + 1] = 0
    out[o + 3] = best
  end
  out[o + 2] = bj
  out[o + 4] = reset
  out[o + 5] = shadows
  o = o + 5
end
for k in pairs(dirty) do
  store(KEYS[k], tat[k])
end
return done(out)
"#
);

/// Takes leases: for each key, `min(want, available)` cells, provided at least `min` are
/// available; otherwise nothing, and how long until `min` are. After the common arguments,
/// four per key: interval (ns), capacity (ns), `min`, `want`. The reply, two numbers per key:
/// `cells, ns until full` when granted, `0, ns until min cells are free` otherwise. The keys
/// of one call share a hash slot on a cluster (a standalone server takes any). Same key format
/// and GCRA as the other scripts, so exact and leasing instances share one bucket.
pub(super) const GCRA_LEASE: &str = concat!(
    prelude!(),
    replayed!(),
    r#"
local n = #KEYS - 1
local raw = redis.call('MGET', unpack(KEYS, 1, n))
-- A key named twice in one call sees what its first lease took.
local taken = {}
local out = {}
for i = 1, n do
  local b = 3 + 4 * (i - 1)
  local interval = tonumber(ARGV[b])
  local cap = tonumber(ARGV[b + 1])
  local min = tonumber(ARGV[b + 2])
  local want = tonumber(ARGV[b + 3])
  local ahead = taken[KEYS[i]] or ahead_of(raw[i])
  local avail = 0
  if cap >= ahead then avail = idiv(cap - ahead, interval) end
  if avail < min then
    out[2 * i - 1] = 0
    out[2 * i] = math.min(ahead + min * interval - cap, 9e15)
  else
    local got = math.min(want, avail)
    local nt = ahead + got * interval
    store(KEYS[i], nt)
    taken[KEYS[i]] = nt
    out[2 * i - 1] = got
    out[2 * i] = nt
  end
end
return done(out)
"#
);
