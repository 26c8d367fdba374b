-- fill.lua - stores a cache entry unless one of its tags was invalidated since the lookup.
--
-- KEYS  the entry's key, the response's key, the fill lease's key, the variants key of
--       the entry's primary, then the tag keys.
-- ARGV  ttl_ms, the entry's value ([8-byte token][8 bytes, overwritten here with
--       expires_ms as a little-endian double][the tags with the generations recorded],
--       what admit.lua reads), the response's head (what the gateway wrote:
--       store_redis.c), the token, keep_ms (ttl_ms + the entry's stale_ms: how long
--       both keys live), the cache key when it is a secondary entry (else ""), then
--       the generation each tag had at the lookup. The response's key gets head ..
--       stored_ms .. expires_ms (two little-endian doubles, from TIME) .. token.
-- Returns { 1, now_ms } when stored (or, with keep_ms 0, when the old entry was
-- dropped), { 0, now_ms } when refused: a tag's generation is not the one read
-- at the lookup, or its key is gone (expired or evicted: it may have moved).
-- Either way the fill lease is released.
--
-- Each tag's TTL is extended to at least the entry's keep, so a tag outlives
-- every entry that depends on it. A secondary entry's key is added to its
-- primary's variants set (which lives as long as its longest-kept member), so
-- that removing the primary removes it too (delete.lua). The response is written
-- with SET and APPEND, so it is never rebuilt as one Lua string.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local keep = tonumber(ARGV[5])

redis.call('DEL', KEYS[3])
for i = 5, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 2] then
    return { 0, now }
  end
end
if keep <= 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return { 1, now }
end
for i = 5, #KEYS do
  if redis.call('PTTL', KEYS[i]) < keep then
    redis.call('PEXPIRE', KEYS[i], ARGV[5])
  end
end
-- The entry first: the response expires no earlier than the entry that leads to it.
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
redis.call('SETRANGE', KEYS[1], 8, struct.pack('<d', now + ttl))
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('APPEND', KEYS[2], struct.pack('<dd', now, now + ttl) .. ARGV[4])
if #ARGV[6] > 0 then
  redis.call('SADD', KEYS[4], ARGV[6])
  if redis.call('PTTL', KEYS[4]) < keep then
    redis.call('PEXPIRE', KEYS[4], ARGV[5])
  end
end
return { 1, now }
