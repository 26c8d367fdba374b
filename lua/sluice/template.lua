-- sluice.template: checks key templates such as "crm:contacts:{user}".
--
-- The engine compiles every template again in C (engine/template.c); this
-- module applies the same syntax rules, and the rules that need the policy
-- around the template (which route parameters exist, whether the method has a
-- body, where {row.*} may appear), so that `sluice check` reports problems as
-- file:line with the declaration they belong to.
local suggest = require "sluice.suggest"

local M = {}

-- Every template variable. Dotted ones take a name: {path.id}, {query.type},
-- {header.X-Api-Key}, {body.email}, {claim.plan}, {row.owner_id}.
M.VARIABLES = { "user", "tenant", "tier", "ip", "method", "route", "path", "query", "header", "body", "claim",
  "row" }
M.DOTTED = { path = true, query = true, header = true, body = true, claim = true, row = true }
-- Dotted ones that also stand alone: {path} is the whole path, {query} the whole query
-- (canonical: parameters decoded, sorted by name, encoded one way).
M.WHOLE = { path = true, query = true }
-- Bytes a variable's NAME may have (TEMPLATE_MAX_NAME in engine/common/template.h).
M.MAX_NAME = 64
local KNOWN = {}
for _, v in ipairs(M.VARIABLES) do
  KNOWN[v] = true
end

-- Variables whose value depends on the request (everything but {row.*}).
-- {user}, {tenant} and {claim.NAME} name the caller (M.CALLER).
M.REQUEST = {
  user = true, tenant = true, tier = true, ip = true, method = true, route = true,
  path = true, query = true, header = true, body = true, claim = true,
}

-- Bytes no expanded value can contain (values are %XX-escaped there), so a
-- literal holding one of them keeps two neighbouring variables apart.
local function has_delimiter(lit)
  for i = 1, #lit do
    local c = lit:byte(i)
    if c <= 0x20 or c >= 0x7f or c == 58 --[[ : ]] or c == 123 or c == 125 then
      return true
    end
  end
  return false
end

-- Splits `src` into its variables. Returns an array of { var = "path",
-- name = "id", text = "{path.id}" } (name is nil for plain variables), or
-- nil and the reason the template is malformed.
function M.parse(src)
  local vars = {}
  local i, n, lit_start = 1, #src, 1
  local prev
  while i <= n do
    local c = src:sub(i, i)
    if c == "}" then
      return nil, "stray '}' (templates have no literal braces)"
    elseif c ~= "{" then
      i = i + 1
    else
      local j = i + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "}" or d == "{" then break end
        j = j + 1
      end
      if j > n or src:sub(j, j) == "{" then
        return nil, "unclosed '{'"
      end
      local body = src:sub(i + 1, j - 1)
      local text = "{" .. body .. "}"
      if body == "" then
        return nil, "empty '{}'"
      end
      local kind, name = body:match("^([^.]*)%.(.*)$")
      kind = kind or body
      if not KNOWN[kind] then
        return nil, "unknown variable " .. text .. suggest.hint(kind, M.VARIABLES, "{", "}")
      end
      if M.DOTTED[kind] and (name == "" or (name == nil and not M.WHOLE[kind])) then
        return nil, text .. " needs a name, as in {" .. kind .. ".NAME}"
      end
      if not M.DOTTED[kind] and name then
        return nil, text .. ": {" .. kind .. "} takes no name"
      end
      if name and #name > M.MAX_NAME then
        return nil, "the name in " .. text .. " is longer than " .. M.MAX_NAME .. " bytes"
      end
      if name and not name:match("^[%w_%-]+$") then
        return nil, "bad name in " .. text .. ": names use letters, digits, '_' and '-'"
      end
      if prev and not has_delimiter(src:sub(lit_start, i - 1)) then
        return nil, text .. " follows " .. prev .. " without a ':' between them,"
          .. " so different values could expand to the same text"
      end
      vars[#vars + 1] = { var = kind, name = name, text = text }
      prev = text
      i = j + 1
      lit_start = i
    end
  end
  return vars
end

-- The variables that name a caller: a key holding one is used only for callers who have it.
M.CALLER = { user = true, tenant = true, claim = true }

local BODY_METHODS = { POST = true, PUT = true, PATCH = true, DELETE = true }
M.BODY_METHODS = BODY_METHODS

-- Parses `src` and checks its variables against where it is used:
--   opts.allowed  set of variable kinds allowed here (default: M.REQUEST)
--   opts.refuse   function(kind) returning the reason a kind is refused
--   opts.params   set of the route's {name} parameters, for {path.NAME}
--   opts.method   the endpoint's method, for {body.NAME}
--   opts.secrets  { header = { [lowercased name] = what }, query = { [name] = what } }: request
--                 values that carry a credential, refused
-- Returns the variables (as M.parse), or nil and a reason.
function M.check(src, opts)
  opts = opts or {}
  if type(src) ~= "string" then
    return nil, "expected a template string, got " .. type(src)
  end
  if src == "" then
    return nil, "must not be empty"
  end
  local vars, err = M.parse(src)
  if not vars then return nil, err end
  local allowed = opts.allowed or M.REQUEST
  for _, v in ipairs(vars) do
    if not allowed[v.var] then
      local why = opts.refuse and opts.refuse(v.var)
      return nil, v.text .. " " .. (why or "is not available here")
    end
    if v.var == "path" and v.name and opts.params and not opts.params[v.name] then
      local names = {}
      for p in pairs(opts.params) do
        names[#names + 1] = p
      end
      table.sort(names)
      return nil, v.text .. ": the route has no {" .. v.name .. "} parameter"
        .. suggest.hint(v.name, names, "{path.", "}")
    end
    local secret = opts.secrets and v.name and opts.secrets[v.var]
      and opts.secrets[v.var][v.var == "header" and v.name:lower() or v.name]
    if secret then
      return nil, v.text .. " is " .. secret .. ": a template would put it in clear in a key,"
        .. " a tag or an SQL argument (use {user} or {claim.NAME})"
    end
    if v.var == "body" and opts.method and not BODY_METHODS[opts.method] then
      return nil, v.text .. ": " .. opts.method
        .. " requests have no body (only POST, PUT, PATCH and DELETE endpoints can use {body.NAME})"
    end
  end
  return vars
end

return M
