-- luals_meta_spec.lua - lua/sluice/meta/sluice.lua, the LuaLS annotations of the policy
-- language, names every global the sandbox gives a policy or tenant file (beside Lua's own)
-- and every field the validator accepts.
package.path = "lua/?.lua;" .. package.path

local sandbox = require "sluice.sandbox"
local dsl = require "sluice.dsl"

local META = "lua/sluice/meta/sluice.lua"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The annotated globals (function NAME(...) and NAME = ... at the start of a line) and the
-- fields of each ---@class.
local function annotations()
  local text = read(META)
  local globals, classes, current = {}, {}, nil
  for line in text:gmatch("[^\n]*") do
    local fn = line:match("^function ([%a_][%w_]*)%(")
    local var = line:match("^([%a_][%w_]*) = ")
    if fn or var then globals[fn or var] = true end
    local class = line:match("^%-%-%-@class ([%w_.]+)")
    if class then
      current = {}
      classes[class] = current
    elseif current then
      local field = line:match("^%-%-%-@field ([%a_][%w_]*)%??%s")
      if field then
        current[field] = true
      elseif not line:match("^%-%-%-@") then
        current = nil
      end
    end
  end
  return globals, classes
end

-- Every name the sandbox gives the files of a main set with one tenant file, as the loader
-- builds their environments.
local function sandbox_names()
  local names, env = {}, sandbox.env
  sandbox.env = function(fns)
    local e = env(fns)
    for k in next, e do names[k] = true end
    return e
  end
  local ok, err = pcall(dsl.load, {
    { path = "p/00.lua", source = 'tier "free" { limit = 1, window = "1h" }' },
    { path = "p/tenants/acme.lua", source = "", tenant = "acme" },
  })
  sandbox.env = env
  assert(ok, err)
  return names
end

-- The field lists `local NAME = { "a", "b", ... }` of a module's source.
local function field_lists(path)
  local lists = {}
  for name, body in read(path):gmatch("\nlocal ([%u_]+) = (%b{})") do
    local fields = {}
    for f in body:gmatch('"([%w_]+)"') do fields[#fields + 1] = f end
    lists[name] = fields
  end
  return lists
end

describe("the LuaLS annotations", function()
  local globals, classes = annotations()

  it("are a Lua file that loads (and does nothing when run)", function()
    assert.is_function(loadfile(META, "t", { table = table }))
  end)

  it("name every global the sandbox gives policy and tenant files beyond Lua's own", function()
    local names = sandbox_names()
    local dsl_names = 0
    for k in pairs(names) do
      if _G[k] == nil then
        assert(globals[k], "the sandbox gives '" .. k .. "', which " .. META .. " does not annotate")
      end
      if not _G[k] then dsl_names = dsl_names + 1 end
    end
    -- tier identity upstream endpoint on_change header sql hook unpack, at least.
    assert.is_true(dsl_names >= 9, "found only " .. dsl_names .. " DSL names: the capture broke")
    for _, k in ipairs({ "tier", "identity", "endpoint", "upstream", "on_change", "header", "sql",
                         "hook" }) do
      assert.is_true(names[k], k)
    end
  end)

  it("annotate every field the validator and the tenant checker accept", function()
    local want = {
      ["lua/sluice/validate.lua"] = {
        TIER_FIELDS = "sluice.Tier", UPSTREAM_FIELDS = "sluice.Upstream",
        IDENTITY_FIELDS = "sluice.Identity", HEADER_OPTIONS = "sluice.HeaderOptions",
        ENDPOINT_FIELDS = "sluice.Endpoint", CACHE_FIELDS = "sluice.Cache",
        WARM_FIELDS = "sluice.WarmCaller", LIMIT_FIELDS = "sluice.Limit",
        ON_CHANGE_FIELDS = "sluice.OnChange", COMPRESS_FIELDS = "sluice.Compress",
      },
      ["lua/sluice/tenant.lua"] = { HOOK_FIELDS = "sluice.Hook" },
    }
    for path, map in pairs(want) do
      local lists = field_lists(path)
      for list, class in pairs(map) do
        local fields = lists[list]
        assert(fields and #fields > 0, path .. " has no list " .. list .. " any more")
        assert(classes[class], META .. " has no class " .. class)
        for _, f in ipairs(fields) do
          assert(classes[class][f], class .. " lacks the field '" .. f .. "' (" .. list .. ")")
        end
      end
    end
  end)

  it("annotate what a hook reads: every field of req and decision docs/policies.md lists", function()
    for _, f in ipairs({ "method", "path", "query", "headers", "user", "tenant", "tier", "ip",
                         "endpoint" }) do
      assert(classes["sluice.Request"][f], "sluice.Request." .. f)
    end
    for _, f in ipairs({ "cost", "limits", "deny" }) do
      assert(classes["sluice.Decision"][f], "sluice.Decision." .. f)
    end
    for _, f in ipairs({ "name", "limit", "window", "algorithm", "mode" }) do
      assert(classes["sluice.DecisionLimit"][f], "sluice.DecisionLimit." .. f)
    end
  end)
end)
