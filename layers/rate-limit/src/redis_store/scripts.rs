//! The Lua scripts of the Redis store. Every script keeps TATs in microseconds on the Redis
//! server's clock (`TIME`) and lets each key expire when its bucket is full again.

pub(super) const GCRA_MULTI: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refund = ARGV[1] == 'refund'
local tats = redis.call('MGET', unpack(KEYS))
local out = {1}
local new = {}
local denied = false
for i = 1, #KEYS do
  local b = 1 + 4 * (i - 1)
  local interval = tonumber(ARGV[b + 1])
  local cost = tonumber(ARGV[b + 3])
  local tat = tonumber(tats[i])
  if refund then
    if tat then
      local nt = tat - cost * interval
      if nt <= now then redis.call('DEL', KEYS[i]) else
        redis.call('SET', KEYS[i], nt, 'PX', math.ceil((nt - now) / 1000) + 1)
      end
    end
  else
    local cap = tonumber(ARGV[b + 2])
    if (not tat) or tat < now then tat = now end
    local nt = tat + cost * interval
    local ahead = nt - now
    if ahead <= cap then
      new[i] = nt
      out[#out + 1] = 1
      out[#out + 1] = math.floor((cap - ahead) / interval)
      out[#out + 1] = math.ceil(ahead)
    else
      new[i] = false
      if ARGV[b + 4] ~= '1' then denied = true end
      out[#out + 1] = ARGV[b + 4] == '1' and 2 or 0
      out[#out + 1] = math.ceil(ahead - cap)
      out[#out + 1] = math.ceil(tat - now)
    end
  end
end
if refund then return out end
if denied then
  out[1] = 0
  return out
end
for i = 1, #KEYS do
  if new[i] then
    redis.call('SET', KEYS[i], new[i], 'PX', math.ceil((new[i] - now) / 1000) + 1)
  end
end
return out
"#;

/// Many decisions in one call. `ARGV` holds the number of distinct limit parameter sets `L`,
/// then `L` triples (interval µs, capacity µs, shadow flag), then one binary string with every
/// decision: its limit count `n` (u16), its cost (u32), and `n` pairs (parameter set index,
/// key index in `KEYS`; u16 each), little-endian. Decoding bytes with `string.byte` spares
/// Redis a decimal parse (`strtod`) per number, the largest part of its work per decision
/// when numbers come as strings. The reply
/// holds five numbers per decision, so that Redis converts little:
/// - admitted: `1, j, cells left, µs until full, shadow bits` for its binding limit `j` (the
///   enforcing one with the fewest cells left; 0 when only shadow limits applied);
/// - denied: `0, j, µs until admitted, µs until full, shadow bits` for the denying limit `j`
///   that frees up last.
///
/// Bit `j - 1` of the shadow bits is set when shadow limit `j` would have denied.
pub(super) const GCRA_BATCH: &str = r#"
local tonumber, floor, ceil = tonumber, math.floor, math.ceil
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local raw = redis.call('MGET', unpack(KEYS))
local tat = {}
for i = 1, #KEYS do
  local v = tonumber(raw[i])
  if (not v) or v < now then v = now end
  tat[i] = v
end
local nl = tonumber(ARGV[1])
local interval, cap, shadow = {}, {}, {}
for l = 1, nl do
  local b = 2 + 3 * (l - 1)
  interval[l] = tonumber(ARGV[b])
  cap[l] = tonumber(ARGV[b + 1])
  shadow[l] = ARGV[b + 2] == '1'
end
local dirty = {}
local out = {}
local o = 0
local blob = ARGV[2 + 3 * nl]
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
    local ahead = tat[k] + cost * interval[l] - now
    if ahead <= cap[l] then
      local left = cap[l] - ahead
      if ok and not shadow[l] and (best < 0 or left < best) then bj, best, reset = j, left, ahead end
    elseif shadow[l] then
      shadows = shadows + 2 ^ (j - 1)
    elseif ok or ahead - cap[l] > best then
      ok = false
      bj, best, reset = j, ahead - cap[l], tat[k] - now
    end
  end
  if ok then
    for j = 1, n do
      local k, l = ks[j], ls[j]
      local nt = tat[k] + cost * interval[l]
      if nt - now <= cap[l] then
        tat[k] = nt
        dirty[k] = true
      end
    end
    out[o + 1] = 1
    out[o + 3] = bj > 0 and floor(best / interval[ls[bj]]) or 0
  else
    out[o + 1] = 0
    out[o + 3] = ceil(best)
  end
  out[o + 2] = bj
  out[o + 4] = ceil(reset)
  out[o + 5] = shadows
  o = o + 5
end
for k in pairs(dirty) do
  redis.call('SET', KEYS[k], tat[k], 'PX', ceil((tat[k] - now) / 1000) + 1)
end
return out
"#;

/// Takes a lease: `min(want, available)` cells of one key, provided at least `min` are
/// available; otherwise nothing, and how long until `min` are. Same key format and GCRA as
/// `GCRA_MULTI`, so exact and leasing instances share one bucket.
pub(super) const GCRA_LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local min = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]))
if (not tat) or tat < now then tat = now end
local ahead = tat - now
local avail = math.floor((cap - ahead) / interval + 1e-9)
if avail < min then
  return {0, math.ceil(ahead + min * interval - cap)}
end
local n = math.min(want, avail)
local nt = tat + n * interval
redis.call('SET', KEYS[1], nt, 'PX', math.ceil((nt - now) / 1000) + 1)
return {n, math.ceil(nt - now)}
"#;
