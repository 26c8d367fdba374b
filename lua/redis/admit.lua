-- admit.lua - the rate-limit checks and the cache lookup of one request, in one call.
--
-- KEYS  the limit keys (nl of them), then the entry key (when has_entry is 1),
--       then the tag keys (nt).
-- ARGV  nl, has_entry, nt, tag_lease_ms, then for each limit:
--       algorithm (0 sliding_window, 1 sliding_log, 2 token_bucket, 3 fixed_window),
--       limit, window_ms, burst, cost.
-- Returns { now_ms, allowed, for each limit: allowed, remaining, reset_ms, retry_ms,
--           for each tag: its generation, the entry or false }.
--
-- Every limit is checked first; only when all admit are they committed. Then,
-- only when admitted, the tags' generations are read (a tag without a key is
-- created at the current time in microseconds with a lease TTL, so a later
-- invalidation or expiry can never bring back the value read here) and the
-- entry is looked up: it is a hit only while every tag it was filled under
-- still holds the generation it recorded; a stale entry is deleted.
--
-- The math is engine/limiter.c's, in integer milliseconds held in doubles:
-- exact while limit * window_ms and burst * window_ms stay below 2^53 (the
-- store refuses rules beyond that). Time comes from the server's TIME only.

local nl, has_entry, nt = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local tag_lease = tonumber(ARGV[4])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local real_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- floor(a / b) for integers a >= 0, b > 0 held exactly in doubles.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function wstart(ts, w)
  return idiv(ts, w) * w
end

local function fmt(v)
  return string.format('%d', v)
end

-- Reads "a:b:c" (missing fields are 0); an absent key is the empty state.
local function load3(key)
  local v = redis.call('GET', key)
  if not v then
    return { 0, 0, 0 }
  end
  local a, b, c = string.match(v, '^(%d+):(%d+):?(%d*)$')
  return { tonumber(a) or 0, tonumber(b) or 0, tonumber(c) or 0 }
end

-- Writes the state with a TTL up to `expiry` (absolute ms); an expired state is dropped.
local function store(key, value, expiry)
  local px = expiry - real_now
  if px <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, value, 'PX', px)
  end
end

---------------------------------------------------------------- sliding window
-- State "a:b:c": a = last commit ms, b = count of a's window, c = count of the one before.

local function sw_view(L, now)
  local w, st = L.w, L.st
  local wn, ws = wstart(now, w), wstart(st[1], w)
  local cur, prev = 0, 0
  if wn == ws then
    cur, prev = st[2], st[3]
  elseif wn - ws == w then
    prev = st[2]
  end
  return cur, prev, now - wn
end

local function sw_check(L, now)
  local w, limit, cost = L.w, L.limit, L.cost
  local cur, prev, el = sw_view(L, now)
  local est = idiv(prev * (w - el), w) + cur
  local ok = cost <= limit and est + cost <= limit
  local rem = ok and (limit - est - cost) or math.max(0, limit - est)
  local retry = 0
  if not ok then
    if cost > limit then
      retry = w
    else
      local m, left = limit - cost, w - el
      if cur <= m then
        retry = left - (idiv((m - cur + 1) * w + prev - 1, prev) - 1)
      else
        retry = left + (w - (idiv((m + 1) * w + cur - 1, cur) - 1))
      end
    end
  end
  return ok, rem, w - el, retry
end

local function sw_commit(L, now)
  local cur, prev = sw_view(L, now)
  store(L.key, fmt(now) .. ':' .. fmt(cur + L.cost) .. ':' .. fmt(prev), wstart(now, L.w) + 2 * L.w)
end

------------------------------------------------------------------ fixed window
-- State "a:b": a = last commit ms, b = count of a's window.

local function fw_count(L, now)
  return wstart(now, L.w) == wstart(L.st[1], L.w) and L.st[2] or 0
end

local function fw_check(L, now)
  local w, limit, cost = L.w, L.limit, L.cost
  local count = fw_count(L, now)
  local left = wstart(now, w) + w - now
  local ok = cost <= limit and count <= limit - cost
  local rem = ok and (limit - count - cost) or math.max(0, limit - count)
  local retry = 0
  if not ok then
    retry = cost > limit and w or left
  end
  return ok, rem, left, retry
end

local function fw_commit(L, now)
  store(L.key, fmt(now) .. ':' .. fmt(fw_count(L, now) + L.cost), wstart(now, L.w) + L.w)
end

------------------------------------------------------------------- sliding log
-- A sorted set: one member "<ms>.<n>" per admitted unit of cost, scored by its
-- time, and the member "m" scored by the last commit ms (it sorts after every
-- entry: its score is the largest and "m" follows digits).

local function sl_load(L)
  local b = redis.call('ZSCORE', L.key, 'm')
  L.last = b and tonumber(b) or nil
  return L.last or 0
end

local function sl_check(L, now)
  local key, w, limit, cost = L.key, L.w, L.limit, L.cost
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
  local total = redis.call('ZCARD', key)
  if L.last and L.last > now - w then
    total = total - 1
  end
  L.total = total
  local newest_left = 0
  if total > 0 then
    local r = redis.call('ZRANGE', key, total - 1, total - 1, 'WITHSCORES')
    L.newest = tonumber(r[2])
    newest_left = L.newest + w - now
  end
  local ok = cost <= limit and total <= limit - cost
  local rem = ok and (limit - total - cost) or math.max(0, limit - total)
  local reset = (ok and cost > 0) and w or newest_left
  local retry = 0
  if not ok then
    if cost > limit then
      retry = w
    else
      local excess = total - (limit - cost)
      local r = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
      retry = tonumber(r[2]) + w - now
    end
  end
  return ok, rem, reset, retry
