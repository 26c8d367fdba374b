-- tags.lua - reads tags' generations, creating missing ones; on a Redis Cluster, for the tags
-- of a lookup or a fill that are not in the entry's slot.
--
-- KEYS  tag keys (of one hash tag: one slot).
-- ARGV  lease_ms: the TTL of a tag key created here; keep_ms: the least TTL each tag key
--       keeps after this (0: unchanged), so that a tag outlives the entries filled under it.
-- Returns each tag's generation, a decimal string.
--
-- A missing tag is created at the server's time in microseconds, as admit.lua and
-- invalidate.lua do: a tag key made again after it expired starts above every value it
-- held before, so an entry that recorded an older generation never matches it.

local lease, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, now_us = {}, nil

for i = 1, #KEYS do
  local g = redis.call('GET', KEYS[i])
  if not g then
    if not now_us then
      local t = redis.call('TIME')
      now_us = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
    end
    g = now_us
    redis.call('SET', KEYS[i], g, 'PX', keep > lease and keep or lease)
  elseif keep > 0 and redis.call('PTTL', KEYS[i]) < keep then
    redis.call('PEXPIRE', KEYS[i], keep)
  end
  out[i] = g
end
return out
