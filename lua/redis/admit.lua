-- admit.lua - the rate-limit checks and cache lookups of a batch of requests, in one call.
--
-- The requests of a batch are the ones a gateway worker received in one turn of its event
-- loop whose keys share one hash tag (one cluster slot); a batch of one is the common case.
-- They are decided one after the other, at one instant: each sees what the ones before it
-- committed, exactly as separate calls made within the same millisecond would.
--
-- KEYS  every key the batch reads, once each (limit states, entries, tags), then the
--       fill lease keys.
-- ARGV  [1] the numbers, as little-endian doubles: nreq, nread (the keys read),
--       tag_lease_ms, local_tags (1 on a Redis Cluster: an entry's recorded tags under
--       another hash tag than the entry's are not read here; the caller compares them),
--       then per request: nl, entry (index in KEYS, 0: no lookup), lease
--       (index, 0: none), lease_ms, nt, peek (1: check only, commit nothing), then nl times: key index, algorithm (0
--       sliding_window, 1 sliding_log, 2 token_bucket, 3 fixed_window), limit, window_ms,
--       burst, cost, shadow (1: a shadow limit, 0: enforced); then nt tag key indexes.
-- Returns { now_ms, then per request: allowed, for each limit: allowed, remaining,
--           reset_ms, retry_ms, and with a lookup: for each tag its generation, then the
--           entry's 8-byte fill token when it is a hit, the token and one byte when it is
--           stale ("\1": this request took the fill lease, "\0": it did not), 1 when
--           another caller holds the fill lease, or false }.
--
-- A request's limits are all checked first; only when all the enforced ones admit are
-- they committed: the enforced ones, and the shadow ones that admit (a shadow limit is
-- decided like any other and its result returned, but its refusal refuses nothing).
-- Then, only when admitted, the tags' generations are read (a tag without a key is
-- created at the current time in microseconds with a lease TTL, so a later invalidation
-- or expiry can never bring back the value read here) and the entry is looked up: it is
-- a hit only while every tag it was filled under still holds the generation it
-- recorded; an entry whose tags moved is deleted (a miss, never stale). An entry past its
-- expiry is stale (its key lives on for the entry's stale_ms). On a miss or a stale entry
-- with a lease, the request takes the fill lease (SET NX PX lease_ms), or is told that
-- another caller holds it (a miss is then FILLING; a stale entry stays stale).
--
-- The entry's key holds [8-byte fill token][f64 expires_ms][per tag: u32 key length, key,
-- u32 generation length, generation]; the response itself is in a key of its own that
-- the gateway reads with a plain GET sent right after this script, and uses only when it
-- carries the same token: the body never passes through Lua (every string entering Lua
-- is hashed byte by byte).
--
-- The math is engine/limiter.c's, in integer milliseconds held in doubles: exact while
-- limit * window_ms and burst * window_ms stay below 2^53 (the store refuses rules
-- beyond that); floor(x / w) is (x - x % w) / w, exact for such integers. Time comes
-- from the server's TIME only.
--
-- This runs for every request: it is straight-line code that defines no function,
-- reads every key with one MGET, takes its numbers in one binary argument, keeps a
-- limit's state as three packed doubles (decimal conversions, strtod and printf, are
-- what costs in Redis's Lua) and writes each state once per batch, with KEEPTTL while
-- its expiry does not move.

local sunpack, spack = struct.unpack, struct.pack
local spec = ARGV[1]
local nreq, nread, tag_lease, local_tags, pos = sunpack('<dddd', spec)
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local real_now = sec * 1000 + (usec - usec % 1000) / 1000
local now_us
local vals = redis.call('MGET', unpack(KEYS, 1, nread))

-- The string states met, by key index: { a, b, c, window, algorithm, stored: the state
-- was read, wa: its window start as read, dirty: to write, then the state a check
-- proposes: na, nb, nc }.
local S = {}
local dirty, ndirty = {}, 0 -- the key indexes of S to write
-- Sliding logs met, by key index: { now, window, cost, total, newest } of the check.
local L
-- Fill leases: by key index, the request number that took it, or 0 when another
-- caller holds it.
local leases
local out = { real_now }
local n = 1

