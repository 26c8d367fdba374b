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
--   cors { origins = { "https://app.example.com" } }      -- CORS for every endpoint
--   compress(true)                                        -- gzip/br/zstd cached answers
--   header "X-User-Id", sql("SELECT ...", "{user}")       -- identity sources;
--   header("X-User-Id", { integer = true })               -- a typed one (uuid, pattern)
--   claim "sub", claim("sub", { integer = true })         -- a verified credential's claim
--
-- Files declare, they do not act: the declarations are collected, then
-- checked together (sluice.validate), so the order of declarations across
-- files does not matter, and one run reports every problem of every file.
--
-- tenants/NAME.lua files hold per-tenant overrides and hooks; each is
-- checked on its own (sluice.tenant).
local sandbox = require "sluice.sandbox"
local validate = require "sluice.validate"
local tenant = require "sluice.tenant"

local M = {}

local MARK = validate.MARK
local describe = validate.describe

local EXAMPLES = {
  tier = 'tier "free" { limit = 100, window = "1h" }',
  upstream = 'upstream "app" { url = "http://127.0.0.1:3000" }',
  endpoint = 'endpoint "GET /api/things" { sql = "SELECT ..." }',
  on_change = 'on_change "contacts" { invalidate = { "crm:{row.owner_id}" } }',
  hook = 'hook "name" { when = function(req) ... end, adjust = function(req, decision) ... end }',
}

-- The values header "...", claim "..." and sql(...) return to a policy: read-only views,
-- keyed here to the data the validator sees.
local markers = setmetatable({}, { __mode = "k" })

