-- invalidate.lua - bumps the generation of each tag: entries filled under an older one are stale.
--
-- KEYS  the tag keys.
-- ARGV  lease_ms: the least TTL a tag key keeps after this.
-- Returns the number of tags bumped.
--
-- The new generation is max(current + 1, now in microseconds): it always
-- grows, and a tag key created again after it expired starts above every
-- value it held before (as long as the server's clock does not step back).
-- The key keeps its TTL when that is longer than the lease (an entry
-- depends on it).

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1])

for i = 1, #KEYS do
  local g = now_us
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local c = tonumber(cur) + 1
    if c > g then
      g = c
    end
  end
  local px = redis.call('PTTL', KEYS[i])
  if px < lease then
    px = lease
  end
  redis.call('SET', KEYS[i], string.format('%d', g), 'PX', px)
end
return #KEYS
