-- sluice.dsl: loads policy files into one checked, normalized policy set.
--
--   local dsl = require "sluice.dsl"
--   local set, errors = dsl.load({ { path = "policies/10-tiers.lua", source = "..." }, ... })
--
-- Each file runs in its own sandbox (sluice.sandbox) where these names
-- declare the policy:
--
--   tier "free" { limit = 100, window = "1h" }           -- a plan and its budget
--   identity { user = header "X-User-Id", ... }           -- who is calling
--   upstream "app" { url = "http://127.0.0.1:3000" }      -- an HTTP origin
--   endpoint "GET /api/x" { sql = "...", cache = {...} }  -- what a route does
--   on_change "contacts" { invalidate = { ... } }         -- PostgreSQL NOTIFY
--   header "X-User-Id", sql("SELECT ...", "{user}")       -- identity sources
--
-- Files declare, they do not act: the declarations are collected, then
-- checked together (sluice.validate), so the order of declarations across
-- files does not matter, and one run reports every problem of every file.
local sandbox = require "sluice.sandbox"
local validate = require "sluice.validate"

local M = {}

local MARK = validate.MARK
local describe = validate.describe

local EXAMPLES = {
  tier = 'tier "free" { limit = 100, window = "1h" }',
  upstream = 'upstream "app" { url = "http://127.0.0.1:3000" }',
  endpoint = 'endpoint "GET /api/things" { sql = "SELECT ..." }',
  on_change = 'on_change "contacts" { invalidate = { "crm:{row.owner_id}" } }',
}

-- The values header "..." and sql(...) return to a policy: read-only views,
-- keyed here to the data the validator sees.
local markers = setmetatable({}, { __mode = "k" })

local function marker(data, view)
  local proxy = setmetatable({}, {
    __index = view,
    __newindex = function()
      error(view.kind .. "(...) values are read-only", 2)
    end,
    __metatable = false,
  })
  markers[proxy] = data
  return proxy
end

-- Copies a value a policy passed in, so that the policy changing its tables
-- later cannot change what was declared.
local function copy(v, seen)
  if type(v) ~= "table" then return v end
  local data = markers[v]
  if data then return data end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local t = {}
  seen[v] = t
  for k, x in next, v do
    t[copy(k, seen)] = copy(x, seen)
  end
  return t
end

local function is_table_arg(v)
  return type(v) == "table" and not markers[v]
end

