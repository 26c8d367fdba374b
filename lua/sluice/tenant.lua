-- sluice.tenant: checks one tenant file (tenants/NAME.lua) against the main
-- policy set and builds its normalized overrides.
--
-- A tenant file holds the rules of one tenant: the callers whose tenant
-- header (identity { tenant = header "X-Tenant-Id" }) is NAME.
--
--   tier "free" { limit = 500 }                 -- a tier of the main set, for this tenant
--   endpoint "GET /api/crm?type=contacts" {     -- an endpoint of the main set; only
--     cache = { ttl = "1m" },                   -- cache.ttl and limit can change
--     limit = { "tier", { limit = 5, window = "1m", key = "t:{user}" } },
--   }
--   hook "reports" {                            -- Lua run for the tenant's requests
--     when = function(req) return req.path:find("^/api/reports/") ~= nil end,
--     adjust = function(req, decision) decision.cost = 5 end,
--   }
--
-- Each tenant file is checked on its own: its errors belong to its tenant
-- and never reject the main set or another tenant.
local validate = require "sluice.validate"
local suggest = require "sluice.suggest"

local M = {}

-- Lua VM instructions a tenant file may run when it is loaded. The engine
-- loads the file again with the same budget to collect its hooks.
M.BUDGET = 1000000

-- Milliseconds one tenant file may take to load, its checks included (in the
-- engine: time inside C functions counts). A file that takes longer fails
-- alone, like a file with errors: the main set and the other tenants load.
M.TIME_BUDGET_MS = 200

-- Tenant names are file names: tenants/acme.lua holds the tenant "acme".
M.NAME_PATTERN = "^[%w_.%-]+$"

local quote = validate.quote
local describe = validate.describe

local HOOK_FIELDS = { "when", "adjust" }
local CHANGEABLE = "a tenant file may change only cache.ttl and limit of an endpoint"

local function where(d)
  return d.file .. ":" .. d.line
end

