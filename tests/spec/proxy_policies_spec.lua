-- proxy_policies_spec.lua - the facts examples/proxy/policies promises.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local DIR = "examples/proxy/policies"

local function index(list, field)
  local by = {}
  for _, v in ipairs(list) do
    by[v[field]] = v
  end
  return by
end

describe("examples/proxy/policies", function()
  local set, endpoints

  setup(function()
    local errs
    set, errs = dsl.load_dir(DIR)
    assert(set, DIR .. " does not load:\n" .. table.concat(errs or {}, "\n"))
    endpoints = index(set.endpoints, "name")
  end)

  it("forwards every endpoint to the app on 127.0.0.1:3000", function()
    assert.are.same(1, #set.upstreams)
    local up = set.upstreams[1]
    assert.are.same({ "app", "127.0.0.1", 3000, 5000, 1000 },
      { up.name, up.host, up.port, up.timeout_ms, up.connect_timeout_ms })
    for _, e in ipairs(set.endpoints) do
      assert.are.same("upstream", e.source, e.name)
      assert.are.same("app", e.upstream, e.name)
    end
  end)

  it("caches each read per user for the TTL of the motivating app", function()
    local want = {
      ["GET /api/crm?type=contacts"] = 300000, ["GET /api/crm?type=projects"] = 300000,
      ["GET /api/crm?type=deals"] = 300000, ["GET /api/crm?type=interactions"] = 300000,
      ["GET /api/dashboard"] = 180000, ["GET /api/dashboard/messages"] = 60000,
      ["GET /api/dashboard/agents"] = 300000, ["GET /api/dashboard/events"] = 300000,
    }
    for name, ttl in pairs(want) do
      local e = endpoints[name]
      assert.is_table(e, name)
      assert.are.same(ttl, e.cache.ttl_ms, name)
      assert.is_truthy(e.cache.key:find("{user}", 1, true), name)
      assert.are.same({ "tier" }, { e.limits[1].tier and "tier" }, name)
    end
  end)

  it("serves the dashboard stale while it refreshes and when the app fails", function()
    for _, name in ipairs({ "GET /api/dashboard", "GET /api/dashboard/messages",
                            "GET /api/dashboard/agents", "GET /api/dashboard/events" }) do
      local c = endpoints[name].cache
      assert.are.same({ 30000, 600000 }, { c.swr_ms, c.sie_ms }, name)
      assert.is_string(c.warm.sql, name)
    end
  end)

  it("warms users 1 to 4 on the CRM lists", function()
    local c = endpoints["GET /api/crm?type=contacts"].cache
    assert.are.same({ { user = "1" }, { user = "2" }, { user = "3" }, { user = "4" } }, c.warm.callers)
  end)

  it("drops the caller's CRM lists and dashboard after each write", function()
    local n = 0
    for _, e in ipairs(set.endpoints) do
      if e.method ~= "GET" then
        n = n + 1
        assert.are.same({ "crm:{user}", "dash:{user}" }, e.invalidate, e.name)
      end
    end
    assert.are.same(12, n)
  end)

  it("limits the pipeline report to 10 a minute on top of the tier", function()
    local l = endpoints["GET /api/reports/pipeline"].limits
    assert.is_true(l[1].tier)
    assert.are.same({ 10, 60000, "sliding_log", "expensive:{user}" },
      { l[2].limit, l[2].window_ms, l[2].algorithm, l[2].key })
  end)
end)
