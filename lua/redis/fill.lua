-- fill.lua - stores a cache entry unless one of its tags was invalidated since the lookup.
--
-- KEYS  the entry key, then the tag keys.
-- ARGV  ttl_ms, head, tail, then the generation each tag had at the lookup.
--       The stored value is head .. stored_ms .. expires_ms (two little-endian
--       doubles, from TIME) .. tail; head starts with the tag section that
--       admit.lua reads (tag keys and generations), then the status.
-- Returns { 1, now_ms } when stored (or, with ttl_ms 0, when the old entry was
-- dropped), { 0, now_ms } when refused: a tag's generation is not the one read
-- at the lookup, or its key is gone (expired or evicted: it may have moved).
--
-- Each tag's TTL is extended to at least the entry's, so a tag outlives every
-- entry that depends on it.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])

for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 2] then
    return { 0, now }
  end
end
if ttl <= 0 then
  redis.call('DEL', KEYS[1])
  return { 1, now }
end
for i = 2, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. struct.pack('<dd', now, now + ttl) .. ARGV[3], 'PX', ttl)
return { 1, now }
