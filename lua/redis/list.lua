-- list.lua - what the admin's listing shows of some cache entries, read without their bodies.
--
-- KEYS  entry keys of primaries ("sl:{T}:c:KEY").
-- ARGV  [1] bytes read from the end of a stored response (its trailer: store_redis_codec.h),
--       [2] the most variants of one primary looked at, [3] "1" on a Redis Cluster: a tag
--       under another hash tag than the entry's is in another slot, not read here (the
--       listing may then show an entry a lookup would find invalidated).
-- Returns { now_ms, then per key: false when the entry is gone or one of its tags moved
--           (a lookup would miss it), else { entry, trailer, response length, head,
--           variants set size, { member, entry, trailer, response length, ... } } }.
--   entry    the entry's value: fill token, expiry and tags (admit.lua says how);
--   trailer  the response's last ARGV[1] bytes (GETRANGE), never its body;
--   head     a Vary marker's first bytes (its field names; at most 1 KiB), else false;
--   members  of the primary's variants set ("sl:{T}:v:KEY") whose entries a lookup finds,
--            at most ARGV[2] looked at (SRANDMEMBER picks them when the set has more).
--
-- Read only. A secondary's keys share its primary's hash tag: the head of the primary's
-- entry key, up to its closing brace, then ":c:" or ":r:" and the member (as delete.lua).

local sunpack = struct.unpack
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tlen = tonumber(ARGV[1])
local vmax = tonumber(ARGV[2])
local local_tags = ARGV[3] == '1'

-- The entry's value when every tag still holds the generation it recorded, else false.
local function current(c)
  local v = redis.call('GET', c)
  if not v then
    return false
  end
  local p, stop = 17, #v + 1
  while p < stop do
    local kl, gl
    kl, p = sunpack('<I4', v, p)
    local tk = string.sub(v, p, p + kl - 1)
    gl, p = sunpack('<I4', v, p + kl)
    if not (local_tags and string.sub(tk, 1, string.find(tk, '}', 1, true)) ~=
            string.sub(c, 1, string.find(c, '}', 1, true))) and
        redis.call('GET', tk) ~= string.sub(v, p, p + gl - 1) then
      return false
    end
    p = p + gl
  end
  return v
end

-- The entry, trailer and response length of KEY under head, or false.
local function read(head, key)
  local v = current(head .. ':c:' .. key)
  if not v then
    return false
  end
  local r = head .. ':r:' .. key
  local n = redis.call('STRLEN', r)
  if n == 0 then
    return false
  end
  return v, redis.call('GETRANGE', r, -tlen, -1), n
end

local out = { now }
for i = 1, #KEYS do
  local c = KEYS[i]
  local head = string.sub(c, 1, string.find(c, '}', 1, true))
  local key = string.sub(c, #head + 4)
  local v, tr, n = read(head, key)
  if not v then
    out[i + 1] = false
  else
    local first = false
    -- The flags byte sits 26 bytes from the end of every layout; 2 is a Vary marker. Its
    -- first bytes are its names (the caller cuts them at the body's length: ARGV[1] may be
    -- more than the trailer, when it has room for the lengths of coded forms).
    if #tr >= 26 and bit.band(string.byte(tr, #tr - 25), 2) ~= 0 then
      first = redis.call('GETRANGE', head .. ':r:' .. key, 0, math.min(n, 1024) - 1)
    end
    local vkey = head .. ':v:' .. key
    local size = redis.call('SCARD', vkey)
    local members
    if size > vmax then
      members = redis.call('SRANDMEMBER', vkey, vmax)
    elseif size > 0 then
      members = redis.call('SMEMBERS', vkey)
    else
      members = {}
    end
    local vs = {}
    for j = 1, #members do
      local mv, mtr, mn = read(head, members[j])
      if mv then
        vs[#vs + 1] = members[j]
        vs[#vs + 1] = mv
        vs[#vs + 1] = mtr
        vs[#vs + 1] = mn
      end
    end
    out[i + 1] = { v, tr, n, first, size, vs }
  end
end
return out