local function names_of(list)
  local names = {}
  for _, v in ipairs(list) do
    names[#names + 1] = v.name
  end
  return names
end

-- The same text for two routes that differ only in the order of their pins.
local function pins_key(method, path, pins)
  local list = {}
  for _, p in ipairs(pins) do
    list[#list + 1] = p.name .. "=" .. p.value
  end
  table.sort(list)
  return method .. " " .. path .. "?" .. table.concat(list, "&")
end

-- The same text for two names of one route ("GET /x?b=2&a=1", "GET /x?a=1&b=2").
local function route_key(name)
  local route = validate.parse_route(name)
  if not route then return name end
  return pins_key(route.method, route.path, route.pins)
end

-- tier "free" { limit = 500 }: the main tier with some fields replaced.
local function tier_override(c, d, f, base)
  c:only(f, validate.TIER_FIELDS)
  if next(f) == nil then
    c:err(nil, "changes nothing; set limit, window, algorithm, burst or mode")
  end
  local t = {
    name = d.name, limit = base.limit, window_ms = base.window_ms, algorithm = base.algorithm,
    burst = base.burst, mode = base.mode or validate.DEFAULT_MODE, file = d.file, line = d.line,
  }
  t.mode = validate.check_mode(c, f.mode, "mode", t.mode)
  if f.limit ~= nil then
    t.limit = c:positive_int(f.limit, "limit") or t.limit
  end
  if f.window ~= nil then
    t.window_ms = c:duration(f.window, "window", false, false) or t.window_ms
  end
  if f.algorithm ~= nil or f.burst ~= nil then
    local algorithm, burst = validate.check_algorithm(c, {
      algorithm = f.algorithm == nil and base.algorithm or f.algorithm, burst = f.burst,
    }, "")
    t.algorithm = algorithm
    if f.burst ~= nil then
      t.burst = burst
    elseif algorithm ~= "token_bucket" then
      t.burst = nil
    end
  end
  return t
end

-- The index of each endpoint of a main set by its route's key, made once per main set: a
-- tenant file checked against 10,000 endpoints finds each of its own in one lookup.
local endpoint_index = setmetatable({}, { __mode = "k" })

-- The endpoint of the main set that `route` names, and its index.
local function find_endpoint(main, route)
  local index = endpoint_index[main]
  if not index then
    index = {}
    for i, e in ipairs(main.endpoints) do
      local k = pins_key(e.method, e.path, e.pins)
      index[k] = index[k] or i
    end
    endpoint_index[main] = index
  end
  local i = index[pins_key(route.method, route.path, route.pins)]
  if i then
    return main.endpoints[i], i
  end
  return nil
end

-- endpoint "GET /x" { cache = { ttl = "1m" }, limit = ... }
local function endpoint_override(c, d, f, main, tiers)
  local route, err = validate.parse_route(d.name)
  if not route then
    c:err(nil, err)
    return nil
  end
  local e, index
  if main then
    e, index = find_endpoint(main, route)
    if not e then
      c:err(nil, "is not an endpoint of the main policy set"
        .. suggest.hint(d.name, names_of(main.endpoints), '"', '"'))
      return nil
    end
    c.what = "endpoint " .. quote(e.name)
  end
  local endpoint_fields = validate.set_of(validate.ENDPOINT_FIELDS)
  for _, k in ipairs(validate.sorted_keys(f)) do
    if type(k) ~= "string" then
      c:err(nil, "unexpected list item " .. describe(f[k]) .. " (fields are written name = value)")
    elseif k ~= "cache" and k ~= "limit" then
      if endpoint_fields[k] then
        c:err(k, "cannot be changed here: " .. CHANGEABLE)
      else
        c:err(k, "unknown field '" .. k .. "'" .. suggest.hint(k, { "cache", "limit" }) .. " (" .. CHANGEABLE .. ")")
      end
    end
  end
  if next(f) == nil then
    c:err(nil, "changes nothing; set cache = { ttl = \"...\" } or limit")
  end
  local o = { name = e and e.name or (route.method .. " " .. route.target), index = index, file = d.file, line = d.line }
  if f.cache ~= nil then
    local cache = c:record(f.cache, "cache", '{ ttl = "1m" }')
    if cache then
      for _, k in ipairs(validate.sorted_keys(cache)) do
        if k ~= "ttl" then
          if type(k) == "string" and validate.set_of(validate.CACHE_FIELDS)[k] then
            c:err("cache." .. k, "cannot be changed here: a tenant file may change only cache.ttl")
          else
            c:err("cache", "unknown field '" .. tostring(k) .. "' (a tenant file may change only cache.ttl)")
          end
        end
      end
      o.ttl_ms = c:duration(cache.ttl, "cache.ttl", true, false, 'e.g. ttl = "1m"')
      if e and not e.cache then
        c:err("cache", "the endpoint is not cached in the main policy set; a tenant file can only change the ttl"
          .. " of a cached endpoint")
      end
    end
  end
  if f.limit ~= nil then
    local env = { known = main ~= nil, identity = main and main.identity }
    o.limits = validate.check_limits(c, f.limit, validate.request_opts(env, route), env)
    for i, l in ipairs(o.limits) do
      local field = #o.limits > 1 and ("limit[" .. i .. "]") or "limit"
      if l.tier and main and #main.tiers == 0 then
        c:err(field, "\"tier\" needs at least one tier declared in the main policy set")
      elseif not l.tier and l.name and tiers[l.name] then
        c:err(field, "name " .. quote(l.name) .. " is also a tier's name; RateLimit headers could not tell them apart")
      end
    end
  end
  return o
end

-- hook "name" { when = function(req) ... end, adjust = function(req, decision) ... end }
local function hook_decl(c, d, f)
  if not d.name:match(validate.NAME_PATTERN) then
    c:err(nil, "hook name " .. quote(d.name) .. " may use only letters, digits, '_' and '-'")
  end
  c:only(f, HOOK_FIELDS)
  if f.adjust == nil then
    c:missing("adjust", "adjust = function(req, decision) ... end")
  elseif type(f.adjust) ~= "function" then
    c:err("adjust", "expected a function(req, decision), got " .. describe(f.adjust))
  end
  if f.when ~= nil and type(f.when) ~= "function" then
    c:err("when", "expected a function(req) that returns true for the requests to adjust, got " .. describe(f.when))
  end
  return { name = d.name, line = d.line }
end

--[[
Builds the normalized tenant NAME from the declarations of its file (path,
source) into `report`. `main` is the normalized main set, or nil when it did
not load: then only what the file says on its own is checked. Returns
  { name, file, source,
    tiers = { { name, limit, window_ms, algorithm, burst, mode, file, line } },   -- whole rules
    endpoints = { { name, index, file, line, ttl_ms = nil | ms, limits = nil | {...} } },
    hooks = { { name, line } } }
where an endpoint's `index` is its position in main.endpoints and `limits`
has the shape of an endpoint's limits in the main set.
]]
function M.build(name, path, source, decls, main, report)
  local t = { name = name, file = path, source = source, tiers = {}, endpoints = {}, hooks = {} }
  if type(name) ~= "string" or not name:match(M.NAME_PATTERN) then
    report:add(1, path, 1, "tenant name " .. quote(name) .. " (the file's name) may use only letters, digits,"
      .. " '_', '-' and '.'")
  end
  if main and not (main.identity and main.identity.tenant) then
    report:add(1, path, 1, "a tenant file needs an identity block in the main policy set that declares"
      .. " tenant = header \"X-Tenant-Id\"")
  end
  local main_tiers = {}
  for _, mt in ipairs(main and main.tiers or {}) do
    main_tiers[mt.name] = mt
  end
  local seen = { tier = {}, endpoint = {}, hook = {} }
  for _, d in ipairs(decls) do
    if d.fields then
      local c = validate.checker(report, d, validate.WHAT[d.kind](d))
      local key = d.kind == "endpoint" and route_key(d.name) or d.name
      local first = seen[d.kind][key]
      if first then
        c:err(nil, "is already declared at " .. where(first))
      else
        seen[d.kind][key] = d
      end
      if d.kind == "tier" then
        local base = main_tiers[d.name]
        if main and not base then
          c:err(nil, "is not a tier of the main policy set" .. suggest.hint(d.name, names_of(main.tiers), '"', '"')
            .. "; a tenant file can only change the tiers the main set declares")
        end
        local o = tier_override(c, d, d.fields, base or { algorithm = validate.DEFAULT_ALGORITHM })
        if not first then
          t.tiers[#t.tiers + 1] = o
        end
      elseif d.kind == "endpoint" then
        local o = endpoint_override(c, d, d.fields, main, main_tiers)
        if o and not first then
          t.endpoints[#t.endpoints + 1] = o
        end
      elseif d.kind == "hook" then
        local o = hook_decl(c, d, d.fields)
        if not first then
          t.hooks[#t.hooks + 1] = o
        end
      end
    end
  end
  return t
end

return M