local function marker(data, view, call)
  local proxy = setmetatable({}, {
    __index = view,
    __newindex = function()
      error(view.kind .. "(...) values are read-only", 2)
    end,
    __call = call,
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

-- The helpers that record the declarations of one file. `ctx` holds path,
-- chunkname, fidx, the shared list of declarations and the report.
local function declarer(ctx)
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

  return { here = here, err = err, declare = declare, named = named }
end

-- The DSL functions of one file of the main set.
local function file_functions(ctx)
  local d = declarer(ctx)
  local here, err, declare, named = d.here, d.err, d.declare, d.named

  local function identity(f)
    local line = here()
    if not is_table_arg(f) then
      err(line, 'identity: expected a table of fields, as in identity { user = header "X-User-Id" }, got '
        .. describe(copy(f)))
      return
    end
    declare("identity", nil, line).fields = copy(f)
  end

  -- cors { origins = { ... }, ... }: the CORS every endpoint has unless it says its own
  -- cors = { ... } or cors = false (sluice.headers).
  local function cors(f)
    local line = here()
    if not is_table_arg(f) then
      err(line, 'cors: expected a table of fields, as in cors { origins = { "https://app.example.com" } }, got '
        .. describe(copy(f)))
      return
    end
    declare("cors", nil, line).fields = copy(f)
  end

  -- A value read from the request by name, kind "header" or "claim": `kind "NAME"`,
  -- `kind("NAME", { integer = true })`, or the options written after: `kind "NAME" { ... }`.
  local function named_source(kind)
    local function source(name, ...)
      local data = { [MARK] = kind, name = name }
      if select("#", ...) > 0 then
        data.opts = copy((...))
        data.has_opts = true
      end
      local call
      if not data.has_opts then
        call = function(_, opts)
          return source(name, opts)
        end
      end
      return marker(data, { kind = kind, name = name }, call)
    end
    return source
  end

  -- header "X-User-Id", header("X-User-Id", { integer = true }), header "X-Plan" { ... }.
  local header = named_source("header")
  -- claim "sub" (and the same forms): a claim of the caller's verified token (or a column of
  -- its API key's row).
  local claim = named_source("claim")

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

  -- compress(true), compress { types = ..., min_size = ..., codings = ... }: the set's default
  -- for its cached endpoints (an endpoint's own compress = ... wins).
  local function compress(v)
    declare("compress", nil, here()).fields = { value = copy(v) }
  end

  return {
    tier = named("tier"),
    upstream = named("upstream"),
    endpoint = named("endpoint"),
    on_change = named("on_change"),
    compress = compress,
    identity = identity,
    cors = cors,
    header = header,
    claim = claim,
    sql = sql,
  }
end

-- The DSL functions of a tenant file: tier, endpoint and hook; the names
-- only the main set may use are reported.
local function tenant_functions(ctx)
  local d = declarer(ctx)
  local function refuse(kind, curried)
    return function(...)
      d.err(d.here(), kind .. " cannot be used in a tenant file, which holds tier, endpoint and hook"
        .. " declarations; put it in the main policy files")
      if curried and select("#", ...) < 2 then
        return function() end
      end
    end
  end
  return {
    tier = d.named("tier"),
    endpoint = d.named("endpoint"),
    hook = d.named("hook"),
    identity = refuse("identity"),
    cors = refuse("cors"),
    upstream = refuse("upstream", true),
    on_change = refuse("on_change", true),
    compress = refuse("compress"),
    header = refuse("header"),
    claim = refuse("claim"),
    sql = refuse("sql"),
  }
end

-- The line number in a "path:LINE: message" produced for `path`.
local function line_of(msg, path)
  return tonumber(msg:sub(#path + 2):match("^(%d+):")) or 0
end

-- Runs the declarations of one file of the main set into ctx.decls.
-- Returns false when the file did not run to its end.
local function run_main_file(i, path, source, decls, report, opts)
  local ctx = {
    path = path, chunkname = "@" .. path, fidx = i, decls = decls, mine = {}, report = report,
  }
  local env = sandbox.env(file_functions(ctx))
  local ok, msg = sandbox.run(path, source, env, opts.budget)
  if not ok then
    report:raw(i, line_of(msg, path), msg)
    return false
  end
  for _, d in ipairs(ctx.mine) do
    if d.fields == nil then
      report:add(i, path, d.line, validate.WHAT[d.kind](d) .. ": expected { ... } after the name, as in "
        .. EXAMPLES[d.kind])
    end
  end
  return true
end

-- Runs and checks one tenant file into `report`; returns the normalized tenant,
-- and whether the file's own run ran out of time.
local function check_tenant(name, path, source, main, opts, report, ms)
  local ctx = { path = path, chunkname = "@" .. path, fidx = 1, decls = {}, mine = {}, report = report }
  local env = sandbox.env(tenant_functions(ctx))
  local ok, msg = sandbox.run(path, source, env, opts.tenant_budget or tenant.BUDGET, ms)
  if not ok then
    report:raw(1, line_of(msg, path), msg)
    if msg:find("exceeded its time budget", 1, true) then
      return nil, true
    end
  else
    for _, d in ipairs(ctx.mine) do
      if d.fields == nil then
        report:add(1, path, d.line, validate.WHAT[d.kind](d) .. ": expected { ... } after the name, as in "
          .. EXAMPLES[d.kind])
      end
    end
  end
  return tenant.build(name, path, source, ctx.decls, main, report), false
end

-- At most this many messages of at most this many bytes for one tenant file:
-- a file can declare many things with long names, and its messages are
-- logged at every reload.
local MAX_TENANT_MESSAGES, MAX_MESSAGE_BYTES = 20, 400

-- The messages of tenant file `path` within those bounds (cut between UTF-8
-- characters).
local function bounded(path, list)
  local out = {}
  for i, msg in ipairs(list) do
    if i > MAX_TENANT_MESSAGES then
      out[#out + 1] = path .. ":1: " .. (#list - MAX_TENANT_MESSAGES) .. " more messages left out"
      break
    end
    if #msg > MAX_MESSAGE_BYTES then
      local n = MAX_MESSAGE_BYTES
      while n > 0 and msg:byte(n + 1) >= 0x80 and msg:byte(n + 1) < 0xC0 do
        n = n - 1
      end
      msg = msg:sub(1, n) .. "..."
    end
    out[i] = msg
  end
  return out
end

-- Loads one tenant file against `main` (nil: the main set did not load).
-- Returns the normalized tenant, or nil and its messages. Running the file
-- and checking what it declares take at most opts.tenant_ms milliseconds
-- (sluice.tenant.TIME_BUDGET_MS) together; running out of time, or an error
-- while checking, fails this tenant only.
local function load_tenant(name, path, source, main, opts)
  local report = validate.report()
  local ms = opts.tenant_ms or tenant.TIME_BUDGET_MS
  local t, file_timed_out
  local ok, why = sandbox.within(ms, function()
    t, file_timed_out = check_tenant(name, path, source, main, opts, report, ms)
  end)
  if not ok and why == "time" then
    if not file_timed_out then
      report:add(1, path, 1, "tenant file exceeded its time budget (" .. ms .. " ms) while it was checked")
    end
  elseif not ok then
    report:add(1, path, 1, "tenant file could not be checked: " .. tostring(why))
  end
  if report:count() > 0 then
    return nil, bounded(path, report:list())
  end
  return t
end

--[[
Loads a policy set. `files` is an array, in name order, of
  { path = "policies/10-tiers.lua", source = "<text>", tenant = nil | "NAME" }.
A file with a tenant is a tenant file (tenants/NAME.lua, see sluice.tenant).

Returns the normalized set and nil, or nil and an array of messages
"path:line: message". The main set (the files without a tenant) is
accepted or rejected whole; its messages come sorted by file and line,
followed by those of each tenant file.

A tenant file is checked on its own against the main set: when it fails,
the set still loads, with the tenant's messages in
set.tenant_errors[NAME] = { "path:line: message", ... }, and the tenant
left out of set.tenants, unless opts.last_good[NAME] = { path, source }
holds the last version of that file that loaded: then that version is
checked again and, if it still loads, it is the tenant's entry, marked
last_good = true.

opts.budget overrides the instruction budget of each main file,
opts.tenant_budget that of each tenant file (sluice.tenant.BUDGET),
opts.tenant_ms the time budget of each tenant file
(sluice.tenant.TIME_BUDGET_MS; kept in the engine only).
]]
function M.load(files, opts)
  opts = opts or {}
  if type(files) ~= "table" then
    return nil, { "sluice.dsl.load: expected an array of files, got " .. type(files) }
  end
  local report = validate.report()
  local decls = {}
  local complete = true
  local main_files, tenant_files = {}, {}
  for i, file in ipairs(files) do
    if type(file) ~= "table" then
      file = {}
    end
    local path, source = file.path, file.source
    if type(path) ~= "string" or type(source) ~= "string" then
      report:raw(i, 0, tostring(path) .. ":1: policy file entry needs a path and a source string")
      complete = false
    elseif file.tenant ~= nil then
      tenant_files[#tenant_files + 1] = file
    else
      main_files[#main_files + 1] = file
      if not run_main_file(i, path, source, decls, report, opts) then
        complete = false
      end
    end
  end
  local set = validate.build(main_files, decls, report, complete)
  local main_ok = report:count() == 0
  set.tenants, set.tenant_errors = {}, {}
  local last_good = type(opts.last_good) == "table" and opts.last_good or {}
  local order = {}
  for _, file in ipairs(tenant_files) do
    local name = file.tenant
    if type(name) ~= "string" then
      name = tostring(name)
    end
    if set.tenant_errors[name] or order[name] then
      set.tenant_errors[name] = set.tenant_errors[name] or {}
      table.insert(set.tenant_errors[name], file.path .. ":1: tenant " .. string.format("%q", name)
        .. " already has a file")
    else
      order[#order + 1] = name
      order[name] = true
      local t, errs = load_tenant(name, file.path, file.source, main_ok and set or nil, opts)
      if t then
        set.tenants[#set.tenants + 1] = t
      else
        set.tenant_errors[name] = errs
        local prev = last_good[name]
        if main_ok and type(prev) == "table" and type(prev.path) == "string" and type(prev.source) == "string" then
          local pt, perrs = load_tenant(name, prev.path, prev.source, set, opts)
          if pt then
            pt.last_good = true
            set.tenants[#set.tenants + 1] = pt
          else
            table.insert(errs, file.path .. ":1: the last version of tenant " .. string.format("%q", name)
              .. " that loaded does not load against this policy set either (" .. perrs[1]
              .. "); the tenant has no overrides")
          end
        end
      end
    end
  end
  if not main_ok then
    local list = report:list()
    for _, name in ipairs(order) do
      for _, e in ipairs(set.tenant_errors[name] or {}) do
        list[#list + 1] = e
      end
    end
    return nil, list
  end
  return set, nil
end

--[[
Runs a tenant file the way the engine does to collect its hooks: every
declaration but hook does nothing. Returns
  { { name = "...", when = function | nil, adjust = function }, ... }
in declaration order, or nil and a message. For specs and tools: in the
engine, hooks run in a sandbox of their own (engine/policy/lua_sandbox.c),
with an instruction and a time budget per call and a memory cap.
]]
function M.tenant_hooks(path, source)
  local hooks = {}
  local function decl(...)
    if select("#", ...) >= 2 then return end
    return function() end
  end
  local function hook(name, ...)
    local function take(f)
      if type(f) == "table" then
        hooks[#hooks + 1] = { name = name, when = f.when, adjust = f.adjust }
      end
    end
    if select("#", ...) >= 1 then
      take((...))
      return
    end
    return take
  end
  local env = sandbox.env({
    tier = decl, endpoint = decl, identity = decl, upstream = decl, on_change = decl, cors = decl,
    header = function() end, claim = function() end, sql = function() end, hook = hook,
  })
  local ok, msg = sandbox.run(path, source, env, tenant.BUDGET, tenant.TIME_BUDGET_MS)
  if not ok then
    return nil, msg
  end
  return hooks
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Lists the policy files of `dir` as M.load wants them: dir/*.lua in name
-- order, then dir/tenants/*.lua. Returns the array, or nil and a message.
function M.read_dir(dir)
  dir = dir:gsub("(.)/+$", "%1")
  local p = io.popen("find -L " .. shell_quote(dir) .. " -maxdepth 2 -name '*.lua' -type f 2>/dev/null")
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
