-- crm_policies_spec.lua - the facts examples/crm/policies promises.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local DIR = "examples/crm/policies"

local function load_set()
  local set, errs = dsl.load_dir(DIR)
  assert(set, "examples/crm/policies does not load:\n" .. table.concat(errs or {}, "\n"))
  return set
end

local function index(list, field)
  local by = {}
  for _, v in ipairs(list) do
    by[v[field]] = v
  end
  return by
end

local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("a")
  f:close()
  return text
end

local WRITE = { POST = true, PUT = true, PATCH = true, DELETE = true }

describe("examples/crm/policies", function()
  local set, endpoints, tiers

  setup(function()
    set = load_set()
    endpoints = index(set.endpoints, "name")
    tiers = index(set.tiers, "name")
  end)

  it("loads in name order", function()
    local paths = {}
    for i, f in ipairs(set.files) do
      paths[i] = f.path
    end
    assert.are.same({
      DIR .. "/00-tiers.lua", DIR .. "/10-identity.lua", DIR .. "/20-crm.lua",
      DIR .. "/30-dashboard.lua", DIR .. "/40-expensive.lua", DIR .. "/50-changes.lua",
    }, paths)
  end)

  it("has the four plans, per hour", function()
    local got = {}
    for _, t in ipairs(set.tiers) do
      got[#got + 1] = { t.name, t.limit, t.window_ms, t.algorithm }
    end
    assert.are.same({
      { "free", 100, 3600000, "sliding_window" },
      { "starter", 1000, 3600000, "sliding_window" },
      { "professional", 10000, 3600000, "sliding_window" },
      { "enterprise", 100000, 3600000, "sliding_window" },
    }, got)
  end)

  it("names its tiers after the plans users.plan allows", function()
    local check = read("examples/crm/schema.sql"):match("plan%s+text[^\n]*\n%s*CHECK %(plan IN %(([^)]*)%)%)")
    assert.is_string(check)
    local plans = {}
    for p in check:gmatch("'([^']+)'") do
      plans[#plans + 1] = p
    end
    local names = {}
    for i, t in ipairs(set.tiers) do
      names[i] = t.name
    end
    assert.are.same(plans, names)
  end)

  it("identifies users by X-User-Id and reads their plan from users.plan for a minute", function()
    local id = set.identity
    assert.are.same({ header = "X-User-Id", integer = true }, id.user)
    assert.are.same({ header = "X-Tenant-Id" }, id.tenant)
    assert.matches("^SELECT plan FROM users WHERE id = %$1::bigint$", id.tier.sql)
    assert.are.same({ "{user}" }, id.tier.args)
    assert.are.equal(60000, id.tier_ttl_ms)
    assert.are.equal("free", id.default_tier)
  end)

  it("gives a free user 100 per hour on the CRM endpoints", function()
    local crm = 0
    for _, e in ipairs(set.endpoints) do
      if e.path:match("^/api/crm") then
        crm = crm + 1
        assert.are.same({ { tier = true } }, e.limits, e.name)
      end
    end
    assert.are.equal(16, crm)
    assert.are.equal(100, tiers[set.identity.default_tier].limit)
    assert.are.equal(100, tiers.free.limit)
    assert.are.equal(3600000, tiers.free.window_ms)
  end)

  it("lists 20 of the caller's newest rows of each CRM type, cached 5 minutes", function()
    for _, kind in ipairs({ "contacts", "projects", "deals", "interactions" }) do
      local e = endpoints["GET /api/crm?type=" .. kind]
      assert.is_table(e, kind)
      assert.are.same({ { name = "type", value = kind } }, e.pins)
      assert.are.same({
        ttl_ms = 300000, key = "crm:" .. kind .. ":{user}", tags = { "crm:{user}" }, shared = false,
      }, e.cache)
      assert.matches("FROM " .. kind .. "%s+WHERE owner_id = %$1::bigint", e.sql)
      assert.matches("LIMIT 20", e.sql)
      assert.are.same({ "{user}" }, e.args)
    end
  end)

  it("caches the dashboard 3 minutes, messages 1, agents and events 5", function()
    local want = {
      ["GET /api/dashboard"] = 180000,
      ["GET /api/dashboard/messages"] = 60000,
      ["GET /api/dashboard/agents"] = 300000,
      ["GET /api/dashboard/events"] = 300000,
    }
    for name, ttl in pairs(want) do
      local e = endpoints[name]
      assert.is_table(e, name)
      assert.are.equal(ttl, e.cache.ttl_ms, name)
      assert.are.same({ "dash:{user}" }, e.cache.tags, name)
      assert.are.same({ { tier = true } }, e.limits, name)
    end
    assert.is_true(endpoints["GET /api/dashboard"].one)
  end)

  it("has POST, PUT, PATCH and DELETE for contacts, projects and deals", function()
    for _, kind in ipairs({ "contacts", "projects", "deals" }) do
      assert.is_table(endpoints["POST /api/crm/" .. kind], kind)
      for _, m in ipairs({ "PUT", "PATCH", "DELETE" }) do
        assert.is_table(endpoints[m .. " /api/crm/" .. kind .. "/{id}"], m .. " " .. kind)
      end
    end
  end)

  it("makes every write invalidate crm:{user} and dash:{user}", function()
    local writes = 0
    for _, e in ipairs(set.endpoints) do
      if WRITE[e.method] then
        writes = writes + 1
        assert.are.same({ "crm:{user}", "dash:{user}" }, e.invalidate, e.name)
        assert.is_nil(e.cache, e.name)
      else
        assert.are.same({}, e.invalidate, e.name)
      end
    end
    assert.are.equal(12, writes)
  end)

  it("scopes every write to the caller's rows and answers the row written", function()
    for _, e in ipairs(set.endpoints) do
      if WRITE[e.method] then
        assert.are.equal("{user}", e.args[1], e.name)
        assert.matches("RETURNING %*", e.sql, nil, nil, e.name)
        assert.is_true(e.one, e.name)
        if e.method == "POST" then
          assert.matches("owner_id", e.sql, nil, nil, e.name)
        else
          assert.are.equal("{path.id}", e.args[2], e.name)
          assert.matches("WHERE id = %$2::bigint AND owner_id = %$1::bigint", e.sql, nil, nil, e.name)
        end
      end
    end
  end)

  it("checks that a deal's contact is the caller's own", function()
    for _, name in ipairs({ "POST /api/crm/deals", "PUT /api/crm/deals/{id}", "PATCH /api/crm/deals/{id}" }) do
      assert.matches("EXISTS %(SELECT 1 FROM contacts WHERE id = %$%d::bigint AND owner_id = %$1::bigint%)",
        endpoints[name].sql, nil, nil, name)
    end
  end)

  it("limits the pipeline report to 10 a minute on top of the tier", function()
    local e = endpoints["GET /api/reports/pipeline"]
    assert.are.same({
      { tier = true },
      { name = "expensive", limit = 10, window_ms = 60000, key = "expensive:{user}",
        algorithm = "sliding_log", cost = 1, fail = "open", mode = "enforce" },
    }, e.limits)
    assert.are.same({ "crm:{user}" }, e.cache.tags)
  end)

  it("keeps every cached answer private to its user", function()
    local cached = 0
    for _, e in ipairs(set.endpoints) do
      if e.cache then
        cached = cached + 1
        assert.is_false(e.cache.shared, e.name)
        assert.truthy(e.cache.key:find("{user}", 1, true), e.name)
        assert.are.same({ "{user}" }, e.args, e.name)
      end
    end
    assert.are.equal(9, cached)
  end)

  it("reads only the caller's rows", function()
    for _, e in ipairs(set.endpoints) do
      assert.are.equal("sql", e.source, e.name)
      assert.are.equal("{user}", e.args[1], e.name)
      if e.method == "GET" then
        assert.matches("WHERE owner_id = %$1::bigint", e.sql, nil, nil, e.name)
      end
    end
  end)

  it("drops on database changes the same tags the endpoints carry", function()
    local endpoint_tags = {}
    for _, e in ipairs(set.endpoints) do
      for _, t in ipairs(e.cache and e.cache.tags or {}) do
        endpoint_tags[t] = true
      end
    end
    local tables = {}
    for _, c in ipairs(set.on_change) do
      tables[#tables + 1] = c.table
      for _, t in ipairs(c.invalidate) do
        local as_request = t:gsub("{row%.owner_id}", "{user}")
        assert.is_true(endpoint_tags[as_request] or false, c.table .. ": " .. t)
      end
    end
    table.sort(tables)
    assert.are.same({ "agents", "contacts", "deals", "events", "interactions", "messages", "projects" }, tables)
  end)

  it("queries only tables and columns of schema.sql", function()
    local schema = read("examples/crm/schema.sql")
    local columns = {}
    for tbl, body in schema:gmatch("CREATE TABLE (%w+) (%b())") do
      columns[tbl] = {}
      for line in body:gmatch("[^\n]+") do
        local col = line:match("^%s+([%a_]+)%s+%a")
        if col and col ~= "CHECK" then
          columns[tbl][col] = true
        end
      end
    end
    for _, e in ipairs(set.endpoints) do
      local ctes = {}
      for name in e.sql:gmatch("WITH (%a+) AS") do
        ctes[name] = true
      end
      for tbl in e.sql:gmatch("FROM (%a+)") do
        assert.is_true(columns[tbl] ~= nil or ctes[tbl] or false, e.name .. ": table " .. tbl)
      end
      local tbl = e.sql:match("INSERT INTO (%a+)") or e.sql:match("UPDATE (%a+)")
      if tbl then
        assert.is_table(columns[tbl], e.name)
        local list = e.sql:match("INSERT INTO %a+ %(([^)]*)%)")
        for col in (list or ""):gmatch("[%a_]+") do
          assert.is_true(columns[tbl][col] or false, e.name .. ": " .. tbl .. "." .. col)
        end
        for col in (e.sql:match("SET(.-)WHERE") or ""):gmatch("([%a_]+)%s*=") do
          assert.is_true(columns[tbl][col] or false, e.name .. ": " .. tbl .. "." .. col)
        end
      end
    end
  end)
end)
