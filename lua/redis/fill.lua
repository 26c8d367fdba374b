-- fill.lua - stores a cache entry unless one of its tags was invalidated since the lookup.
--
-- KEYS  the entry's key, the response's key, the fill lease's key, then the tag keys.
-- ARGV  ttl_ms, the entry's value ([8-byte token][the tags with the generations
--       recorded], what admit.lua reads), the response's head ([body][content
--       type][u32 content type length][u16 status]), the token, then the
--       generation each tag had at the lookup. The response's key gets head ..
--       stored_ms .. expires_ms (two little-endian doubles, from TIME) .. token.
-- Returns { 1, now_ms } when stored (or, with ttl_ms 0, when the old entry was
-- dropped), { 0, now_ms } when refused: a tag's generation is not the one read
-- at the lookup, or its key is gone (expired or evicted: it may have moved).
-- Either way the fill lease is released.
--
-- Each tag's TTL is extended to at least the entry's, so a tag outlives every
-- entry that depends on it. The response is written with SET and APPEND, so it
-- is never rebuilt as one Lua string.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])

redis.call('DEL', KEYS[3])
for i = 4, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then
    return { 0, now }
  end
end
if ttl <= 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return { 1, now }
end
for i = 4, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
-- The entry first: the response expires no earlier than the entry that leads to it.
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[1])
redis.call('APPEND', KEYS[2], struct.pack('<dd', now, now + ttl) .. ARGV[4])
return { 1, now }