end

local function sl_commit(L, now)
  local key, w, cost = L.key, L.w, L.cost
  if cost == 0 then
    if L.total == 0 then
      redis.call('DEL', key)
      return
    end
    redis.call('ZADD', key, now, 'm')
    local px = L.newest + w - real_now
    if px > 0 then
      redis.call('PEXPIRE', key, px)
    else
      redis.call('DEL', key)
    end
    return
  end
  local k = redis.call('ZCOUNT', key, now, now)
  local args = {}
  local done = 0
  while done < cost do
    local n = math.min(cost - done, 1000)
    args = {}
    for j = 1, n do
      args[2 * j - 1] = now
      args[2 * j] = fmt(now) .. '.' .. fmt(k + done + j)
    end
    redis.call('ZADD', key, unpack(args))
    done = done + n
  end
  redis.call('ZADD', key, now, 'm')
  redis.call('PEXPIRE', key, math.max(1, now + w - real_now))
end

------------------------------------------------------------------ token bucket
-- GCRA in units of 1/limit ms. State "a:b:c": the theoretical arrival time is
-- a + b/limit ms; c = last commit ms. Everything is computed relative to now,
-- so the products stay below burst * window_ms.

local function tb_base(L, now)
  local a, b = L.st[1], L.st[2]
  if a >= now then
    return (a - now) * L.limit + b
  end
  return 0
end

local function tb_check(L, now)
  local w, limit, burst, cost = L.w, L.limit, L.burst, L.cost
  local base = tb_base(L, now)
  local cap = burst * w
  local new = base + cost * w
  local ok = cost <= burst and new <= cap
  local after = ok and new or base
  local rem = after < cap and idiv(cap - after, w) or 0
  local reset = idiv(after + limit - 1, limit)
  local retry = 0
  if not ok then
    if cost > burst then
      retry = w
    else
      retry = idiv(new - cap + limit - 1, limit)
    end
  end
  return ok, rem, reset, retry
end

local function tb_commit(L, now)
  local tat = tb_base(L, now) + L.cost * L.w
  local q = idiv(tat, L.limit)
  local a, b = now + q, tat - q * L.limit
  store(L.key, fmt(a) .. ':' .. fmt(b) .. ':' .. fmt(now), a + (b ~= 0 and 1 or 0))
end

---------------------------------------------------------------------- dispatch

local checks = { [0] = sw_check, [1] = sl_check, [2] = tb_check, [3] = fw_check }
local commits = { [0] = sw_commit, [1] = sl_commit, [2] = tb_commit, [3] = fw_commit }

local out = { real_now, 1 }
local limits = {}
local allowed = true
for i = 1, nl do
  local p = 4 + (i - 1) * 5
  local L = {
    key = KEYS[i],
    algo = tonumber(ARGV[p + 1]),
    limit = tonumber(ARGV[p + 2]),
    w = tonumber(ARGV[p + 3]),
    burst = tonumber(ARGV[p + 4]),
    cost = tonumber(ARGV[p + 5]),
  }
  -- A check before the state's last commit acts at that commit's time.
  local last
  if L.algo == 1 then
    last = sl_load(L)
  else
    L.st = load3(L.key)
    last = L.algo == 2 and L.st[3] or L.st[1]
  end
  L.now = math.max(real_now, last)
  local ok, rem, reset, retry = checks[L.algo](L, L.now)
  allowed = allowed and ok
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = rem
  out[#out + 1] = reset
  out[#out + 1] = retry
  limits[i] = L
end

if not allowed then
  out[2] = 0
  for i = 1, nt do
    out[#out + 1] = 0
  end
  out[#out + 1] = false
  return out
end
for i = 1, nl do
  commits[limits[i].algo](limits[i], limits[i].now)
end

local tag0 = nl + (has_entry and 2 or 1)
for i = 0, nt - 1 do
  local key = KEYS[tag0 + i]
  local g = redis.call('GET', key)
  if not g then
    g = fmt(now_us)
    redis.call('SET', key, g, 'PX', tag_lease)
  end
  out[#out + 1] = g
end

local entry = false
if has_entry then
  local ekey = KEYS[nl + 1]
  local v = redis.call('GET', ekey)
  if v then
    -- [u32 n][n bytes: per tag, u32 key length, key, u32 generation length, generation] ...
    local n = struct.unpack('<I4', v)
    local pos, stop = 5, 5 + n
    local fresh = true
    while pos < stop do
      local kl, gl
      kl, pos = struct.unpack('<I4', v, pos)
      local tk = string.sub(v, pos, pos + kl - 1)
      pos = pos + kl
      gl, pos = struct.unpack('<I4', v, pos)
      if redis.call('GET', tk) ~= string.sub(v, pos, pos + gl - 1) then
        fresh = false
        break
      end
      pos = pos + gl
    end
    if fresh then
      entry = v
    else
      redis.call('DEL', ekey)
    end
  end
end
out[#out + 1] = entry
return out
