-- sluice.validate: checks the declarations of a policy set and builds the
-- normalized set the engine compiles.
--
-- A declaration is { kind = "endpoint", name = "GET /x", fields = {...},
-- file = path, fidx = index of the file, line = N }. Every problem is
-- reported as "file:line: what: field: message" with the line of the
-- declaration; checking goes on after a problem, so one run lists them all.
local duration = require "sluice.duration"
local template = require "sluice.template"
local sqltext = require "sluice.sql"
local headers = require "sluice.headers"
local suggest = require "sluice.suggest"

local M = {}

M.METHODS = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }
M.ALGORITHMS = { "sliding_window", "sliding_log", "token_bucket", "fixed_window" }
M.DEFAULT_ALGORITHM = "sliding_window"
-- A limit's mode: "enforce" refuses past the limit; "shadow" counts and decides the same way
-- but never refuses and never shows in the caller's RateLimit headers.
M.MODES = { "enforce", "shadow" }
M.DEFAULT_MODE = "enforce"
M.DEFAULT_TIER_TTL_MS = 60000
M.DEFAULT_UPSTREAM_TIMEOUT_MS = 5000
M.DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS = 1000
M.MAX_PARAMS = 16
-- What one endpoint may list at most: the request path keeps these in fixed
-- arrays. The same numbers as POLICY_MAX_* in engine/policy/policy.h.
M.MAX_LIMITS = 8 -- limits (in the main set and in a tenant's override)
M.MAX_TAGS = 16 -- cache.tags, and invalidate templates
M.MAX_ARGS = 32 -- SQL arguments (args, and tier.args of the identity block)
-- cache.max_size: sizes as bytes (a whole number) or text with a unit of 1024 ("512k", "1m", "2g").
M.MAX_CACHE_SIZE = 1024 * 1024 * 1024
local SIZE_UNITS = { [""] = 1, b = 1, k = 1024, kb = 1024, kib = 1024, m = 1048576, mb = 1048576,
  mib = 1048576, g = 1073741824, gb = 1073741824, gib = 1073741824 }

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do
    s[v] = true
  end
  return s
end

local METHOD_SET = set_of(M.METHODS)
local ALGORITHM_SET = set_of(M.ALGORITHMS)
local CACHEABLE = { GET = true, HEAD = true }

-- Values made by header "X" and sql("...") in a policy file carry this key.
M.MARK = setmetatable({}, { __name = "sluice.marker" })

local function quote(s)
  return '"' .. tostring(s) .. '"'
end

-- How a value is named in "expected X, got Y".
local function describe(v)
  if type(v) == "table" and v[M.MARK] == "header" then
    return "header " .. quote(v.name)
  elseif type(v) == "table" and v[M.MARK] == "claim" then
    return "claim " .. quote(v.name)
  elseif type(v) == "table" and v[M.MARK] == "sql" then
    return "sql(...)"
  elseif type(v) == "string" then
    return "string " .. string.format("%q", v)
  elseif type(v) == "number" or type(v) == "boolean" then
    return type(v) .. " " .. tostring(v)
  end
  return type(v)
end
M.describe = describe

local function is_marker(v, kind)
  return type(v) == "table" and v[M.MARK] ~= nil and (kind == nil or v[M.MARK] == kind)
end

local function is_plain_table(v)
  return type(v) == "table" and v[M.MARK] == nil
end

-- Returns true when t's keys are exactly 1..#t.
local is_list = headers.is_list

local function has_list_part(t)
  return t[1] ~= nil
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    if type(a) ~= type(b) then return type(a) < type(b) end
    if type(a) == "string" or type(a) == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

---------------------------------------------------------------------------
-- Reporting

local Report = {}
Report.__index = Report

-- Returns a collector of errors; `add` keeps them, `list` returns them in
-- file order, then line order, then the order they were found.
function M.report()
  return setmetatable({ items = {} }, Report)
end

function Report:add(fidx, file, line, text)
  self.items[#self.items + 1] = {
    fidx = fidx or 0, line = line or 0, seq = #self.items, text = file .. ":" .. (line or 1) .. ": " .. text,
  }
end

-- A message already in "path:line: text" form (Lua syntax and runtime errors).
function Report:raw(fidx, line, text)
  self.items[#self.items + 1] = { fidx = fidx or 0, line = line or 0, seq = #self.items, text = text }
end

function Report:count()
  return #self.items
end

function Report:list()
  local items = {}
  for i, e in ipairs(self.items) do
    items[i] = e
  end
  table.sort(items, function(a, b)
    if a.fidx ~= b.fidx then return a.fidx < b.fidx end
    if a.line ~= b.line then return a.line < b.line end
    return a.seq < b.seq
  end)
  local out = {}
  for i, e in ipairs(items) do
    out[i] = e.text
  end
  return out
end

---------------------------------------------------------------------------
-- Checking one declaration

local Check = {}
Check.__index = Check

local function checker(report, decl, what)
  return setmetatable({ report = report, decl = decl, what = what, failed = false }, Check)
end

function Check:err(field, msg)
  local text = self.what .. ": " .. (field and (field .. ": ") or "") .. msg
  self.report:add(self.decl.fidx, self.decl.file, self.decl.line, text)
  self.failed = true
end

function Check:missing(field, example)
  local text = self.what .. ": " .. field .. " is required" .. (example and (" (" .. example .. ")") or "")
  self.report:add(self.decl.fidx, self.decl.file, self.decl.line, text)
  self.failed = true
end

-- The set of each list of allowed names, made once per list.
local allowed_sets = setmetatable({}, { __mode = "k" })

-- Reports every key of t outside `allowed` (an array of names).
function Check:only(t, allowed, prefix)
  local ok = allowed_sets[allowed]
  if not ok then
    ok = set_of(allowed)
    allowed_sets[allowed] = ok
  end
  for _, k in ipairs(sorted_keys(t)) do
    if type(k) ~= "string" then
      self:err(prefix, "unexpected list item " .. describe(t[k]) .. " (fields are written name = value)")
    elseif not ok[k] then
      self:err(prefix, "unknown field '" .. k .. "'" .. suggest.hint(k, allowed))
    end
  end
end

-- Expects a plain table (not a list, not header/sql) at field; returns it or nil.
function Check:record(v, field, example)
  if not is_plain_table(v) then
    self:err(field, "expected a table " .. example .. ", got " .. describe(v))
    return nil
  end
  return v
end

function Check:string(v, field, required, example)
  if v == nil then
    if required then self:missing(field, example) end
    return nil
  end
  if type(v) ~= "string" then
    self:err(field, "expected a string, got " .. describe(v))
    return nil
  end
  return v
end

function Check:boolean(v, field, default)
  if v == nil then return default end
  if type(v) ~= "boolean" then
    self:err(field, "expected true or false, got " .. describe(v))
    return default
  end
  return v
end

function Check:positive_int(v, field, required, example)
  if v == nil then
    if required then self:missing(field, example) end
    return nil
  end
  local i = math.type(v) and math.tointeger(v)
  if not i or i < 1 then
    self:err(field, "expected a positive whole number, got " .. describe(v))
    return nil
  end
  return i
end

function Check:duration(v, field, required, allow_zero, example)
  if v == nil then
    if required then self:missing(field, example) end
    return nil
  end
  local ms, err = duration.parse(v, allow_zero)
  if not ms then
    self:err(field, err)
    return nil
  end
  return ms
end

-- Checks a size (bytes, or text such as "512k", "1m"); returns the bytes (1 to MAX_CACHE_SIZE),
-- or nil.
function Check:size(v, field)
  local n
  if math.type(v) == "integer" then
    n = v
  elseif type(v) == "string" then
    local digits, unit = v:match("^(%d+)%s*(%a*)$")
    local per = digits and SIZE_UNITS[unit:lower()]
    if not per or #digits > 12 then
      self:err(field, "bad size " .. quote(v) .. ' (use e.g. "512k", "1m", or a number of bytes)')
      return nil
    end
    n = math.tointeger(tonumber(digits)) * per
  else
    self:err(field, 'expected a size such as "1m", got ' .. describe(v))
    return nil
  end
  if n < 1 or n > M.MAX_CACHE_SIZE then
    self:err(field, "size " .. (type(v) == "string" and quote(v) or tostring(v)) .. " out of range (1 byte to 1g)")
    return nil
  end
  return n
end

-- Checks one template; returns its source and its variables, or nil.
function Check:template(v, field, opts)
  if type(v) ~= "string" then
    self:err(field, "expected a template string such as \"crm:{user}\", got " .. describe(v))
    return nil
  end
  local vars, err = template.check(v, opts)
  if not vars then
    self:err(field .. " " .. quote(v), err)
    return nil
  end
  return v, vars
end

-- Checks a list of templates; returns the list of sources (possibly
-- partial) and all their variables.
function Check:template_list(v, field, opts, example)
  local out, vars = {}, {}
  if v == nil then return out, vars end
  if not is_plain_table(v) or not is_list(v) then
    self:err(field, "expected a list of templates, as in " .. example .. ", got " .. describe(v))
    return out, vars
  end
  for i, item in ipairs(v) do
    local src, vs = self:template(item, field .. "[" .. i .. "]", opts)
    if src then
      out[#out + 1] = src
      for _, x in ipairs(vs) do
        vars[#vars + 1] = x
      end
    end
  end
  return out, vars
end

-- Reports a list at `field` longer than max: "lists 9 limits; an endpoint may have at most 8".
local function check_count(c, list, field, max, noun, holder)
  if is_plain_table(list) and #list > max then
    c:err(field, "lists " .. #list .. " " .. noun .. "; " .. holder .. " may have at most " .. max)
  end
end

---------------------------------------------------------------------------
-- Names and routes

local NAME_PATTERN = "^[%w_%-]+$"

local function check_name(c, name, what)
  if not name:match(NAME_PATTERN) then
    c:err(nil, what .. " name " .. quote(name) .. " may use only letters, digits, '_' and '-'")
    return false
  end
  return true
end

-- The first byte of s a route may not hold (controls, space, '#', DEL and above), or nil.
local function bad_route_char(s)
  local i = s:find("[%z\1- #\127-\255]")
  return i and s:byte(i)
end

-- Parses "GET /api/users/{id}?type=x". Returns { method, path, pins, params
-- (list), param_set, shape }, or nil and a message.
function M.parse_route(name)
  local method, target = name:match("^%s*(%S+)%s+(%S+)%s*$")
  if not method then
    return nil, 'expected "METHOD /path", as in "GET /api/users/{id}"'
  end
  if method ~= "*" and not METHOD_SET[method] then
    if METHOD_SET[method:upper()] then
      return nil, "unknown method " .. quote(method) .. " (methods are upper case: " .. method:upper() .. ")"
    end
    return nil, "unknown method " .. quote(method) .. " (use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, or * for any method)"
  end
  local path, query = target, nil
  local qmark = target:find("?", 1, true)
  if qmark then
    path, query = target:sub(1, qmark - 1), target:sub(qmark + 1)
  end
  if path:sub(1, 1) ~= "/" then
    return nil, "path " .. quote(path) .. ' must start with "/"'
  end
  local bad = bad_route_char(target)
  if bad then
    return nil, string.format("bad character 0x%02x in %s", bad, quote(target))
  end
  local params, param_set, shape = {}, {}, {}
  local segs = {}
  for seg in (path:sub(2) .. "/"):gmatch("([^/]*)/") do
    segs[#segs + 1] = seg
  end
  for i, seg in ipairs(segs) do
    local last = i == #segs
    if seg == "" and not last then
      return nil, "path " .. quote(path) .. " has an empty segment (\"//\"); only a trailing '/' may be empty"
    elseif seg == "*" then
      if not last then
        return nil, "path " .. quote(path) .. ": '*' must be the last segment"
      end
      shape[#shape + 1] = "*"
    elseif seg:sub(1, 1) == "{" then
      local p = #seg >= 2 and seg:sub(-1) == "}" and seg:sub(2, -2) or nil
      if not p then
        return nil, "path " .. quote(path) .. ": parameter " .. quote(seg) .. " must be a whole segment \"{name}\""
      end
      if p == "" then
        return nil, "path " .. quote(path) .. ': empty parameter name "{}"'
      end
      if not p:match(NAME_PATTERN) then
        return nil, "path " .. quote(path) .. ": bad parameter name " .. quote(seg)
          .. ": names use letters, digits, '_' and '-'"
      end
      if param_set[p] then
        return nil, "path " .. quote(path) .. ": parameter {" .. p .. "} appears twice"
      end
      params[#params + 1] = p
      param_set[p] = true
      shape[#shape + 1] = "{}"
    else
      if seg:find("{", 1, true) or seg:find("}", 1, true) or seg:find("*", 1, true) then
        return nil, "path " .. quote(path) .. ": segment " .. quote(seg)
          .. " mixes text with '{', '}' or '*' (parameters are whole segments \"{name}\","
          .. " '*' a whole last segment)"
      end
      if seg:find("%", 1, true) and seg:gsub("%%%x%x", ""):find("%", 1, true) then
        return nil, "path " .. quote(path) .. ": bad percent-encoding in segment " .. quote(seg)
      end
      shape[#shape + 1] = seg
    end
  end
  if #params > M.MAX_PARAMS then
    return nil, "path " .. quote(path) .. " has more than " .. M.MAX_PARAMS .. " parameters"
  end
  local pins = {}
  if query then
    if query == "" then
      return nil, "empty query after '?' in " .. quote(target)
    end
    local seen = {}
    for item in (query .. "&"):gmatch("([^&]*)&") do
      local k, v = item:match("^([^=]*)=(.*)$")
      if item == "" then
        return nil, "empty parameter in pinned query " .. quote(query)
      elseif not k then
        return nil, "pinned query parameter " .. quote(item) .. " needs a value (name=value)"
      elseif k == "" then
        return nil, "pinned query parameter " .. quote(item) .. " has no name"
      elseif v:find("=", 1, true) or (k .. v):find("[{}]") then
        return nil, "pinned query parameter " .. quote(item) .. " may not hold '=', '{' or '}'"
      elseif seen[k] then
        return nil, "pinned query parameter " .. quote(k) .. " given twice"
      end
      seen[k] = true
      pins[#pins + 1] = { name = k, value = v }
    end
  end
  return {
    method = method,
    path = path,
    target = target,
    pins = pins,
    params = params,
    param_set = param_set,
    shape = table.concat(shape, "/"),
  }
end

local function pin_map(pins)
  local m = {}
  for _, p in ipairs(pins) do
    m[p.name] = p.value
  end
  return m
end

local function same_pins(a, b)
  if #a ~= #b then return false end
  local m = pin_map(a)
  for _, p in ipairs(b) do
    if m[p.name] ~= p.value then return false end
  end
  return true
end

--[[
The routes declared so far, indexed to find the first one a new route
conflicts with: same method, same shape, as many pins, and pins one query
could satisfy both of (equal pins: a duplicate; others: an ambiguity). Only
routes in one bucket (method, shape, number of pins) can conflict. In a
bucket, the routes that pin the same names form a group; two routes of one
group conflict only when they pin the same values (a lookup), a route of
another group when it pins the same values on the names both pin, which a
lookup by those values finds too (an index per group and set of shared
names, built when first needed and kept up to date). So a route costs a few
lookups per group of its bucket: groups are few (the distinct sets of pinned
names on one path and method), and the search stops at groups that begin
after the earliest conflict found.
]]
local function route_index()
  return {}
end

-- The values `map` (pin name -> value) holds for `names`, as one key.
local function values_key(map, names)
  local vals = {}
  for i, n in ipairs(names) do
    vals[i] = map[n]
  end
  return table.concat(vals, "\0") -- names and values hold no byte below 0x21
end

-- The earliest entry of group g that pins the values `map` holds on the names
-- g shares with it, or nil.
local function earliest_compatible(g, map)
  local shared = {}
  for _, n in ipairs(g.names) do
    if map[n] ~= nil then shared[#shared + 1] = n end
  end
  if #shared == 0 then
    return g.entries[1]
  end
  local skey = table.concat(shared, "\0")
  local idx = g.by_shared[skey]
  if not idx then
    idx = { names = shared, first = {} }
    for _, e in ipairs(g.entries) do
      local k = values_key(e.map, shared)
      idx.first[k] = idx.first[k] or e
    end
    g.by_shared[skey] = idx
  end
  return idx.first[values_key(map, shared)]
end

-- Adds `entry` ({ route = parsed route, order = N, ... }, N growing) to the
-- index; returns the earliest entry already there that it conflicts with, or nil.
local function index_route(index, entry)
  local route = entry.route
  local map, names = {}, {}
  for i, p in ipairs(route.pins) do
    map[p.name] = p.value
    names[i] = p.name
  end
  table.sort(names)
  entry.map = map
  local bkey = route.method .. " " .. #names .. " " .. route.shape
  local bucket = index[bkey]
  if not bucket then
    bucket = { groups = {}, list = {} }
    index[bkey] = bucket
  end
  local gkey = table.concat(names, "\0")
  local vkey = values_key(map, names)
  local group = bucket.groups[gkey]
  local best = group and group.by_values[vkey]
  for _, g in ipairs(bucket.list) do -- in the order of their first entries
    if best and g.entries[1].order > best.order then
      break
    end
    if g ~= group then
      local e = earliest_compatible(g, map)
      if e and (not best or e.order < best.order) then
        best = e
      end
    end
  end
  if not group then
    group = { names = names, entries = {}, by_values = {}, by_shared = {} }
    bucket.groups[gkey] = group
    bucket.list[#bucket.list + 1] = group
  end
  group.entries[#group.entries + 1] = entry
  group.by_values[vkey] = group.by_values[vkey] or entry
  for _, idx in pairs(group.by_shared) do
    local k = values_key(map, idx.names)
    idx.first[k] = idx.first[k] or entry
  end
  return best
end

---------------------------------------------------------------------------
-- SQL statements and their arguments

-- Checks sql text and its args (a list of templates). Returns the args as
-- strings and the variables they use.
local function check_sql(c, sql, args, fsql, fargs, topts)
  local out, vars = {}, {}
  if args ~= nil and (not is_plain_table(args) or not is_list(args)) then
    c:err(fargs, "expected a list, as in { \"{user}\", \"{path.id}\" }, got " .. describe(args))
    args = nil
  end
  args = args or {}
  check_count(c, args, fargs, M.MAX_ARGS, "values", "a statement")
  for i, a in ipairs(args) do
    local f = fargs .. "[" .. i .. "]"
    if math.type(a) == "integer" then
      a = tostring(a)
    end
    local src, vs = c:template(a, f, topts)
    out[i] = src or (type(a) == "string" and a) or describe(a)
    for _, v in ipairs(vs or {}) do
      vars[#vars + 1] = v
    end
  end
  if sql == nil then
    return out, vars
  end
  if sql:match("^%s*$") then
    c:err(fsql, "is empty")
    return out, vars
  end
  local scan, err = sqltext.scan(sql)
  if not scan then
    c:err(fsql, err)
    return out, vars
  end
  if scan.statements > 1 then
    c:err(fsql, "holds more than one statement; write one statement per endpoint")
  end
  if scan.max > #args then
    if #args == 0 then
      c:err(fsql, "uses $" .. scan.max .. " but there are no " .. fargs
        .. " (add " .. fargs .. " = { \"{user}\", ... }, one template per $n)")
    else
      c:err(fsql, "uses $" .. scan.max .. " but " .. fargs .. " has " .. #args
        .. (#args == 1 and " value" or " values"))
    end
  end
  for i = 1, #args do
    if not scan.used[i] then
      c:err(fargs .. "[" .. i .. "]", quote(out[i]) .. " is not used: the SQL has no $" .. i)
    end
  end
  return out, vars
end

---------------------------------------------------------------------------
-- Tiers

local TIER_FIELDS = { "limit", "window", "algorithm", "burst", "mode" }

-- Checks the mode of a limit-like table at field `field`; returns "enforce" or "shadow",
-- or `default` when the table has none or names another.
local function check_mode(c, v, field, default)
  if v == nil then return default end
  local m = c:string(v, field)
  if m == "enforce" or m == "shadow" then return m end
  if m then
    c:err(field, "unknown mode " .. quote(m) .. suggest.hint(m, M.MODES)
      .. " (use \"enforce\" or \"shadow\")")
  end
  return default
end

-- Checks algorithm and burst of a limit-like table; returns both.
local function check_algorithm(c, t, prefix)
  local algorithm = M.DEFAULT_ALGORITHM
  if t.algorithm ~= nil then
    local a = c:string(t.algorithm, prefix .. "algorithm")
    if a and not ALGORITHM_SET[a] then
      c:err(prefix .. "algorithm", "unknown algorithm " .. quote(a)
        .. suggest.hint(a, M.ALGORITHMS) .. " (use sliding_window, sliding_log, token_bucket or fixed_window)")
    elseif a then
      algorithm = a
    end
  end
  local burst
  if t.burst ~= nil then
    burst = c:positive_int(t.burst, prefix .. "burst")
    if algorithm ~= "token_bucket" then
      c:err(prefix .. "burst", "only applies to algorithm = \"token_bucket\"")
      burst = nil
    end
  end
  return algorithm, burst
end

local function tier_decl(c, decl, f)
  c:only(f, TIER_FIELDS)
  local limit = c:positive_int(f.limit, "limit", true, "requests per window, e.g. limit = 100")
  local window = c:duration(f.window, "window", true, false, 'e.g. window = "1h"')
  local algorithm, burst = check_algorithm(c, f, "")
  return {
    name = decl.name, limit = limit, window_ms = window, algorithm = algorithm, burst = burst,
    mode = check_mode(c, f.mode, "mode", M.DEFAULT_MODE), file = decl.file, line = decl.line,
  }
end

---------------------------------------------------------------------------
-- Upstreams

local UPSTREAM_FIELDS = { "url", "timeout", "connect_timeout", "forward_headers",
  "request_headers", "response_headers" }
-- An https:// upstream's TLS files (upstream_tls below): each only with https.
local UPSTREAM_TLS_FIELDS = { "ca_file", "cert_file", "key_file" }
for _, k in ipairs(UPSTREAM_TLS_FIELDS) do UPSTREAM_FIELDS[#UPSTREAM_FIELDS + 1] = k end
local upstream_tls -- defined after key_path
M.MAX_FORWARD_HEADERS = 64 -- a request has at most 64 fields (HTTP_MAX_HEADERS)

-- Fields forward_headers may not name, and why: a client's is never forwarded (the lists of
-- engine/origin/upstream_parse.c, dropped_on_forward, and engine/gateway/proxy.c).
local NOT_FORWARDABLE = {}
for _, n in ipairs({ "host", "content-length", "x-forwarded-for", "x-forwarded-proto", "via", "x-request-id" }) do
  NOT_FORWARDABLE[n] = "is set by sluice itself"
end
for _, n in ipairs({ "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
  "trailer", "transfer-encoding", "upgrade", "proxy-connection" }) do
  NOT_FORWARDABLE[n] = "is hop-by-hop (RFC 9110 section 7.6.1) and never forwarded"
end
NOT_FORWARDABLE["expect"] = "is never forwarded (sluice reads the body before it forwards it)"
for _, n in ipairs({ "forwarded", "x-real-ip", "x-client-ip", "client-ip", "true-client-ip",
  "x-cluster-client-ip", "front-end-https", "x-url-scheme", "x-original-host", "x-host",
  "x-original-url", "x-rewrite-url" }) do
  NOT_FORWARDABLE[n] = "is never forwarded from a client (a caller could pose as a proxy with it)"
end

local FIELD_NAME = "^[!#$%%&'*+%-.^_`|~%w]+$"

-- forward_headers = { "Accept", "Authorization", ... }: the request fields an upstream gets.
local function check_forward_headers(c, v)
  if v == nil then return nil end
  local field = "forward_headers"
  if not is_plain_table(v) or not is_list(v) then
    c:err(field, 'expected a list of header names, as in { "Accept", "Authorization" }, got ' .. describe(v))
    return nil
  end
  check_count(c, v, field, M.MAX_FORWARD_HEADERS, "fields", "an upstream")
  local out, seen = {}, {}
  for i, n in ipairs(v) do
    local f = field .. "[" .. i .. "]"
    if type(n) ~= "string" or not n:match(FIELD_NAME) then
      c:err(f, "expected a header field name, got " .. describe(n))
    else
      local low = n:lower()
      local why = NOT_FORWARDABLE[low]
        or (low:sub(1, 12) == "x-forwarded-" and NOT_FORWARDABLE["forwarded"])
      if why then
        c:err(f, quote(n) .. " " .. why)
      elseif seen[low] then
        c:err(f, quote(n) .. " is listed twice (at [" .. seen[low] .. "] too)")
      else
        seen[low] = i
        out[#out + 1] = n
      end
    end
  end
  return out
end

-- Splits "http[s]://HOST[:PORT][/PREFIX]" into host, port, Host header text and
-- path prefix (without a trailing '/'); nil and a message when it cannot.
local function split_url(url)
  local scheme, hostport, path = url:match("^(https?)://([^/]+)(.*)$")
  if not hostport then return nil, "expected http[s]://HOST[:PORT][/PREFIX]" end
  local host, port
  if hostport:sub(1, 1) == "[" then
    host, port = hostport:match("^%[([%x:.]+)%](.*)$")
    if not host then return nil, "a bracketed IPv6 address must look like [::1]" end
  else
    host, port = hostport:match("^([^:]+)(.*)$")
  end
  if port ~= "" then
    port = port:match("^:(%d+)$")
    port = port and tonumber(port)
    if not port or port < 1 or port > 65535 then return nil, "the port must be a number from 1 to 65535" end
  else
    port = scheme == "https" and 443 or 80
  end
  if not host or host == "" or not host:match("^[%w.:%-]+$") then
    return nil, "the host may use only letters, digits, '.', '-' (or an IP address)"
  end
  path = path:gsub("/+$", "")
  return { host = host, port = port, host_header = hostport, prefix = path, tls = scheme == "https" }
end

local function upstream_decl(c, decl, f)
  c:only(f, UPSTREAM_FIELDS)
  local url = c:string(f.url, "url", true, 'e.g. url = "http://127.0.0.1:3000"')
  local parts
  if url then
    if not url:match("^https?://[^/?#%s]+[^%s#]*$") then
      c:err("url", "expected http[s]://HOST[:PORT][/PREFIX], got " .. quote(url))
    elseif url:find("?", 1, true) then
      c:err("url", "may not hold a query string")
    else
      local err
      parts, err = split_url(url)
      if not parts then c:err("url", err .. ", got " .. quote(url)) end
    end
  end
  local timeout = c:duration(f.timeout, "timeout", false, false)
  local connect = c:duration(f.connect_timeout, "connect_timeout", false, false)
  parts = parts or {}
  local u = {
    name = decl.name, url = url, timeout_ms = timeout or M.DEFAULT_UPSTREAM_TIMEOUT_MS,
    connect_timeout_ms = connect or M.DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
    host = parts.host, port = parts.port, host_header = parts.host_header, prefix = parts.prefix,
    forward_headers = check_forward_headers(c, f.forward_headers),
    file = decl.file, line = decl.line,
  }
  upstream_tls(c, f, u, parts.tls or (url ~= nil and url:match("^https://") ~= nil))
  return u
end

---------------------------------------------------------------------------
-- Identity

local IDENTITY_FIELDS = { "user", "tenant", "tier", "tier_ttl", "default_tier", "jwt", "api_key" }
local TIER_ARG_VARS = { user = true, tenant = true, ip = true, header = true }

-- What an identity value must be: header("X-User-Id", { integer = true }), claim("sub", {...}).
local HEADER_OPTIONS = { "integer", "uuid", "pattern", "trusted" }
local HEADER_OPTIONS_EXAMPLE = '{ integer = true }, { uuid = true } or { pattern = "[a-z0-9-]{1,64}" }'

local JWT_FIELDS = { "keys", "issuer", "audience", "leeway", "required" }
local JWT_KEY_FIELDS = { "jwks", "pem", "secret_file", "secret_env", "kid", "alg" }
local JWT_KEY_SOURCES = { "jwks", "pem", "secret_file", "secret_env" }
M.JWT_ALGS = { "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256" }
M.DEFAULT_JWT_LEEWAY_MS = 30000
M.MAX_JWT_KEYS = 64 -- key sources of one jwt block (JWK_MAX_KEYS in engine/policy/jwk.h)
M.MAX_CLAIM_NAME = 256 -- bytes of a claim's name in claim "NAME"
local API_KEY_FIELDS = { "header", "query", "sql", "hash", "ttl", "required" }
M.DEFAULT_API_KEY_TTL_MS = 60000

-- Checks the options of an identity header or claim into src (integer, uuid or pattern).
local function header_options(c, opts, field, src, noun)
  if opts == nil then return end
  if not is_plain_table(opts) then
    c:err(field, "expected options " .. HEADER_OPTIONS_EXAMPLE .. " after the " .. noun .. " name, got "
      .. describe(opts))
    return
  end
  c:only(opts, HEADER_OPTIONS, field)
  if opts.trusted ~= nil and noun == "header" then
    src.trusted = c:boolean(opts.trusted, field .. ".trusted", false) or nil
  elseif opts.trusted ~= nil then
    c:err(field .. ".trusted", "a claim of a verified credential needs no trust mark")
  end
  local given = {}
  for _, k in ipairs({ "integer", "uuid" }) do
    if opts[k] ~= nil and c:boolean(opts[k], field .. "." .. k, false) then
      src[k] = true
      given[#given + 1] = k
    end
  end
  if opts.pattern ~= nil then
    local p = c:string(opts.pattern, field .. ".pattern")
    if p == "" then
      c:err(field .. ".pattern", "is empty")
    elseif p and p:find("\0", 1, true) then
      c:err(field .. ".pattern", "may not hold a NUL byte")
    elseif p then
      -- A POSIX extended regular expression (as grep -E reads it); the engine compiles it
      -- and reports one that does not compile. It must match the whole value.
      src.pattern = p
      given[#given + 1] = "pattern"
    end
  end
  if #given > 1 then
    c:err(field, table.concat(given, " and ") .. " exclude each other; give one")
  end
end

-- header "NAME" or claim "NAME", with options when allow_options (the user and tenant).
-- `verified` is true when the identity block has a credential (jwt): then a caller's user and
-- tenant come from it, never from a header the caller could set.
local function identity_source(c, v, field, allow_options, verified)
  if v == nil then return nil end
  if is_marker(v, "claim") then
    if not verified then
      c:err(field, "claim " .. quote(tostring(v.name)) .. " needs a credential to read it from:"
        .. " declare jwt = { keys = \"jwks.json\", ... } or api_key = { ... } in this identity block")
      return nil
    end
    if type(v.name) ~= "string" or v.name == "" or #v.name > M.MAX_CLAIM_NAME or v.name:find("\0", 1, true) then
      c:err(field, "claim name must be a non-empty string of at most " .. M.MAX_CLAIM_NAME
        .. " bytes, as in claim \"sub\", got " .. describe(v.name))
      return nil
    end
    local src = { claim = v.name }
    if v.opts ~= nil and not allow_options then
      c:err(field, "takes no options: its value is matched against the declared tier names")
    elseif allow_options then
      header_options(c, v.opts, field, src, "claim")
    end
    return src
  end
  if not is_marker(v, "header") then
    local hint = type(v) == "string" and (" (write " .. field .. " = header " .. quote(v) .. ")") or ""
    c:err(field, "expected header \"NAME\"" .. (verified and " or claim \"NAME\"" or "") .. ", got "
      .. describe(v) .. hint)
    return nil
  end
  if type(v.name) ~= "string" or not v.name:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
    c:err(field, "header name must be a string of token characters, as in header \"X-User-Id\", got "
      .. describe(v.name))
    return nil
  end
  if verified and field ~= "tier" then
    c:err(field, "header " .. quote(v.name) .. " would let any caller name itself past the credential:"
      .. " with jwt or api_key, the " .. field .. " comes from a claim (" .. field .. " = claim \"...\")")
    return nil
  end
  local src = { header = v.name }
  if allow_options then
    header_options(c, v.opts, field, src, "header")
  elseif v.opts ~= nil then
    -- The tier: its value is matched against the tier names; only trusted = true applies.
    if is_plain_table(v.opts) and next(v.opts) == "trusted" and next(v.opts, "trusted") == nil then
      src.trusted = c:boolean(v.opts.trusted, field .. ".trusted", false) or nil
    else
      c:err(field, "takes only { trusted = true }: its value is matched against the declared tier names")
      src.trusted = is_plain_table(v.opts) and v.opts.trusted == true or nil
    end
  end
  if field == "tier" and not src.trusted then
    -- A caller that sets its own tier picks its own budget.
    c:err(field, "header " .. quote(v.name) .. " comes from the client, which could pick its own tier;"
      .. " when a layer in front sets it (and drops the client's), say so: header(" .. quote(v.name)
      .. ", { trusted = true })")
  end
  return src
end

-- A key file's path: relative to the policy directory, inside it.
local function key_path(c, v, field)
  local path = c:string(v, field, true)
  if not path then return nil end
  if path == "" or path:find("\0", 1, true) then
    c:err(field, "expected a file name, got " .. describe(path))
    return nil
  end
  if path:sub(1, 1) == "/" then
    c:err(field, quote(path) .. " is absolute; name a file inside the policy directory (a change to it"
      .. " reloads the policy)")
    return nil
  end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then
      c:err(field, quote(path) .. " leaves the policy directory; name a file inside it")
      return nil
    elseif part ~= "." then
      parts[#parts + 1] = part
    end
  end
  if #parts == 0 then
    c:err(field, "expected a file name, got " .. describe(path))
    return nil
  end
  return table.concat(parts, "/") -- one spelling: the watcher compares it with the files it sees
end

-- An upstream's TLS: u.tls for https://, and its files (paths in the policy directory, read and
-- checked by engine/policy/policy_tls.c): ca_file (the CAs to trust instead of the system's),
-- cert_file and key_file (a client certificate, together). The files are an https upstream's only.
upstream_tls = function(c, f, u, tls)
  u.tls = tls or nil
  for _, k in ipairs(UPSTREAM_TLS_FIELDS) do
    if f[k] ~= nil then
      if not tls then
        c:err(k, "only goes with an https:// url")
      else
        u[k] = key_path(c, f[k], k)
      end
    end
  end
  if tls and (f.cert_file ~= nil) ~= (f.key_file ~= nil) then
    c:err(f.cert_file ~= nil and "cert_file" or "key_file",
      "a client certificate needs both cert_file and key_file")
  end
end

-- jwt = { keys = "jwks.json" | { { jwks = ... } | { pem = ..., kid, alg } | { secret_file | secret_env = ..., kid }, ... },
--         issuer = "...", audience = "...", leeway = "30s", required = true }
local function jwt_decl(c, v)
  local jwt = c:record(v, "jwt", '{ keys = "jwks.json", issuer = "https://auth.example.com" }')
  if not jwt then return nil end
  c:only(jwt, JWT_FIELDS, "jwt")
  local out = { keys = {} }
  local keys = jwt.keys
  if keys == nil then
    c:missing("jwt.keys", 'e.g. keys = "jwks.json" (a JWK set file in the policy directory)')
  elseif type(keys) == "string" then
    local path = key_path(c, keys, "jwt.keys")
    if path then out.keys[1] = { jwks = path } end
  elseif is_plain_table(keys) and is_list(keys) and #keys > 0 then
    if #keys > M.MAX_JWT_KEYS then
      c:err("jwt.keys", "lists " .. #keys .. " keys; at most " .. M.MAX_JWT_KEYS)
    end
    for i, k in ipairs(keys) do
      local f = "jwt.keys[" .. i .. "]"
      if c:record(k, f, '{ pem = "key.pem", kid = "k1", alg = "RS256" }') then
        c:only(k, JWT_KEY_FIELDS, f)
        local given = {}
        for _, s in ipairs(JWT_KEY_SOURCES) do
          if k[s] ~= nil then given[#given + 1] = s end
        end
        if #given ~= 1 then
          c:err(f, "needs exactly one of jwks, pem, secret_file and secret_env, got "
            .. (#given == 0 and "none" or table.concat(given, " and ")))
        else
          local src = given[1]
          local key = {}
          if src == "secret_env" then
            local name = c:string(k.secret_env, f .. ".secret_env", true)
            if name and not name:match("^[%a_][%w_]*$") then
              c:err(f .. ".secret_env", "expected an environment variable's name, got " .. quote(name))
            end
            key.secret_env = name
          else
            key[src] = key_path(c, k[src], f .. "." .. src)
          end
          if k.kid ~= nil then
            if src == "jwks" then
              c:err(f .. ".kid", "a JWK set names its own keys' ids")
            else
              key.kid = c:string(k.kid, f .. ".kid")
              if key.kid == "" then c:err(f .. ".kid", "is empty") end
            end
          end
          if k.alg ~= nil then
            local alg = c:string(k.alg, f .. ".alg")
            if src == "jwks" then
              c:err(f .. ".alg", "a JWK set's keys say their own alg")
            elseif alg and not set_of(M.JWT_ALGS)[alg] then
              c:err(f .. ".alg", quote(alg) .. " is not an algorithm sluice verifies ("
                .. table.concat(M.JWT_ALGS, ", ") .. ")")
            elseif alg and (src == "secret_file" or src == "secret_env") ~= (alg == "HS256") then
              c:err(f .. ".alg", src == "pem" and "HS256 takes a secret (secret_file or secret_env), not a public key"
                or "a secret verifies HS256 only")
            end
            key.alg = alg
          end
          out.keys[#out.keys + 1] = key
        end
      end
    end
  else
    c:err("jwt.keys", 'expected a JWK set file ("jwks.json") or a list of keys'
      .. ' { { pem = "key.pem", alg = "RS256" }, { secret_env = "JWT_SECRET" } }, got ' .. describe(keys))
  end
  if jwt.issuer ~= nil then
    out.issuer = c:string(jwt.issuer, "jwt.issuer")
    if out.issuer == "" then c:err("jwt.issuer", "is empty") end
  end
  if jwt.audience ~= nil then
    out.audience = c:string(jwt.audience, "jwt.audience")
    if out.audience == "" then c:err("jwt.audience", "is empty") end
  end
  out.leeway_ms = M.DEFAULT_JWT_LEEWAY_MS
  if jwt.leeway ~= nil then
    out.leeway_ms = c:duration(jwt.leeway, "jwt.leeway", false, true) or M.DEFAULT_JWT_LEEWAY_MS
  end
  out.required = c:boolean(jwt.required, "jwt.required", false)
  return out
end

-- api_key = { header = "X-API-Key" | query = "api_key", sql = [[... WHERE key_hash = $1 ...]],
--             hash = "sha256", ttl = "1m", required = false }
local function api_key_decl(c, v)
  local k = c:record(v, "api_key", '{ header = "X-API-Key", sql = "SELECT ... WHERE key_hash = $1" }')
  if not k then return nil end
  c:only(k, API_KEY_FIELDS, "api_key")
  local out = {}
  if (k.header == nil) == (k.query == nil) then
    c:err("api_key", "needs one of header = \"X-API-Key\" and query = \"api_key\", where callers send the key")
  elseif k.header ~= nil then
    out.header = c:string(k.header, "api_key.header")
    if out.header and not out.header:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
      c:err("api_key.header", "expected a header name of token characters, got " .. quote(out.header))
    elseif out.header and out.header:lower() == "authorization" then
      c:err("api_key.header", "Authorization carries bearer tokens (jwt); name a header of its own")
    end
  else
    out.query = c:string(k.query, "api_key.query")
    if out.query and not out.query:match("^[%w_%-%.~]+$") then
      c:err("api_key.query", "expected a query parameter name (letters, digits, '-', '_', '.', '~'), got "
        .. quote(out.query))
    end
  end
  local q = c:string(k.sql, "api_key.sql", true)
  if q then
    local scan, err = sqltext.scan(q)
    if q:match("^%s*$") then
      c:err("api_key.sql", "is empty")
    elseif not scan then
      c:err("api_key.sql", err)
    elseif scan.statements > 1 then
      c:err("api_key.sql", "holds more than one statement")
    elseif scan.max ~= 1 or not scan.used[1] then
      c:err("api_key.sql", "takes exactly one parameter, $1: the key's hash (never the key itself)")
    end
  end
  out.sql = q
  if k.hash ~= nil then
    local h = c:string(k.hash, "api_key.hash")
    if h and h ~= "sha256" then
      c:err("api_key.hash", "expected \"sha256\" (the hex SHA-256 of the key), got " .. quote(h))
    end
  end
  out.hash = "sha256"
  out.ttl_ms = M.DEFAULT_API_KEY_TTL_MS
  if k.ttl ~= nil then
    out.ttl_ms = c:duration(k.ttl, "api_key.ttl", false, true) or M.DEFAULT_API_KEY_TTL_MS
  end
  out.required = c:boolean(k.required, "api_key.required", false)
  return out
end

local function identity_decl(c, decl, f)
  c:only(f, IDENTITY_FIELDS)
  local id = { file = decl.file, line = decl.line }
  if f.jwt ~= nil then
    id.jwt = jwt_decl(c, f.jwt)
  end
  if f.api_key ~= nil then
    id.api_key = api_key_decl(c, f.api_key)
  end
  local verified = f.jwt ~= nil or f.api_key ~= nil
  id.user = identity_source(c, f.user, "user", true, verified)
  id.tenant = identity_source(c, f.tenant, "tenant", true, verified)
  if f.user == nil and f.tenant == nil then
    c:err(nil, 'declares neither user nor tenant (e.g. user = header "X-User-Id")')
  end
  if id.user and id.tenant and id.user.header and id.tenant.header
    and id.user.header:lower() == id.tenant.header:lower() then
    c:err("tenant", "reads header " .. quote(id.tenant.header) .. " as user does; give each its own header")
  end
  local tier = f.tier
  if tier ~= nil then
    if is_marker(tier, "header") or is_marker(tier, "claim") then
      id.tier = identity_source(c, tier, "tier", false, verified)
    elseif is_marker(tier, "sql") then
      local allowed = {}
      for k in pairs(TIER_ARG_VARS) do
        allowed[k] = true
      end
      if f.user == nil then allowed.user = nil end
      if f.tenant == nil then allowed.tenant = nil end
      local topts = {
        allowed = allowed,
        refuse = function(kind)
          if kind == "user" or kind == "tenant" then
            return "needs " .. kind .. " = header \"...\" in this identity block"
          end
          return "is not available here (the tier lookup may use {user}, {tenant}, {ip} and {header.NAME})"
        end,
      }
      local q = c:string(tier.sql, "tier.sql", true)
      local args = check_sql(c, q, tier.args, "tier.sql", "tier.args", topts)
      id.tier = { sql = q, args = args }
    else
      c:err("tier", "expected sql(\"SELECT plan FROM users WHERE id = $1\", \"{user}\"), header \"X-Plan\""
        .. (verified and " or claim \"plan\"" or "") .. ", got " .. describe(tier))
    end
  end
  id.tier_ttl_ms = M.DEFAULT_TIER_TTL_MS
  if f.tier_ttl ~= nil then
    if not is_marker(tier, "sql") then
      c:err("tier_ttl", "only applies when the tier is looked up with sql(...)")
    end
    id.tier_ttl_ms = c:duration(f.tier_ttl, "tier_ttl", false, true) or M.DEFAULT_TIER_TTL_MS
  end
  id.default_tier = c:string(f.default_tier, "default_tier")
  return id
end

---------------------------------------------------------------------------
-- Endpoints

local ENDPOINT_FIELDS = {
  "sql", "args", "one", "upstream", "body", "status", "content_type", "cache", "limit", "invalidate",
  "cors", "request_headers", "response_headers",
}

-- An endpoint's own deadlines (endpoint_timeouts): timeout and connect_timeout override its
-- upstream's; sql_timeout overrides the server's --db-deadline for its statement.
local ENDPOINT_TIMEOUT_FIELDS = { "timeout", "connect_timeout", "sql_timeout" }
for _, k in ipairs(ENDPOINT_TIMEOUT_FIELDS) do ENDPOINT_FIELDS[#ENDPOINT_FIELDS + 1] = k end

local function endpoint_timeouts(c, f, e, source)
  for _, k in ipairs({ "timeout", "connect_timeout" }) do
    if f[k] ~= nil then
      if source ~= "upstream" then
        c:err(k, "bounds an upstream's answer; this endpoint has no upstream"
          .. (source == "sql" and ' (its statement\'s deadline is sql_timeout = "...")' or ""))
      else
        e[k .. "_ms"] = c:duration(f[k], k, false, false)
      end
    end
  end
  if f.sql_timeout ~= nil then
    if source ~= "sql" then
      c:err("sql_timeout", "bounds an SQL statement; this endpoint has no sql"
        .. (source == "upstream" and ' (an upstream\'s deadline is timeout = "...")' or ""))
    else
      e.sql_timeout_ms = c:duration(f.sql_timeout, "sql_timeout", false, false)
    end
  end
end
local CACHE_FIELDS = { "ttl", "key", "tags", "shared", "stale_while_revalidate", "stale_if_error", "warm",
  "override", "keep", "targeted", "anonymous", "max_size" }
M.DEFAULT_KEEP_MS = 3600000 -- how long past its freshness an entry with a validator is kept to revalidate
M.DEFAULT_TARGETED = { "CDN-Cache-Control" } -- RFC 9213 targeted fields the cache reads, in order
local WARM_FIELDS = { "user", "tenant" }
local MAX_WARM = 10000
local LIMIT_FIELDS = { "limit", "window", "algorithm", "burst", "cost", "fail", "key", "name", "mode",
  "anonymous" }

-- Whether a key's variables name a caller ({user}, {tenant}, {claim.NAME}): such a key is used
-- only for callers who have them (see docs/policies.md, "Keys that name a caller").
local function names_caller(vars)
  for _, v in ipairs(vars or {}) do
    if template.CALLER[v.var] then return true end
  end
  return false
end
M.names_caller = names_caller

-- anonymous = "share" | the default, for a key (its variables) at `field`. Returns "share", or
-- nil for the default (normalized sets leave it out).
local function check_anonymous(c, v, field, default, vars)
  if v == nil then return nil end
  local a = c:string(v, field)
  if a ~= "share" and a ~= default then
    if a then
      c:err(field, "expected \"" .. default .. "\" (the default) or \"share\", got " .. quote(a))
    end
    return nil
  end
  if a == "share" and vars and not names_caller(vars) then
    c:err(field, "\"share\" does nothing here: the key names no caller ({user}, {tenant}, {claim.NAME})")
  end
  return a == "share" and a or nil
end

local function var_text_set(vars)
  local s = {}
  for _, v in ipairs(vars) do
    s[v.text] = true
  end
  return s
end

-- The request values that carry a credential: a template may not copy them into a key, a tag
-- or an SQL argument, where they would be stored, logged or sent in clear.
function M.secret_fields(id)
  local out = { header = {}, query = {} }
  if id.jwt then out.header.authorization = "the bearer token" end
  if id.api_key and id.api_key.header then out.header[id.api_key.header:lower()] = "the API key" end
  if id.api_key and id.api_key.query then out.query[id.api_key.query] = "the API key" end
  return out
end

-- Why a request template may not use a variable kind, or nil.
local function refuse_request_var(kind)
  if kind == "row" then
    return "is only available in on_change"
  elseif kind == "user" then
    return "needs an identity block that declares a user (identity { user = header \"X-User-Id\" })"
  elseif kind == "tenant" then
    return "needs an identity block that declares a tenant (identity { tenant = header \"X-Tenant-Id\" })"
  elseif kind == "claim" then
    return "needs an identity block with a credential (identity { jwt = { keys = \"jwks.json\" }, ... })"
  end
  return nil
end

-- The template options for request templates of an endpoint. What they allow and keep out
-- depends on env only: it is made once per env (env.request_allowed, env.request_secrets).
local function request_opts(env, route)
  local allowed = env.request_allowed
  if not allowed then
    allowed = {}
    for k in pairs(template.REQUEST) do
      allowed[k] = true
    end
    if env.known then
      if not (env.identity and env.identity.user) then allowed.user = nil end
      if not (env.identity and env.identity.tenant) then allowed.tenant = nil end
      if not (env.identity and (env.identity.jwt or env.identity.api_key)) then allowed.claim = nil end
    end
    env.request_allowed = allowed
    env.request_secrets = env.identity and M.secret_fields(env.identity) or false
  end
  return {
    allowed = allowed,
    params = route.param_set,
    method = route.method,
    refuse = refuse_request_var,
    secrets = env.request_secrets or nil,
  }
end

-- The per-caller part of default keys: {tenant} and/or {user} when the
-- identity block declares them, {ip} when there is none.
local function caller_parts(env)
  local id = env.identity
  local parts = {}
  if id and id.tenant then parts[#parts + 1] = "{tenant}" end
  if id and id.user then parts[#parts + 1] = "{user}" end
  if #parts == 0 and not id then parts[1] = "{ip}" end
  return parts
end

local function default_cache_key(route, arg_vars, shared, env, source)
  local parts = { "{method}", "{route}" }
  local seen = { ["{method}"] = true, ["{route}"] = true }
  if source == "upstream" then
    -- An upstream's answer may depend on anything in the URL: the whole path and the whole
    -- query (canonical: the upstream receives exactly the query the key holds).
    parts[#parts + 1] = "{path}"
    parts[#parts + 1] = "{query}"
    seen["{path}"] = true
  end
  local function add(text)
    if not seen[text] then
      seen[text] = true
      parts[#parts + 1] = text
    end
  end
  for _, p in ipairs(route.params) do
    add("{path." .. p .. "}")
  end
  for _, v in ipairs(arg_vars) do
    add(v.text)
  end
  if not shared then
    local id = env.identity
    if id and id.tenant then add("{tenant}") end
    if id and id.user then add("{user}") end
  end
  return table.concat(parts, ":")
end

local function check_limit_table(c, t, prefix, index, topts, env)
  c:only(t, LIMIT_FIELDS, prefix ~= "" and prefix or nil)
  local p = prefix ~= "" and (prefix .. ".") or ""
  local l = {}
  l.limit = c:positive_int(t.limit, p .. "limit", true, "requests per window, e.g. limit = 10")
  l.window_ms = c:duration(t.window, p .. "window", true, false, 'e.g. window = "1m"')
  l.algorithm, l.burst = check_algorithm(c, t, p)
  l.cost = 1
  if t.cost ~= nil then
    l.cost = c:positive_int(t.cost, p .. "cost") or 1
  end
  l.fail = "open"
  if t.fail ~= nil then
    local f = c:string(t.fail, p .. "fail")
    if f == "open" or f == "closed" then
      l.fail = f
    elseif f then
      c:err(p .. "fail", "expected \"open\" or \"closed\", got " .. quote(f))
    end
  end
  l.mode = check_mode(c, t.mode, p .. "mode", M.DEFAULT_MODE)
  local key_vars
  if t.key ~= nil then
    l.key, key_vars = c:template(t.key, p .. "key", topts)
  else
    l.key = "{route}:" .. table.concat(caller_parts(env), ":")
    key_vars = template.parse(l.key)
  end
  l.anonymous = check_anonymous(c, t.anonymous, p .. "anonymous", "ip", key_vars)
  if t.name ~= nil then
    local n = c:string(t.name, p .. "name")
    if n and not n:match(NAME_PATTERN) then
      c:err(p .. "name", quote(n) .. " may use only letters, digits, '_' and '-'")
    end
    l.name = n
  end
  if not l.name and l.key then
    local prefix_text = l.key:match("^([^:{]*)")
    if prefix_text ~= "" and prefix_text:match(NAME_PATTERN) then
      l.name = prefix_text
    end
  end
  l.name = l.name or ("limit" .. index)
  return l
end

-- limit = "tier" | { limit = 10, window = "1m", ... } | { "tier", {...}, ... }
local function check_limits(c, v, topts, env)
  local out = {}
  if v == nil then return out end
  local example = '"tier", { limit = 10, window = "1m" } or a list of these'
  local function one(item, prefix, index)
    if item == "tier" then
      return { tier = true }
    elseif type(item) == "string" then
      c:err(prefix, "expected \"tier\" (the caller's tier) or a table { limit = 10, window = \"1m\" }, got "
        .. quote(item))
    elseif is_plain_table(item) and not has_list_part(item) then
      return check_limit_table(c, item, prefix, index, topts, env)
    else
      c:err(prefix, "expected " .. example .. ", got " .. describe(item))
    end
    return nil
  end
  if is_plain_table(v) and has_list_part(v) then
    if not is_list(v) then
      c:err("limit", "mixes a list with fields; write a list of \"tier\" and tables, or one table")
      return out
    end
    check_count(c, v, "limit", M.MAX_LIMITS, "limits", "an endpoint")
    local tier_seen = false
    for i, item in ipairs(v) do
      local l = one(item, "limit[" .. i .. "]", i)
      if l and l.tier then
        if tier_seen then c:err("limit[" .. i .. "]", "\"tier\" is listed twice") end
        tier_seen = true
      end
      out[#out + 1] = l
    end
  elseif is_plain_table(v) and next(v) == nil then
    c:err("limit", "is an empty table; leave limit out for no limit")
  else
    out[#out + 1] = one(v, "limit", 1)
  end
  local names = {}
  for i, l in ipairs(out) do
    if not l.tier and l.name then
      if names[l.name] then
        c:err("limit[" .. i .. "]", "name " .. quote(l.name) .. " is used by limit[" .. names[l.name]
          .. "] too; give each limit its own name (name = \"...\")")
      end
      names[l.name] = names[l.name] or i
    end
  end
  return out
end

-- warm = { { user = "1" }, { user = "2", tenant = "acme" } } | sql("SELECT id FROM users ...")
local function check_warm(c, v, route, env)
  local field = "cache.warm"
  if #route.params > 0 then
    c:err(field, "needs an endpoint without {path} parameters (the warm callers give no path values)")
    return nil
  end
  local id = env.identity or {}
  if is_marker(v, "sql") then
    local q = c:string(v.sql, field .. ".sql", true)
    if q then
      local scan, err = sqltext.scan(q)
      if not scan then
        c:err(field, err)
      elseif scan.max > 0 then
        c:err(field, "the warm query takes no parameters ($" .. scan.max .. ")")
      elseif scan.statements > 1 then
        c:err(field, "holds more than one statement")
      end
      if scan and scan.max == 0 and v.args and #v.args > 0 then
        c:err(field, "the warm query takes no arguments")
      end
      if env.known and not id.user then
        c:err(field, "a warm query yields users; declare identity { user = header \"...\" }")
      end
    end
    return { sql = q }
  end
  if not is_plain_table(v) or not is_list(v) then
    c:err(field, 'expected a list of callers { { user = "1" }, ... } or sql("SELECT id FROM users ..."), got '
      .. describe(v))
    return nil
  end
  if #v > MAX_WARM then
    c:err(field, "lists " .. #v .. " callers; at most " .. MAX_WARM .. " (use sql(...) for more)")
    return nil
  end
  local callers = {}
  for i, item in ipairs(v) do
    local f = field .. "[" .. i .. "]"
    if c:record(item, f, '{ user = "1" }') then
      c:only(item, WARM_FIELDS, f)
      local caller = {}
      for _, k in ipairs(WARM_FIELDS) do
        local x = item[k]
        if math.type(x) == "integer" then x = tostring(x) end
        if x ~= nil then
          caller[k] = c:string(x, f .. "." .. k)
          if env.known and not id[k] then
            c:err(f .. "." .. k, "needs an identity block that declares a " .. k)
          end
        end
      end
      callers[#callers + 1] = caller
    end
  end
  return { callers = callers }
end

---------------------------------------------------------------------------
-- compress: coded forms of an endpoint's cached answers, made when they are stored

ENDPOINT_FIELDS[#ENDPOINT_FIELDS + 1] = "compress"
local COMPRESS_FIELDS = { "types", "min_size", "codings" }
M.COMPRESS_CODINGS = { "br", "zstd", "gzip" } -- every coding, in the server's order of preference
M.DEFAULT_COMPRESS_MIN = 1024
local CODING_SET = set_of(M.COMPRESS_CODINGS)

-- Checks a compress value (true, false, or { types, min_size, codings }); returns the
-- normalized { codings = {...}, min_size = N, types = {...} | nil }, false when off, nil when
-- absent or wrong.
local function compress_value(c, v, field)
  if v == nil then return nil end
  if v == false then return false end
  local out = { codings = M.COMPRESS_CODINGS, min_size = M.DEFAULT_COMPRESS_MIN }
  if v == true then return out end
  local t = c:record(v, field, '{ types = { "application/json" }, min_size = "1k", codings = { "br", "gzip" } }'
    .. " (or true)")
  if not t then return nil end
  c:only(t, COMPRESS_FIELDS, field)
  if t.min_size ~= nil then
    out.min_size = c:size(t.min_size, field .. ".min_size")
  end
  if t.codings ~= nil then
    if not is_plain_table(t.codings) or #t.codings == 0 then
      c:err(field .. ".codings", 'expected a list such as { "br", "zstd", "gzip" }, got ' .. describe(t.codings))
    else
      out.codings = {}
      for _, name in ipairs(t.codings) do
        if not CODING_SET[name] then
          c:err(field .. ".codings", "unknown coding " .. describe(name) .. " (br, zstd or gzip)")
        else
          out.codings[#out.codings + 1] = name
        end
      end
    end
  end
  if t.types ~= nil then
    if not is_plain_table(t.types) or #t.types == 0 then
      c:err(field .. ".types", 'expected a list of media types such as { "application/json", "text/*" }, got '
        .. describe(t.types))
    else
      out.types = {}
      for _, ty in ipairs(t.types) do
        if type(ty) ~= "string" or not (ty:match("^[%w!#$&^_.+-]+/[%w!#$&^_.+-]+$")
            or ty:match("^[%w!#$&^_.+-]+/%*$") or ty:match("^[%w!#$&^_.+-]+/%*%+[%w!#$&^_.-]+$")) then
          c:err(field .. ".types", "expected a media type such as \"application/json\", \"text/*\" or"
            .. " \"application/*+json\", got " .. describe(ty))
        else
          out.types[#out.types + 1] = ty:lower()
        end
      end
    end
  end
  return out
end

-- The endpoint's compress: its own, else the set's default (cached endpoints only).
local function endpoint_compress(c, e, f, default)
  local own = compress_value(c, f.compress, "compress")
  if own and not e.cache then
    c:err("compress", "applies to cached answers, and this endpoint has no cache = { ... }")
    return nil
  end
  if own == nil and e.cache then
    own = default
  end
  return own or nil
end

-- The set's default, from compress(...) declarations: { value } or nil.
local function set_compress(decls, report)
  local first
  for _, d in ipairs(decls) do
    local c = checker(report, d, "compress")
    if first then
      c:err(nil, "is already declared at " .. d.file .. ":" .. first.line
        .. "; a policy set has one compress default")
    else
      first = d
      d.value = compress_value(c, d.fields.value, "compress")
    end
  end
  return first and first.value or nil
end

local function endpoint_decl(c, decl, f, env)
  local route, err = M.parse_route(decl.name)
  if not route then
    c:err(nil, err)
    return nil
  end
  local misplaced = {}
  for _, k in ipairs({ "stale_while_revalidate", "stale_if_error", "warm", "ttl", "tags" }) do
    if f[k] ~= nil then
      c:err(k, "goes inside cache = { ... } (cache = { ttl = \"5m\", " .. k .. " = ... })")
      misplaced[k] = true
    end
  end
  local rest = {}
  for k, v in pairs(f) do
    if not misplaced[k] then rest[k] = v end
  end
  c:only(rest, ENDPOINT_FIELDS)
  local e = {
    name = route.method .. " " .. route.target,
    method = route.method,
    path = route.path,
    pins = route.pins,
    file = decl.file,
    line = decl.line,
  }
  c.what = "endpoint " .. quote(e.name)
  local topts = request_opts(env, route)

  -- The source: exactly one of sql, upstream and body.
  local sources = {}
  for _, k in ipairs({ "sql", "upstream", "body" }) do
    if f[k] ~= nil then sources[#sources + 1] = k end
  end
  if #sources == 0 then
    c:err(nil, "needs a source: sql = \"SELECT ...\", upstream = \"NAME\" or body = \"...\" (a fixed answer)")
  elseif #sources > 1 then
    c:err(nil, "has more than one source (" .. table.concat(sources, " and ") .. "); keep one")
  end
  local source = #sources == 1 and sources[1] or nil
  if route.method == "*" and source and source ~= "upstream" then
    c:err(nil, "\"*\" (any method) only goes with upstream = \"NAME\": it forwards every method as it came")
  end
  local arg_vars = {}
  if source ~= "sql" then
    if f.args ~= nil then c:err("args", "only goes with sql = \"...\"") end
    if f.one ~= nil then c:err("one", "only goes with sql = \"...\"") end
  end
  if source ~= "body" then
    if f.status ~= nil then c:err("status", "only goes with a fixed body = \"...\"") end
    if f.content_type ~= nil then c:err("content_type", "only goes with a fixed body = \"...\"") end
  end
  if source == "sql" then
    e.source = "sql"
    e.sql = c:string(f.sql, "sql")
    e.args, arg_vars = check_sql(c, e.sql, f.args, "sql", "args", topts)
    e.one = c:boolean(f.one, "one", false)
  elseif source == "upstream" then
    e.source = "upstream"
    e.upstream = c:string(f.upstream, "upstream")
  elseif source == "body" then
    e.source = "static"
    e.body = c:string(f.body, "body")
    e.status = 200
    if f.status ~= nil then
      local s = math.type(f.status) and math.tointeger(f.status)
      if not s or s < 100 or s > 599 then
        c:err("status", "expected an HTTP status from 100 to 599, got " .. describe(f.status))
      else
        e.status = s
      end
    end
    e.content_type = "application/json"
    if f.content_type ~= nil then
      local ct = c:string(f.content_type, "content_type")
      if ct and not ct:match("^[%w!#$&^_.+%-]+/[%w!#$&^_.+%-]+") then
        c:err("content_type", "expected a media type such as \"text/plain\", got " .. quote(ct))
      elseif ct then
        e.content_type = ct
      end
    end
  end
  endpoint_timeouts(c, f, e, source)

  -- Cache.
  if f.cache ~= nil then
    local cache = c:record(f.cache, "cache", '{ ttl = "5m", key = "...", tags = { ... } }')
    if cache then
      if not CACHEABLE[route.method] and route.method ~= "*" then
        c:err("cache", "only GET and HEAD endpoints can be cached (a " .. route.method .. " answer is never reused)")
      end
      c:only(cache, CACHE_FIELDS, "cache")
      local out = {}
      if cache.ttl == "origin" then
        if source ~= "upstream" then
          c:err("cache.ttl", '"origin" takes freshness from an upstream\'s answer; this endpoint has no upstream'
            .. ' (give a duration, e.g. ttl = "5m")')
        end
        out.ttl_origin = true
        out.ttl_ms = 0
      else
        out.ttl_ms = c:duration(cache.ttl, "cache.ttl", true, false,
          source == "upstream" and 'e.g. ttl = "5m", or ttl = "origin"' or 'e.g. ttl = "5m"')
      end
      if source == "upstream" then
        out.override = c:boolean(cache.override, "cache.override", false)
        if out.override and out.ttl_origin then
          c:err("cache.override", 'needs a duration to impose: ttl = "origin" takes the answer\'s own freshness')
        end
        out.keep_ms = M.DEFAULT_KEEP_MS
        if cache.keep ~= nil then
          out.keep_ms = c:duration(cache.keep, "cache.keep", false, true) or M.DEFAULT_KEEP_MS
        end
        out.targeted = M.DEFAULT_TARGETED
        if cache.targeted ~= nil then
          if not is_plain_table(cache.targeted) or not is_list(cache.targeted) then
            c:err("cache.targeted", 'expected a list of field names, as in { "CDN-Cache-Control" }, got '
              .. describe(cache.targeted))
          else
            local names = {}
            for i, n in ipairs(cache.targeted) do
              if type(n) ~= "string" or not n:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
                c:err("cache.targeted[" .. i .. "]", "expected a header field name, got " .. describe(n))
              else
                names[#names + 1] = n
              end
            end
            out.targeted = names
          end
        end
      end
      if (cache.override ~= nil or cache.keep ~= nil or cache.targeted ~= nil) and source ~= "upstream" then
        c:err("cache", "override, keep and targeted read an upstream's answer; this endpoint has no upstream")
      end
      if cache.max_size ~= nil then
        if source ~= "upstream" then
          c:err("cache.max_size", "bounds an upstream's answers (larger ones are streamed, not stored);"
            .. " this endpoint has no upstream")
        else
          out.max_size = c:size(cache.max_size, "cache.max_size")
        end
      end
      out.shared = c:boolean(cache.shared, "cache.shared", false)
      local key_vars
      if cache.key ~= nil then
        out.key, key_vars = c:template(cache.key, "cache.key", topts)
      else
        out.key = default_cache_key(route, arg_vars, out.shared, env, source)
        key_vars = template.parse(out.key)
      end
      out.anonymous = check_anonymous(c, cache.anonymous, "cache.anonymous", "bypass", key_vars)
      out.tags = c:template_list(cache.tags, "cache.tags", topts, '{ "crm:{user}" }')
      check_count(c, cache.tags, "cache.tags", M.MAX_TAGS, "tags", "an endpoint")
      if source == "upstream" then
        -- The query parameters an upstream sees on a cacheable request: the pinned ones and
        -- those the key names; any other could change the answer without changing the key.
        local q, seen = {}, {}
        for _, pin in ipairs(route.pins) do
          if not seen[pin.name] then seen[pin.name] = true; q[#q + 1] = pin.name end
        end
        for _, v in ipairs(key_vars or {}) do
          if v.var == "query" and v.name and not seen[v.name] then seen[v.name] = true; q[#q + 1] = v.name end
          if v.var == "query" and not v.name then out.query_all = true end
        end
        out.query = q
      end
      out.swr_ms = c:duration(cache.stale_while_revalidate, "cache.stale_while_revalidate", false, true)
      out.sie_ms = c:duration(cache.stale_if_error, "cache.stale_if_error", false, true)
      if cache.warm ~= nil then
        out.warm = check_warm(c, cache.warm, route, env)
      end
      if out.key and key_vars then
        local in_key = var_text_set(key_vars)
        if env.known and env.identity and not out.shared and not names_caller(key_vars) then
          c:err(nil, "cache key " .. quote(out.key)
            .. " is shared between callers; add {user} or {tenant}, or say shared = true")
        end
        if source == "upstream" and not in_key["{path}"] then
          -- The upstream receives the whole path: a key must tell apart every path it serves.
          if route.shape:find("*", 1, true) then
            c:err("cache.key", "cache key " .. quote(out.key) .. " leaves out the path that '*' matches;"
              .. " different paths would share one cached answer: add {path}")
          end
          for _, p in ipairs(route.params) do
            if not in_key["{path." .. p .. "}"] then
              c:err("cache.key", "cache key " .. quote(out.key) .. " leaves out {path." .. p .. "};"
                .. " requests for different " .. p .. " values would share one cached answer: add {path."
                .. p .. "} (or {path})")
            end
          end
        end
        local reported = {}
        for _, v in ipairs(arg_vars) do
          if not in_key[v.text] and not reported[v.text] and v.var ~= "method" and v.var ~= "route" then
            reported[v.text] = true
            c:err(nil, "cache key " .. quote(out.key) .. " leaves out " .. v.text
              .. ", which args use; requests that differ only in it would share one cached answer")
          end
        end
      end
      e.cache = out
    end
  end

  -- CORS and header rules (sluice.headers); the set's cors and the upstream's rules are
  -- joined in by M.build.
  e.cors = headers.check_cors(c, f.cors, "cors")
  if f.request_headers ~= nil and source ~= "upstream" then
    c:err("request_headers", "only goes with upstream = \"NAME\": no other source sends a request")
  else
    e.request_headers = headers.check_rules(c, f.request_headers, "request_headers", topts, env.identity)
  end
  e.response_headers = headers.check_rules(c, f.response_headers, "response_headers", topts, env.identity)

  e.limits = check_limits(c, f.limit, topts, env)
  e.invalidate = c:template_list(f.invalidate, "invalidate", topts, '{ "crm:{user}", "dash:{user}" }')
  check_count(c, f.invalidate, "invalidate", M.MAX_TAGS, "tags", "an endpoint")
  return e, route
end

---------------------------------------------------------------------------
-- on_change

local ON_CHANGE_FIELDS = { "invalidate", "credentials" }

local function on_change_decl(c, decl, f, identity, complete)
  c:only(f, ON_CHANGE_FIELDS)
  local out = { table = decl.name, file = decl.file, line = decl.line }
  out.credentials = c:boolean(f.credentials, "credentials", false) or nil
  if out.credentials and complete and not (identity and identity.api_key) then
    c:err("credentials", "forgets the API keys the workers looked up, but the identity declares no api_key")
  end
  local topts = {
    allowed = { row = true },
    refuse = function()
      return "is not available in on_change, which runs for a changed row, not a request (use {row.COLUMN})"
    end,
  }
  if f.invalidate == nil and not out.credentials then
    c:missing("invalidate", 'e.g. invalidate = { "crm:{row.owner_id}" } (or credentials = true)')
  end
  local vars
  out.invalidate, vars = c:template_list(f.invalidate, "invalidate", topts, '{ "crm:{row.owner_id}" }')
  local cols, seen = {}, {}
  for _, v in ipairs(vars) do
    if v.var == "row" and v.name and not seen[v.name] then
      seen[v.name] = true
      cols[#cols + 1] = v.name
    end
  end
  table.sort(cols)
  out.columns = cols
  if f.invalidate ~= nil and is_plain_table(f.invalidate) and #f.invalidate == 0 then
    c:err("invalidate", "is empty")
  end
  return out
end

---------------------------------------------------------------------------
-- CORS and header rules set-wide (sluice.headers)

-- Checks the set's cors { ... } and the upstreams' header rules (which need the identity);
-- returns the set's cors (normalized), or nil.
function M.build_fields(report, by_kind, set, env)
  local cors
  for i, d in ipairs(by_kind.cors) do
    local c = checker(report, d, "cors")
    if i > 1 then
      c:err(nil, "is already declared at " .. d.file .. ":" .. by_kind.cors[1].line
        .. "; a policy set has one cors block (an endpoint may have its own cors = { ... })")
    else
      cors = headers.check_cors(c, d.fields, nil)
      set.cors = cors
    end
  end
  local topts = request_opts(env, { param_set = {}, method = "GET" })
  for i, d in ipairs(by_kind.upstream) do
    local c = checker(report, d, "upstream " .. quote(d.name))
    local u = set.upstreams[i]
    u.request_headers = headers.check_rules(c, d.fields.request_headers, "request_headers", topts, set.identity)
    u.response_headers = headers.check_rules(c, d.fields.response_headers, "response_headers", topts, set.identity)
  end
  return cors
end

-- The endpoint's cors (its own, the set's, or none with cors = false) and its header rules
-- after its upstream's.
function M.resolve_fields(e, cors_default, upstreams)
  if e.cors == false then
    e.cors = nil
  elseif e.cors == nil then
    e.cors = cors_default
  end
  for _, u in ipairs(upstreams) do
    if e.upstream and u.name == e.upstream then
      e.request_headers = headers.merge(u.request_headers, e.request_headers)
      e.response_headers = headers.merge(u.response_headers, e.response_headers)
    end
  end
end

---------------------------------------------------------------------------
-- The whole set

local WHAT = {
  tier = function(d) return "tier " .. quote(d.name) end,
  upstream = function(d) return "upstream " .. quote(d.name) end,
  endpoint = function(d) return "endpoint " .. quote(d.name) end,
  on_change = function(d) return "on_change " .. quote(d.name) end,
  identity = function() return "identity" end,
  cors = function() return "cors" end,
  compress = function() return "compress" end,
  hook = function(d) return "hook " .. quote(d.name) end,
}
M.WHAT = WHAT

local function where(d)
  return d.file .. ":" .. d.line
end

-- Builds the normalized set from `decls` (in file order, then declaration
-- order) into `report`. `complete` is false when some file did not run to
-- its end: then the checks that need the whole set (names that refer to
-- other declarations, the identity block) are left out, since the
-- declaration they look for may be in the file that failed.
function M.build(files, decls, report, complete)
  local set = { files = {}, tiers = {}, identity = nil, upstreams = {}, endpoints = {}, on_change = {},
    notes = {} }
  for i, f in ipairs(files) do
    if type(f) == "table" then
      set.files[i] = { path = f.path, tenant = f.tenant }
    end
  end
  local by_kind = { tier = {}, upstream = {}, identity = {}, endpoint = {}, on_change = {}, cors = {} }
  by_kind.compress = {}
  for _, d in ipairs(decls) do
    if d.fields then
      local list = by_kind[d.kind]
      list[#list + 1] = d
    end
  end

  local tiers = {}
  for _, d in ipairs(by_kind.tier) do
    local c = checker(report, d, WHAT.tier(d))
    if check_name(c, d.name, "tier") then
      if tiers[d.name] then
        c:err(nil, "is already declared at " .. where(tiers[d.name]))
      else
        tiers[d.name] = d
      end
    end
    set.tiers[#set.tiers + 1] = tier_decl(c, d, d.fields)
  end

  local upstreams = {}
  for _, d in ipairs(by_kind.upstream) do
    local c = checker(report, d, WHAT.upstream(d))
    if check_name(c, d.name, "upstream") then
      if upstreams[d.name] then
        c:err(nil, "is already declared at " .. where(upstreams[d.name]))
      else
        upstreams[d.name] = d
      end
    end
    set.upstreams[#set.upstreams + 1] = upstream_decl(c, d, d.fields)
  end

  for i, d in ipairs(by_kind.identity) do
    local c = checker(report, d, "identity")
    if i > 1 then
      c:err(nil, "is already declared at " .. where(by_kind.identity[1]) .. "; a policy set has one identity block")
    else
      set.identity = identity_decl(c, d, d.fields)
      local dt = set.identity.default_tier
      if dt and complete and not tiers[dt] then
        c:err("default_tier", quote(dt) .. " is not a declared tier" .. suggest.hint(dt, (function()
          local names = {}
          for _, t in ipairs(set.tiers) do
            names[#names + 1] = t.name
          end
          return names
        end)(), '"', '"'))
      end
      if not dt and set.tiers[1] then
        set.identity.default_tier = set.tiers[1].name
      end
    end
  end

  local env = { known = complete, identity = set.identity }
  local cors_default = M.build_fields(report, by_kind, set, env)
  local compress_default = set_compress(by_kind.compress, report)
  local routes = route_index()
  local nroutes = 0
  local limit_keys = {}
  for _, d in ipairs(by_kind.endpoint) do
    local c = checker(report, d, WHAT.endpoint(d))
    local e, route = endpoint_decl(c, d, d.fields, env)
    if e then
      e.compress = endpoint_compress(c, e, d.fields, compress_default)
      nroutes = nroutes + 1
      local other = index_route(routes, { route = route, decl = d, name = e.name, order = nroutes })
      if other and same_pins(other.route.pins, route.pins) then
        c:err(nil, "is already declared at " .. where(other.decl))
      elseif other then
        c:err(nil, "is ambiguous with " .. quote(other.name) .. " (" .. where(other.decl)
          .. "): one request can match both; pin the same query parameters on both")
      end
      if complete then
        if e.upstream and not upstreams[e.upstream] then
          local names = {}
          for _, u in ipairs(set.upstreams) do
            names[#names + 1] = u.name
          end
          c:err("upstream", quote(e.upstream) .. " is not a declared upstream" .. suggest.hint(e.upstream, names, '"', '"')
            .. (#names == 0 and ' (declare it: upstream "' .. e.upstream .. '" { url = "http://127.0.0.1:3000" })' or ""))
        end
        for i, l in ipairs(e.limits) do
          local field = #e.limits > 1 and ("limit[" .. i .. "]") or "limit"
          if l.tier and #set.tiers == 0 then
            c:err(field, "\"tier\" needs at least one tier declared (tier \"free\" { limit = 100, window = \"1h\" })")
          elseif not l.tier and l.name and tiers[l.name] then
            c:err(field, "name " .. quote(l.name)
              .. " is also a tier's name; RateLimit headers could not tell them apart")
          end
          if not l.tier and l.key and l.limit and l.window_ms then
            local prev = limit_keys[l.key]
            if prev and (prev.l.limit ~= l.limit or prev.l.window_ms ~= l.window_ms
                or prev.l.algorithm ~= l.algorithm or prev.l.burst ~= l.burst) then
              c:err(field, "key " .. quote(l.key) .. " is also used by " .. quote(prev.name) .. " ("
                .. where(prev.decl) .. ") with another limit, window or algorithm; one counter cannot follow two rules")
            elseif not prev then
              limit_keys[l.key] = { l = l, name = e.name, decl = d }
            end
          end
        end
      end
      M.resolve_fields(e, cors_default, set.upstreams)
      set.endpoints[#set.endpoints + 1] = e
      -- What sluice check says of keys that callers who lack what they name share.
      local where_e = e.file .. ":" .. e.line .. ": note: endpoint " .. quote(e.name) .. ": "
      if e.cache and e.cache.anonymous == "share" then
        set.notes[#set.notes + 1] = where_e .. "callers who lack what cache key " .. quote(e.cache.key)
          .. " names share one entry (cache.anonymous = \"share\")"
      end
      for _, l in ipairs(e.limits) do
        if l.anonymous == "share" then
          set.notes[#set.notes + 1] = where_e .. "callers who lack what limit key " .. quote(l.key)
            .. " names share one counter (anonymous = \"share\")"
        end
      end
    end
  end

  local tables = {}
  for _, d in ipairs(by_kind.on_change) do
    local c = checker(report, d, WHAT.on_change(d))
    if not d.name:match("^[%a_][%w_]*$") and not d.name:match("^[%a_][%w_]*%.[%a_][%w_]*$") then
      c:err(nil, "table name " .. quote(d.name) .. " is not an identifier (letters, digits and '_', optionally schema.table)")
    elseif tables[d.name] then
      c:err(nil, "is already declared at " .. where(tables[d.name]) .. "; list every tag in one invalidate")
    else
      tables[d.name] = d
    end
    set.on_change[#set.on_change + 1] = on_change_decl(c, d, d.fields, set.identity, complete)
  end
  return set
end

---------------------------------------------------------------------------
-- What sluice.tenant checks tenant files with

M.quote = quote
M.is_plain_table = is_plain_table
M.sorted_keys = sorted_keys
M.set_of = set_of
M.checker = checker
M.check_algorithm = check_algorithm
M.check_mode = check_mode
M.check_limits = check_limits
M.request_opts = request_opts
M.NAME_PATTERN = NAME_PATTERN
M.TIER_FIELDS = TIER_FIELDS
M.ENDPOINT_FIELDS = ENDPOINT_FIELDS
M.CACHE_FIELDS = CACHE_FIELDS

return M
