-- sluice.headers: checks CORS (cors = { ... }, per endpoint or set-wide with cors { ... }) and
-- the header rules request_headers / response_headers of upstreams and endpoints.
--
--   cors = { origins = { "https://app.example.com" } | "*", methods = { "GET", "POST" },
--            headers = { "Content-Type" } | "*", expose = { "X-Cache" },
--            credentials = false, max_age = "10m" }
--   request_headers  = { ["X-Source"] = "sluice", ["X-Debug"] = false }   -- false removes
--   response_headers = { ["Cache-Control"] = "public, max-age=60", ["Server"] = false }
--
-- Normalized forms (read by engine/policy/policy_headers.c):
--   cors  = { origins = { ... } | nil, any_origin = true | nil, methods = { ... } | nil,
--             headers = { ... } | nil, headers_any = true | nil, expose = { ... } | nil,
--             credentials = bool, max_age_s = n | nil }
--   rules = { { name = "X-Source", value = "sluice" }, { name = "X-Debug", remove = true }, ... }
--           sorted by lowercased name.
local duration = require "sluice.duration"

local M = {}

M.CORS_FIELDS = { "origins", "methods", "headers", "expose", "credentials", "max_age" }
M.MAX_RULES = 32 -- header rules of one upstream or endpoint
M.MAX_CORS_LIST = 64 -- entries of one cors list
M.MAX_VALUE = 1024 -- bytes of one rule's value as written

local FIELD_NAME = "^[!#$%%&'*+%-.^_`|~%w]+$" -- RFC 9110 section 5.1: a token
local METHOD = "^[!#$%%&'*+%-.^_`|~%w]+$" -- RFC 9110 section 9.1: a token, case-sensitive

local function quote(s)
  return string.format("%q", s)
end

local function describe(v)
  if type(v) == "string" then return quote(v) end
  if type(v) == "table" then return "a table" end
  return tostring(v)
end

local function is_plain(v)
  return type(v) == "table" and getmetatable(v) == nil
end

