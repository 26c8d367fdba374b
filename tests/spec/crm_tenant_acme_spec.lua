-- crm_tenant_acme_spec.lua - the facts examples/crm/policies/tenants/acme.lua promises.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local DIR = "examples/crm/policies"
local FILE = DIR .. "/tenants/acme.lua"

local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("a")
  f:close()
  return text
end

-- A read-only request as hooks see it.
local function request(t)
  local r = { method = "GET", path = "/", query = {}, headers = {}, user = "1", tenant = "acme", tier = "free",
    ip = "127.0.0.1", endpoint = "GET /" }
  for k, v in pairs(t) do
    r[k] = v
  end
  return setmetatable({}, { __index = r, __newindex = function() error("req is read-only") end })
end

-- Runs the hooks as the engine does: each whose when(req) is true adjusts the decision.
local function decide(hooks, req)
  local d = { cost = 1, limits = { { name = "free", limit = 500, window = 3600, algorithm = "sliding_window" } } }
  for _, h in ipairs(hooks) do
    if not h.when or h.when(req) then
      h.adjust(req, d)
      if d.deny then break end
    end
  end
  return d
end

describe("examples/crm/policies/tenants/acme.lua", function()
  local set, acme, hooks

  setup(function()
    local errs
    set, errs = dsl.load_dir(DIR)
    assert(set, table.concat(errs or {}, "\n"))
    assert.are.same({}, set.tenant_errors)
    acme = set.tenants[1]
    hooks = assert(dsl.tenant_hooks(FILE, read(FILE)))
  end)

  it("is the only tenant, and loads with the main set", function()
    assert.are.equal(1, #set.tenants)
    assert.are.equal("acme", acme.name)
    assert.are.equal(FILE, acme.file)
    assert.is_nil(acme.last_good)
  end)

  it("gives acme's free users 500 requests an hour", function()
    assert.are.same({
      { name = "free", limit = 500, window_ms = 3600000, algorithm = "sliding_window", mode = "enforce", file = FILE, line = 11 },
    }, acme.tiers)
  end)

  it("caches acme's contact list for one minute, changing nothing else", function()
    assert.are.same({
      { name = "GET /api/crm?type=contacts", index = 1, file = FILE, line = 17, ttl_ms = 60000 },
    }, acme.endpoints)
    assert.are.equal("GET /api/crm?type=contacts", set.endpoints[1].name)
    assert.are.equal(300000, set.endpoints[1].cache.ttl_ms)
  end)

  it("declares two hooks", function()
    assert.are.same({ { name = "reports_cost_more", line = 30 }, { name = "read_only_integrations", line = 42 } },
      acme.hooks)
    assert.are.same({ "reports_cost_more", "read_only_integrations" }, { hooks[1].name, hooks[2].name })
  end)

  it("counts a report as 5 requests", function()
    local d = decide(hooks, request({ path = "/api/reports/pipeline", endpoint = "GET /api/reports/pipeline" }))
    assert.are.equal(5, d.cost)
    assert.is_nil(d.deny)
    assert.are.equal(1, decide(hooks, request({ path = "/api/crm" })).cost)
  end)

  it("refuses every write of a read-only integration with 403, and lets it read", function()
    local h = { ["x-acme-access"] = "read-only" }
    for _, m in ipairs({ "POST", "PUT", "PATCH", "DELETE" }) do
      local d = decide(hooks, request({ method = m, path = "/api/crm/contacts/7", headers = h }))
      assert.are.same({ status = 403, message = "acme read-only integrations cannot write" }, d.deny, m)
    end
    assert.is_nil(decide(hooks, request({ method = "GET", path = "/api/crm", headers = h })).deny)
    assert.is_nil(decide(hooks, request({ method = "DELETE", path = "/api/crm/contacts/7" })).deny)
  end)
end)
