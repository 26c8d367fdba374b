-- fleet.lua - one instance publishes itself and reads the fleet (store_fleet()).
--
-- KEYS  the fleet's hash: a field per instance, its id, whose value is
--       "SEEN_MS<TAB>RECORD" (the record is the instance's, opaque here).
-- ARGV  the instance's id, its record, the time to live in ms.
-- Returns { now_ms, id, value, id, value, ... }: every instance that published
-- within the time to live, this one included. Older fields are removed, and
-- the key expires a time to live after the last publication. The clock is
-- Redis's (TIME), as for every other script: instances' clocks may differ.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d\t', now) .. ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local out = { string.format('%d', now) }
for i = 1, #all, 2 do
  local seen = tonumber(string.match(all[i + 1], '^(%d+)\t'))
  if seen and now - seen < ttl then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return out