-- Returns true when t's keys are exactly 1..#t (validate.lua uses it too).
function M.is_list(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n == #t
end
local is_list = M.is_list

-- Fields no rule may set or remove, and why (lowercased names).
local HOP = "is hop-by-hop or framing (RFC 9110 section 7.6.1) and belongs to each connection"
local FIXED = {
  connection = HOP, ["keep-alive"] = HOP, te = HOP, trailer = HOP, ["transfer-encoding"] = HOP,
  upgrade = HOP, ["content-length"] = HOP, host = HOP,
  authorization = "carries the caller's credential",
  cookie = "carries the caller's credential",
  ["x-api-key"] = "carries the caller's credential",
}
-- Request rules: the fields sluice sets itself on a forwarded request.
local REQUEST_FIXED = {
  ["x-request-id"] = "is set by sluice itself", via = "is set by sluice itself",
  forwarded = "is set by sluice itself",
}
-- Response rules: the fields sluice writes itself on an answer.
local OWN = "is written by sluice itself"
local RESPONSE_FIXED = {
  ["content-type"] = OWN, date = OWN, ["x-cache"] = OWN, age = OWN, etag = OWN,
  ["x-request-id"] = OWN, ratelimit = OWN, ["ratelimit-policy"] = OWN, ["retry-after"] = OWN,
  vary = OWN .. " (with cors) and kept from an upstream's answer the cache was keyed by",
  ["content-encoding"] = "describes the stored body",
}

-- Why field `low` (lowercased) may not be named by a rule of `kind`, or nil.
local function refused(low, kind, identity_headers)
  local why = FIXED[low]
  if why then return why end
  if low:sub(1, 6) == "proxy-" then return HOP end
  if identity_headers[low] then
    return "is read by the identity block (" .. identity_headers[low] .. ")"
  end
  if kind == "request_headers" then
    why = REQUEST_FIXED[low]
    if not why and low:sub(1, 12) == "x-forwarded-" then why = "is set by sluice itself" end
  else
    why = RESPONSE_FIXED[low]
    if not why and low:sub(1, 12) == "x-ratelimit-" then why = OWN end
    if not why and low:sub(1, 15) == "access-control-" then why = "is written by sluice from cors = { ... }" end
  end
  return why
end

-- The request fields the identity block reads: lowercased name -> what.
function M.identity_headers(identity)
  local out = {}
  if not identity then return out end
  for _, k in ipairs({ "user", "tenant", "tier" }) do
    local src = identity[k]
    if type(src) == "table" and src.header then
      out[src.header:lower()] = k
    end
  end
  if identity.api_key and identity.api_key.header then
    out[identity.api_key.header:lower()] = "the API key"
  end
  return out
end

-- The template options of header values: those of the request's templates without {query...}
-- and {body.NAME} (a body may be streamed to the upstream unread, and a query refused).
local value_opts = setmetatable({}, { __mode = "k" })
local function header_value_opts(topts)
  local o = value_opts[topts]
  if o then return o end
  o = {}
  for k, v in pairs(topts) do
    o[k] = v
  end
  local allowed = {}
  for k in pairs(topts.allowed or {}) do
    if k ~= "query" and k ~= "body" then allowed[k] = true end
  end
  o.allowed = allowed
  o.refuse = function(kind)
    if kind == "query" or kind == "body" then
      return "is not available in a header value (use {user}, {tenant}, {tier}, {ip}, {method}, {route},"
        .. " {path.NAME}, {header.NAME} or {claim.NAME})"
    end
    return topts.refuse and topts.refuse(kind)
  end
  value_opts[topts] = o
  return o
end

--[[
Checks header rules at `field` ("request_headers" or "response_headers") with the checker c.
topts are the template options of the values. Returns the normalized list, or nil when v is nil.
]]
function M.check_rules(c, v, field, topts, identity)
  if v == nil then return nil end
  if not is_plain(v) or (#v > 0) then
    c:err(field, 'expected a table of fields, as in { ["X-Source"] = "sluice", ["Server"] = false }, got '
      .. describe(v))
    return nil
  end
  local ids = M.identity_headers(identity)
  topts = header_value_opts(topts)
  local out, seen, n = {}, {}, 0
  local names = {}
  for k in pairs(v) do
    names[#names + 1] = k
  end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, name in ipairs(names) do
    local value = v[name]
    n = n + 1
    if type(name) ~= "string" or not name:match(FIELD_NAME) then
      c:err(field, "expected a header field name (an RFC 9110 token), got " .. describe(name))
    else
      local low = name:lower()
      local f = field .. "[" .. quote(name) .. "]"
      local why = refused(low, field, ids)
      if why then
        c:err(f, quote(name) .. " cannot be set or removed here: it " .. why)
      elseif seen[low] then
        c:err(f, quote(name) .. " is named twice (as " .. quote(seen[low]) .. " too)")
      elseif value == false then
        seen[low] = name
        out[#out + 1] = { name = name, remove = true }
      elseif type(value) ~= "string" then
        c:err(f, "expected a value (a template string such as \"{user}\") or false to remove the field, got "
          .. describe(value))
      elseif value:find("[\r\n%z]") then
        c:err(f, "the value may not hold CR, LF or NUL")
      elseif #value > M.MAX_VALUE then
        c:err(f, "the value is longer than " .. M.MAX_VALUE .. " bytes")
      elseif value:match("^[ \t]") or value:match("[ \t]$") then
        c:err(f, "the value may not begin or end with whitespace (RFC 9110 section 5.5)")
      else
        local src = c:template(value, f, topts)
        if src then
          seen[low] = name
          out[#out + 1] = { name = name, value = src }
        end
      end
    end
  end
  if n > M.MAX_RULES then
    c:err(field, "lists " .. n .. " fields; at most " .. M.MAX_RULES)
  end
  table.sort(out, function(a, b) return a.name:lower() < b.name:lower() end)
  return out
end

-- Rules `over` applied after `base`: a name in both takes over's rule.
function M.merge(base, over)
  if not base or #base == 0 then return over end
  if not over or #over == 0 then return base end
  local by, out = {}, {}
  for _, r in ipairs(over) do
    by[r.name:lower()] = true
  end
  for _, r in ipairs(base) do
    if not by[r.name:lower()] then out[#out + 1] = r end
  end
  for _, r in ipairs(over) do
    out[#out + 1] = r
  end
  table.sort(out, function(a, b) return a.name:lower() < b.name:lower() end)
  return out
end

-- An origin as Fetch serializes it (section 3.2.1 "Origin" header; HTML's serialization of
-- a tuple origin): scheme "://" host [":" port], lowercase, no path, no trailing slash.
local function origin_problem(o)
  local scheme, rest = o:match("^([%a][%w+.%-]*)://(.+)$")
  if not scheme then return "expected scheme://host[:port]" end
  if scheme ~= scheme:lower() or rest ~= rest:lower() then return "must be lowercase, as browsers send it" end
  if rest:find("[/?#]") then return "may not hold a path, query or fragment (not even a trailing '/')" end
  if rest:find("@", 1, true) then return "may not hold user information" end
  local host, port
  if rest:sub(1, 1) == "[" then
    host, port = rest:match("^(%[[%x:.]+%])(.*)$")
  else
    host, port = rest:match("^([^:]+)(.*)$")
  end
  if not host or host == "" or not host:match("^[%w.%-%[%]:]+$") then
    return "the host may use only letters, digits, '.', '-' (or an IP address)"
  end
  if port ~= "" then
    local p = port:match("^:(%d+)$")
    p = p and tonumber(p)
    if not p or p < 1 or p > 65535 then return "the port must be a number from 1 to 65535" end
  end
  return nil
end
M.origin_problem = origin_problem

local function name_list(c, v, field, pattern, noun, upper)
  if not is_plain(v) or not is_list(v) or #v == 0 then
    c:err(field, "expected a non-empty list of " .. noun .. ", got " .. describe(v))
    return nil
  end
  if #v > M.MAX_CORS_LIST then
    c:err(field, "lists " .. #v .. " entries; at most " .. M.MAX_CORS_LIST)
  end
  local out, seen = {}, {}
  for i, x in ipairs(v) do
    local f = field .. "[" .. i .. "]"
    if type(x) ~= "string" or not x:match(pattern) then
      c:err(f, "expected " .. noun:gsub("s$", "") .. ", got " .. describe(x))
    else
      local k = upper and x or x:lower()
      if seen[k] then
        c:err(f, quote(x) .. " is listed twice")
      else
        seen[k] = true
        out[#out + 1] = x
      end
    end
  end
  return out
end

--[[
Checks a cors table at `field` (nil: absent; false: turned off, returned as false). Returns the
normalized table, false, or nil.
]]
function M.check_cors(c, v, field)
  if v == nil or (v == false and field) then return v end
  local function at(x)
    return field and (field .. "." .. x) or x
  end
  if not is_plain(v) or #v > 0 then
    c:err(field, 'expected a table such as { origins = { "https://app.example.com" } } or false, got '
      .. describe(v))
    return nil
  end
  local allowed = {}
  for _, k in ipairs(M.CORS_FIELDS) do
    allowed[k] = true
  end
  for k in pairs(v) do
    if type(k) ~= "string" or not allowed[k] then
      c:err(field, "unknown field " .. describe(k) .. " (cors takes " .. table.concat(M.CORS_FIELDS, ", ") .. ")")
    end
  end
  local out = {}
  if v.origins == nil then
    c:err(at("origins"), 'is required: a list such as { "https://app.example.com" }, or "*"')
  elseif v.origins == "*" then
    out.any_origin = true
  elseif is_plain(v.origins) and is_list(v.origins) and #v.origins > 0 then
    out.origins = {}
    for i, o in ipairs(v.origins) do
      local f = at("origins[" .. i .. "]")
      if type(o) ~= "string" then
        c:err(f, "expected an origin such as \"https://app.example.com\", got " .. describe(o))
      elseif o == "*" then
        c:err(f, '"*" stands alone: write origins = "*"')
      else
        local why = origin_problem(o)
        if why then
          c:err(f, quote(o) .. " is not an origin: " .. why)
        else
          out.origins[#out.origins + 1] = o
        end
      end
    end
    if #v.origins > M.MAX_CORS_LIST then
      c:err(at("origins"), "lists " .. #v.origins .. " origins; at most " .. M.MAX_CORS_LIST)
    end
  else
    c:err(at("origins"), 'expected a non-empty list of origins or "*", got ' .. describe(v.origins))
  end
  if v.methods ~= nil then
    out.methods = name_list(c, v.methods, at("methods"), METHOD, "methods", true)
  end
  if v.headers == "*" then
    out.headers_any = true
  elseif v.headers ~= nil then
    out.headers = name_list(c, v.headers, at("headers"), FIELD_NAME, "header names (or \"*\")")
  end
  if v.expose ~= nil then
    out.expose = name_list(c, v.expose, at("expose"), FIELD_NAME, "header names")
  end
  out.credentials = c:boolean(v.credentials, at("credentials"), false)
  if out.credentials and out.any_origin then
    c:err(at("credentials"), 'true cannot go with origins = "*": a browser refuses credentials for any'
      .. ' origin (Fetch standard, CORS protocol and credentials); list the origins')
  end
  if v.max_age ~= nil then
    local ms, err = duration.parse(v.max_age, true)
    if not ms then
      c:err(at("max_age"), err)
    else
      out.max_age_s = ms // 1000
    end
  end
  return out
end

return M
