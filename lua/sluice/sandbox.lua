-- sluice.sandbox: runs one policy file in a private environment with an
-- instruction budget and, in the engine, a time budget.
--
-- A policy file sees only the DSL functions it is given and a few safe
-- basics; the string, math, table and utf8 libraries are read-only views, and
-- io, os, package, debug, require, load, rawset, setmetatable, xpcall and
-- friends are absent. Reading a name that does not exist is an error naming it (most are
-- typos of a DSL function). Each file gets a fresh environment, so a global a
-- file sets is private to that file.
local suggest = require "sluice.suggest"

-- In the engine the loader preloads sluice.limits (engine/policy/lua_limits.c):
-- files then run with a time budget too, which also sees time spent inside C
-- functions, and the string functions are the engine's bounded ones. Under
-- plain Lua (busted) a debug hook counts instructions only.
local limits = package and package.preload["sluice.limits"] and require "sluice.limits"

local M = {}

-- Lua VM instructions one policy file may execute, DSL calls included.
M.BUDGET = 10000000

-- pcall is safe with the budget hook below; xpcall is not offered, because
-- its message handler runs inside the hook, where no hook can stop it.
local BASICS = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
  "tostring", "type",
}

-- A read-only view of a library. The view reads from a private copy, so
-- nothing a policy does through it reaches the real library.
local function readonly(name, lib, hidden)
  local copy = {}
  for k, v in pairs(lib) do
    if not (hidden and hidden[k]) then
      copy[k] = v
    end
  end
  return setmetatable({}, {
    __index = copy,
    __newindex = function(_, k)
      error("the " .. name .. " library is read-only (cannot set " .. name .. "." .. tostring(k) .. ")", 2)
    end,
    __pairs = function()
      return next, copy, nil
    end,
    __len = function()
      return 0
    end,
    __metatable = false,
  })
end

-- Built once: the views hold no per-file state and cannot be changed.
local LIBS = {
  string = readonly("string", string, { dump = true }),
  math = readonly("math", math),
  table = readonly("table", table),
  utf8 = readonly("utf8", utf8),
}

-- Returns a fresh environment holding the safe basics and every entry of
-- `names` (the DSL functions), whose unknown names are errors.
function M.env(names)
  local env = {}
  for _, k in ipairs(BASICS) do
    env[k] = _G[k]
  end
  env.unpack = table.unpack
  for k, v in pairs(LIBS) do
    env[k] = v
  end
  local known = {}
  for k, v in pairs(names) do
    env[k] = v
  end
  for k in pairs(env) do
    known[#known + 1] = k
  end
  table.sort(known)
  return setmetatable(env, {
    __index = function(_, k)
      error("unknown name '" .. tostring(k) .. "'" .. suggest.hint(tostring(k), known), 2)
    end,
    __metatable = false,
  })
end

-- The source of each function seen by M.line: asked once per function, so that a
-- declaration costs a lookup per level rather than the source and short_src of each.
local source_of = setmetatable({}, { __mode = "k" })

-- Returns the current line of the innermost running function loaded from
-- `chunkname` ("@policies/10-tiers.lua") on `co` (or the running thread),
-- starting the search at `level`; nil when none runs.
function M.line(chunkname, co, level)
  level = level or 1
  while true do
    local info
    if co then
      info = debug.getinfo(co, level, "fl")
    else
      info = debug.getinfo(level + 1, "fl")
    end
    if not info then return nil end
    local source = source_of[info.func]
    if source == nil then
      source = debug.getinfo(info.func, "S").source
      source_of[info.func] = source
    end
    if source == chunkname and info.currentline and info.currentline > 0 then
      return info.currentline
    end
    level = level + 1
  end
end

-- Rewrites a Lua message "CHUNKID:LINE: text" so that it starts with the
-- whole path: Lua shortens long chunk names ("...cies/10-tiers.lua").
local function full_path(msg, path)
  local id, line, text = msg:match("^(.-):(%d+): (.*)$")
  if not id then return nil end
  if id == path then return msg end
  if id:sub(1, 3) == "..." and path:sub(-(#id - 3)) == id:sub(4) then
    return path .. ":" .. line .. ": " .. text
  end
  return nil
end

-- Resumes `co` once under an instruction budget with a debug hook; returns
-- what coroutine.resume does, then "instructions" when the budget ran out
-- and the line of `chunkname` that ran then.
local function resume_counted(co, chunkname, budget)
  local tripped, trip_line = nil, nil
  local function hook()
    if not tripped then
      tripped = "instructions"
      trip_line = M.line(chunkname, nil, 2)
      -- From now on every instruction fails, so a pcall in the policy can
      -- catch the error but never run past it.
      debug.sethook(co, hook, "", 1)
    end
    error("policy file exceeded its instruction budget", 0)
  end
  debug.sethook(co, hook, "", budget)
  local ok, e = coroutine.resume(co)
  debug.sethook(co)
  return ok, e, tripped, trip_line
end

-- Compiles and runs `source` as file `path` in `env`. Returns true, or nil
-- and one message "path:line: text". `budget` is the instruction budget
-- (default M.BUDGET); `ms`, when given, a time budget in milliseconds (in the
-- engine only).
function M.run(path, source, env, budget, ms)
  local chunkname = "@" .. path
  local fn, err = load(source, chunkname, "t", env)
  if not fn then
    return nil, full_path(err, path) or (path .. ":1: " .. tostring(err))
  end
  local co = coroutine.create(fn)
  local ok, e, tripped, trip_line
  if limits then
    ok, e, tripped, trip_line = limits.run(co, chunkname, budget or M.BUDGET, ms)
  else
    ok, e, tripped, trip_line = resume_counted(co, chunkname, budget or M.BUDGET)
  end
  local line = not ok and M.line(chunkname, co, 0)
  if tripped == "instructions" then
    return nil, path .. ":" .. (trip_line or line or 1) .. ": policy file exceeded its instruction budget"
  elseif tripped == "time" then
    return nil, path .. ":" .. (trip_line or line or 1) .. ": policy file exceeded its time budget ("
      .. tostring(ms) .. " ms)"
  end
  if ok then
    if coroutine.status(co) ~= "dead" then
      return nil, path .. ":1: policy file yielded"
    end
    return true
  end
  if type(e) == "string" then
    local msg = full_path(e, path)
    if msg then return nil, msg end
    return nil, path .. ":" .. (line or 1) .. ": " .. e
  end
  return nil, path .. ":" .. (line or 1) .. ": error object is a " .. type(e) .. " value"
end

-- Calls fn() so that it ends within `ms` milliseconds, time inside C
-- functions included. Returns true; or nil and "time" when it ran out of
-- time, or nil and the error it raised. Under plain Lua it only calls fn,
-- and errors go on up.
function M.within(ms, fn)
  if not limits then
    fn()
    return true
  end
  local ok, e, tripped = limits.run(coroutine.create(fn), nil, nil, ms)
  if tripped then
    return nil, tripped
  elseif not ok then
    return nil, e
  end
  return true
end

return M
