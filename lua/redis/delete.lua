-- delete.lua - removes a cache entry and, for a primary, its secondary entries.
--
-- KEYS  the entry's key, its response's key, its variants key (the set of its
--       secondaries' cache keys, which fill.lua keeps).
-- Returns the number of entries removed (entry keys that existed).
--
-- A secondary's keys share the primary's hash tag, so they are the entry's and
-- response's keys with the primary's cache key replaced by the secondary's:
-- everything up to the hash tag's closing brace, then ":c:" or ":r:", then the
-- member. UNLINK frees values off the main thread.

local c, r, v = KEYS[1], KEYS[2], KEYS[3]
local n = redis.call('UNLINK', c)
redis.call('UNLINK', r)
local members = redis.call('SMEMBERS', v)
if #members > 0 then
  local head = string.sub(c, 1, string.find(c, '}', 1, true))
  for i = 1, #members do
    n = n + redis.call('UNLINK', head .. ':c:' .. members[i])
    redis.call('UNLINK', head .. ':r:' .. members[i])
  end
  redis.call('UNLINK', v)
end
return n