for r = 1, nreq do
  local nl, ek, lk, lease_ms, nt, peek
  nl, ek, lk, lease_ms, nt, peek, pos = sunpack('<dddddd', spec, pos)
  local first = pos
  local allowed = true
  local at = n + 1
  n = at
  for i = 1, nl do
    local k, algo, limit, w, burst, cost, shadow
    k, algo, limit, w, burst, cost, shadow, pos = sunpack('<ddddddd', spec, pos)
    local ok, rem, reset, retry
    if algo == 1 then
      -- Sliding log: a sorted set, one member "<ms>.<n>" per admitted unit of cost scored
      -- by its time, and the member "m" scored by the last commit ms (it sorts after
      -- every entry: its score is the largest and "m" follows digits).
      local key = KEYS[k]
      local lb = redis.call('ZSCORE', key, 'm')
      local last = lb and tonumber(lb) or nil
      local now = real_now
      if last and last > now then
        now = last
      end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
      local total = redis.call('ZCARD', key)
      if last and last > now - w then
        total = total - 1
      end
      local newest, newest_left = 0, 0
      if total > 0 then
        local z = redis.call('ZRANGE', key, total - 1, total - 1, 'WITHSCORES')
        newest = tonumber(z[2])
        newest_left = newest + w - now
      end
      ok = cost <= limit and total <= limit - cost
      rem = ok and (limit - total - cost) or (limit > total and limit - total or 0)
      reset = (ok and cost > 0) and w or newest_left
      retry = 0
      if not ok then
        if cost > limit then
          retry = w
        else
          local e = total - (limit - cost) - 1
          local z = redis.call('ZRANGE', key, e, e, 'WITHSCORES')
          retry = tonumber(z[2]) + w - now
        end
      end
      L = L or {}
      L[k] = { now, w, cost, total, newest }
    else
      local s = S[k]
      if not s then
        local v = vals[k]
        s = { 0, 0, 0, w, algo, false, 0, false, 0, 0, 0 }
        if v and #v == 24 then
          s[1], s[2], s[3] = sunpack('<ddd', v)
          s[6] = true
          s[7] = s[1] - s[1] % w
        end
        S[k] = s
      end
      local a, b, c = s[1], s[2], s[3]
      if algo == 2 then
        -- Token bucket, GCRA in units of 1/limit ms: the theoretical arrival time is
        -- a + b/limit ms; c = last commit ms. Relative to now, so the products stay
        -- below burst * window_ms.
        local now = real_now
        if c > now then
          now = c
        end
        local base = a >= now and (a - now) * limit + b or 0
        local cap = burst * w
        local new = base + cost * w
        ok = cost <= burst and new <= cap
        local after = ok and new or base
        if after < cap then
          local x = cap - after
          rem = (x - x % w) / w
        else
          rem = 0
        end
        local x = after + limit - 1
        reset = (x - x % limit) / limit
        retry = 0
        if not ok then
          if cost > burst then
            retry = w
          else
            x = new - cap + limit - 1
            retry = (x - x % limit) / limit
          end
        end
        local q = (new - new % limit) / limit
        s[9], s[10], s[11] = now + q, new - q * limit, now
      else
        -- Sliding window (a = last commit ms, b = count of a's window, c = count of the
        -- one before) or fixed window (a, b). A check before the state's last commit
        -- acts at that commit's time.
        local now = real_now
        if a > now then
          now = a
        end
        local ws, wa = now - now % w, a - a % w
        if algo == 0 then
          local cur, prev = 0, 0
          if ws == wa then
            cur, prev = b, c
          elseif ws - wa == w then
            prev = b
          end
          local el = now - ws
          local x = prev * (w - el)
          local est = (x - x % w) / w + cur
          ok = cost <= limit and est + cost <= limit
          rem = ok and (limit - est - cost) or (limit > est and limit - est or 0)
          reset = w - el
          retry = 0
          if not ok then
            if cost > limit then
              retry = w
            else
              local m, left = limit - cost, w - el
              if cur <= m then
                x = (m - cur + 1) * w + prev - 1
                retry = left - ((x - x % prev) / prev - 1)
              else
                x = (m + 1) * w + cur - 1
                retry = left + (w - ((x - x % cur) / cur - 1))
              end
            end
          end
          s[9], s[10], s[11] = now, cur + cost, prev
        else
          local count = ws == wa and b or 0
          local left = ws + w - now
          ok = cost <= limit and count <= limit - cost
          rem = ok and (limit - count - cost) or (limit > count and limit - count or 0)
          reset = left
          retry = ok and 0 or (cost > limit and w or left)
          s[9], s[10], s[11] = now, count + cost, 0
        end
      end
    end
    allowed = allowed and (ok or shadow == 1)
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = ok and 1 or 0, rem, reset, retry
    n = n + 4
  end
  out[at] = allowed and 1 or 0

  local tags = pos
  pos = pos + 8 * nt
  if allowed and peek == 0 then
    -- Commit: what each check proposed, but for a shadow limit that refused.
    local p = first
    for i = 1, nl do
      local k, algo, shadow
      k, algo, p = sunpack('<dd', spec, p)
      shadow, p = sunpack('<d', spec, p + 32)
      if shadow == 1 and out[at + 4 * i - 3] == 0 then
        -- not charged, as a refusal is not
      elseif algo ~= 1 then
        local s = S[k]
        s[1], s[2], s[3] = s[9], s[10], s[11]
        if not s[8] then
          s[8] = true
          ndirty = ndirty + 1
          dirty[ndirty] = k
        end
      else
        local key = KEYS[k]
        local l = L[k]
        local now, w, cost, total, newest = l[1], l[2], l[3], l[4], l[5]
        if cost == 0 then
          if total == 0 then
            redis.call('DEL', key)
          else
            redis.call('ZADD', key, now, 'm')
            local px = newest + w - real_now
            if px > 0 then
              redis.call('PEXPIRE', key, px)
            else
              redis.call('DEL', key)
            end
          end
        else
          local c0 = redis.call('ZCOUNT', key, now, now)
          local stamp = string.format('%d', now) .. '.'
          local done = 0
          while done < cost do
            local m = math.min(cost - done, 1000)
            local args = {}
            for j = 1, m do
              args[2 * j - 1] = now
              args[2 * j] = stamp .. string.format('%d', c0 + done + j)
            end
            redis.call('ZADD', key, unpack(args))
            done = done + m
          end
          redis.call('ZADD', key, now, 'm')
          redis.call('PEXPIRE', key, math.max(1, now + w - real_now))
        end
      end
    end
  end

  if ek > 0 then
    if not allowed then
      for i = 1, nt do
        out[n + i] = 0
      end
      n = n + nt + 1
      out[n] = false
    else
      for i = 1, nt do
        local tk
        tk, tags = sunpack('<d', spec, tags)
        local g = vals[tk]
        if not g then
          if not now_us then
            now_us = string.format('%d', sec * 1000000 + usec)
          end
          g = now_us
          vals[tk] = g
          redis.call('SET', KEYS[tk], g, 'PX', tag_lease)
        end
        out[n + i] = g
      end
      n = n + nt + 1
      local v = vals[ek]
      if v then
        local p, stop = 17, #v + 1
        while p < stop do
          local kl, gl, tk, g
          kl, p = sunpack('<I4', v, p)
          tk = string.sub(v, p, p + kl - 1)
          gl, p = sunpack('<I4', v, p + kl)
          for j = 1, nread do
            if KEYS[j] == tk then
              g = vals[j]
              break
            end
          end
          if not g then
            if local_tags == 1 and
                string.sub(tk, 1, string.find(tk, '}', 1, true)) ~=
                string.sub(KEYS[ek], 1, string.find(KEYS[ek], '}', 1, true)) then
              g = string.sub(v, p, p + gl - 1) -- in another slot: the caller's to check
            else
              g = redis.call('GET', tk)
            end
          end
          if g ~= string.sub(v, p, p + gl - 1) then
            redis.call('DEL', KEYS[ek])
            vals[ek] = false
            v = false
            break
          end
          p = p + gl
        end
      end
      local fresh = v and real_now < sunpack('<d', v, 9)
      if fresh then
        out[n] = string.sub(v, 1, 8)
      elseif lk == 0 then
        out[n] = v and string.sub(v, 1, 8) .. '\0' or false
      else
        leases = leases or {}
        local holder = leases[lk]
        if not holder then
          holder = redis.call('SET', KEYS[lk], '1', 'NX', 'PX', lease_ms) and r or 0
          leases[lk] = holder
        end
        if v then
          out[n] = string.sub(v, 1, 8) .. (holder == r and '\1' or '\0')
        elseif holder == r then
          out[n] = false
        else
          out[n] = 1
        end
      end
    end
  end
end

-- Each state written once.
for i = 1, ndirty do
  local k = dirty[i]
  local s = S[k]
  do
    local a, b, w, algo = s[1], s[2], s[4], s[5]
    local px
    if algo == 2 then
      px = a + (b ~= 0 and 1 or 0) - real_now
    else
      local ws = a - a % w
      if s[6] and ws == s[7] then
        px = false
      else
        px = ws + (algo == 0 and 2 * w or w) - real_now
      end
    end
    local value = spack('<ddd', a, b, s[3])
    if not px then
      redis.call('SET', KEYS[k], value, 'KEEPTTL')
    elseif px > 0 then
      redis.call('SET', KEYS[k], value, 'PX', px)
    else
      redis.call('DEL', KEYS[k])
    end
  end
end
return out