-- The DSL functions of one file. `ctx` holds path, chunkname, fidx, the
-- shared list of declarations and the report.
local function file_functions(ctx)
  local function here()
    return sandbox.line(ctx.chunkname, nil, 1) or 1
  end
  local function err(line, msg)
    ctx.report:add(ctx.fidx, ctx.path, line, msg)
  end
  local function declare(kind, name, line)
    local d = { kind = kind, name = name, file = ctx.path, fidx = ctx.fidx, line = line }
    ctx.decls[#ctx.decls + 1] = d
    ctx.mine[#ctx.mine + 1] = d
    return d
  end

  -- tier "NAME" { fields }, also written tier("NAME", { fields }).
  local function named(kind)
    return function(...)
      local line = here()
      local name, fields = ...
      if type(name) ~= "string" then
        err(line, kind .. ": expected a name in quotes first, as in " .. EXAMPLES[kind]
          .. ", got " .. describe(copy(name)))
        return function() end
      end
      local d = declare(kind, name, line)
      local what = validate.WHAT[kind](d)
      local function take(f)
        if d.fields ~= nil then
          err(line, what .. ": already has its fields")
          return
        end
        if not is_table_arg(f) then
          d.fields = false
          err(line, what .. ": expected a table of fields { ... } after the name, got " .. describe(copy(f)))
          return
        end
        d.fields = copy(f)
      end
      if select("#", ...) >= 2 then
        take(fields)
        return
      end
      return take
    end
  end

  local function identity(f)
    local line = here()
    if not is_table_arg(f) then
      err(line, 'identity: expected a table of fields, as in identity { user = header "X-User-Id" }, got '
        .. describe(copy(f)))
      return
    end
    declare("identity", nil, line).fields = copy(f)
  end

  local function header(name)
    return marker({ [MARK] = "header", name = name }, { kind = "header", name = name })
  end

  -- sql("SELECT ... $1", "{user}", ...) or sql("...", { "{user}", ... })
  local function sql(query, ...)
    local args
    if select("#", ...) == 1 and is_table_arg((...)) then
      args = copy((...))
    else
      args = copy({ ... })
    end
    return marker({ [MARK] = "sql", sql = query, args = args }, { kind = "sql", sql = query })
  end

  return {
    tier = named("tier"),
    upstream = named("upstream"),
    endpoint = named("endpoint"),
    on_change = named("on_change"),
    identity = identity,
    header = header,
    sql = sql,
  }
end

-- The line number in a "path:LINE: message" produced for `path`.
local function line_of(msg, path)
  return tonumber(msg:sub(#path + 2):match("^(%d+):")) or 0
end

--[[
Loads a policy set. `files` is an array, in name order, of
  { path = "policies/10-tiers.lua", source = "<text>", tenant = nil | "NAME" }.
Returns the normalized set and nil, or nil and an array of messages
"path:line: message", sorted by file and line. A set with any error is
rejected whole. `opts.budget` overrides the instruction budget of each file.

Tenant files (tenant ~= nil) are not supported yet: each one is reported as
an error, so that a tenants/ directory is never silently ignored.
]]
function M.load(files, opts)
  opts = opts or {}
  if type(files) ~= "table" then
    return nil, { "sluice.dsl.load: expected an array of files, got " .. type(files) }
  end
  local report = validate.report()
  local decls = {}
  local complete = true
  for i, file in ipairs(files) do
    if type(file) ~= "table" then
      file = {}
    end
    local path, source = file.path, file.source
    if type(path) ~= "string" or type(source) ~= "string" then
      report:raw(i, 0, tostring(path) .. ":1: policy file entry needs a path and a source string")
      complete = false
    elseif file.tenant ~= nil then
      report:add(i, path, 1, "tenant files are not supported yet (this file would hold the rules of tenant "
        .. string.format("%q", tostring(file.tenant)) .. "); move its rules into the main policy files")
    else
      local ctx = {
        path = path, chunkname = "@" .. path, fidx = i, decls = decls, mine = {}, report = report,
      }
      local env = sandbox.env(file_functions(ctx))
      local ok, msg = sandbox.run(path, source, env, opts.budget)
      if not ok then
        report:raw(i, line_of(msg, path), msg)
        complete = false
      else
        for _, d in ipairs(ctx.mine) do
          if d.fields == nil then
            report:add(i, path, d.line, validate.WHAT[d.kind](d) .. ": expected { ... } after the name, as in "
              .. EXAMPLES[d.kind])
          end
        end
      end
    end
  end
  local set = validate.build(files, decls, report, complete)
  if report:count() > 0 then
    return nil, report:list()
  end
  return set, nil
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Lists the policy files of `dir` as M.load wants them: dir/*.lua in name
-- order, then dir/tenants/*.lua. Returns the array, or nil and a message.
function M.read_dir(dir)
  dir = dir:gsub("(.)/+$", "%1")
  local p = io.popen("find " .. shell_quote(dir) .. " -maxdepth 2 -name '*.lua' -type f 2>/dev/null")
  if not p then
    return nil, dir .. ": cannot list the directory"
  end
  local base, tenants = {}, {}
  for line in p:lines() do
    local rel = line:sub(#dir + 2)
    if not rel:find("/", 1, true) then
      base[#base + 1] = line
    elseif rel:match("^tenants/[^/]+%.lua$") then
      tenants[#tenants + 1] = line
    end
  end
  p:close()
  local function bytes_less(a, b)
    local n = math.min(#a, #b)
    for i = 1, n do
      local x, y = a:byte(i), b:byte(i)
      if x ~= y then return x < y end
    end
    return #a < #b
  end
  table.sort(base, bytes_less)
  table.sort(tenants, bytes_less)
  local files = {}
  local function add(path, tenant)
    local f, err = io.open(path, "rb")
    if not f then
      return nil, err
    end
    local source = f:read("a")
    f:close()
    files[#files + 1] = { path = path, source = source, tenant = tenant }
    return true
  end
  for _, path in ipairs(base) do
    local ok, err = add(path, nil)
    if not ok then return nil, err end
  end
  for _, path in ipairs(tenants) do
    local ok, err = add(path, path:match("([^/]+)%.lua$"))
    if not ok then return nil, err end
  end
  if #files == 0 then
    return nil, dir .. ": no *.lua policy files"
  end
  return files
end

-- Loads every policy file of `dir` (for tests and tools; the engine reads
-- the files itself and calls M.load). Returns what M.load returns.
function M.load_dir(dir, opts)
  local files, err = M.read_dir(dir)
  if not files then
    return nil, { err }
  end
  return M.load(files, opts)
end

return M
