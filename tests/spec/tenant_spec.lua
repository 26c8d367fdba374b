-- tenant_spec.lua - tenant files: normalized overrides, error messages, isolation from the main set.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

-- The main set every tenant file of these specs is checked against.
local MAIN = [[
tier "free" { limit = 100, window = "1h" }
tier "pro" { limit = 1000, window = "1h", algorithm = "token_bucket", burst = 50 }
identity { user = header "X-User-Id", tenant = header "X-Tenant-Id" }
endpoint "GET /items?kind=a&sort=new" { body = "[]", cache = { ttl = "5m", key = "i:{tenant}:{user}" }, limit = "tier" }
endpoint "GET /reports/{name}" { body = "{}", limit = { "tier", { limit = 10, window = "1m", key = "rep:{user}" } } }
endpoint "POST /items" { body = "{}", limit = "tier" }
]]

local function main_file(src)
  return { path = "p/00-main.lua", source = src or MAIN }
end

local function tenant_file(name, src)
  return { path = "p/tenants/" .. name .. ".lua", source = src, tenant = name }
end

-- Loads MAIN and one tenant file "acme"; the set must load.
local function load_acme(src)
  local set, errs = dsl.load({ main_file(), tenant_file("acme", src) })
  assert(set, "the main set was rejected:\n" .. table.concat(errs or {}, "\n"))
  return set
end

-- The normalized tenant, which must load.
local function acme(src)
  local set = load_acme(src)
  assert(set.tenants[1], "acme did not load:\n" .. table.concat(set.tenant_errors.acme or {}, "\n"))
  assert.are.same({}, set.tenant_errors)
  return set.tenants[1]
end

-- acme must fail with exactly `expected` (one message or a list), the main set loading anyway.
local function fails(src, expected)
  if type(expected) == "string" then expected = { expected } end
  local set = load_acme(src)
  assert.are.same({}, set.tenants)
  assert.are.same({ acme = expected }, set.tenant_errors)
end

describe("tenant files", function()
  describe("normalize", function()
    it("tier overrides as whole rules, the main tier's fields kept", function()
      local t = acme('tier "free" { limit = 500 }\ntier "pro" { window = "1m", burst = 5 }')
      assert.are.same({
        { name = "free", limit = 500, window_ms = 3600000, algorithm = "sliding_window", mode = "enforce", file = "p/tenants/acme.lua", line = 1 },
        { name = "pro", limit = 1000, window_ms = 60000, algorithm = "token_bucket", burst = 5, mode = "enforce", file = "p/tenants/acme.lua", line = 2 },
      }, t.tiers)
    end)

    it("a tier's mode, kept from the main tier unless the override sets it", function()
      local t = acme('tier "free" { mode = "shadow" }\ntier "pro" { limit = 5 }')
      assert.are.same({ "shadow", "enforce" }, { t.tiers[1].mode, t.tiers[2].mode })
      fails('\ntier "free" { mode = "dry-run" }',
        'p/tenants/acme.lua:2: tier "free": mode: unknown mode "dry-run" (use "enforce" or "shadow")')
    end)

    it("an endpoint override's limit in shadow mode", function()
      local t = acme([[
endpoint "GET /reports/{name}" {
  limit = { "tier", { limit = 5, window = "1m", key = "t:{user}", mode = "shadow" } },
}
]])
      assert.are.equal("shadow", t.endpoints[1].limits[2].mode)
      fails('endpoint "GET /reports/{name}" { limit = { limit = 5, window = "1m", mode = "shadows" } }',
        'p/tenants/acme.lua:1: endpoint "GET /reports/{name}": limit.mode: unknown mode "shadows"'
          .. " (did you mean 'shadow'?) (use \"enforce\" or \"shadow\")")
    end)

    it("a new algorithm, which drops the main tier's burst", function()
      local t = acme('tier "pro" { algorithm = "sliding_log" }')
      assert.are.same({
        { name = "pro", limit = 1000, window_ms = 3600000, algorithm = "sliding_log", mode = "enforce", file = "p/tenants/acme.lua", line = 1 },
      }, t.tiers)
    end)

    it("endpoint overrides of cache.ttl and limit, by the main endpoint's index", function()
      local t = acme([[
endpoint "GET /items?sort=new&kind=a" { cache = { ttl = "1m" } }
endpoint "GET /reports/{name}" {
  limit = { "tier", { limit = 5, window = "1m", key = "t:{user}:{path.name}" } },
}
]])
      assert.are.same({
        { name = "GET /items?kind=a&sort=new", index = 1, file = "p/tenants/acme.lua", line = 1, ttl_ms = 60000 },
        {
          name = "GET /reports/{name}", index = 2, file = "p/tenants/acme.lua", line = 2,
          limits = {
            { tier = true },
            {
              name = "t", limit = 5, window_ms = 60000, algorithm = "sliding_window", cost = 1,
              fail = "open", mode = "enforce", key = "t:{user}:{path.name}",
            },
          },
        },
      }, t.endpoints)
    end)

    it("overrides of 1,000 endpoints among 10,000, each by its own index", function()
      local main, mine = { MAIN }, {}
      for i = 1, 10000 do
        main[#main + 1] = ('endpoint "GET /r%d/{id}?v=%d&w=x" { body = "{}", limit = "tier" }'):format(i, i % 3)
      end
      for i = 10, 10000, 10 do -- pins in the other order
        mine[#mine + 1] = ('endpoint "GET /r%d/{id}?w=x&v=%d" { limit = { limit = %d, window = "1m" } }')
          :format(i, i % 3, i)
      end
      local set, errs = dsl.load({ main_file(table.concat(main, "\n")),
        tenant_file("acme", table.concat(mine, "\n")) })
      assert(set, table.concat(errs or {}, "\n"))
      assert.are.same({}, set.tenant_errors)
      local t = set.tenants[1]
      assert.are.equal(1000, #t.endpoints)
      for j, o in ipairs(t.endpoints) do
        local i = j * 10
        assert.are.equal(3 + i, o.index) -- after MAIN's three endpoints
        assert.are.equal(set.endpoints[o.index].name, o.name)
        assert.are.equal(i, o.limits[1].limit)
      end
    end)

    it("hooks by name and line, and keeps the source", function()
      local src = [[
hook "a" { adjust = function(req, d) d.cost = 2 end }

hook("b", { when = function(req) return true end, adjust = function(req, d) end })
]]
      local t = acme(src)
      assert.are.same({ { name = "a", line = 1 }, { name = "b", line = 3 } }, t.hooks)
      assert.are.same({ name = "acme", file = "p/tenants/acme.lua", source = src }, {
        name = t.name, file = t.file, source = t.source,
      })
      assert.is_nil(t.last_good)
    end)

    it("an empty file as a tenant with no overrides", function()
      assert.are.same({ name = "acme", file = "p/tenants/acme.lua", source = "", tiers = {}, endpoints = {}, hooks = {} },
        acme(""))
    end)

    it("tenants in file order, each on its own", function()
      local set = dsl.load({
        main_file(),
        tenant_file("acme", 'tier "free" { limit = 1 }'),
        tenant_file("beta", 'tier "free" { limit = 2 }'),
      })
      assert.are.same({ "acme", "beta" }, { set.tenants[1].name, set.tenants[2].name })
      assert.are.same({ 1, 2 }, { set.tenants[1].tiers[1].limit, set.tenants[2].tiers[1].limit })
    end)
  end)

  describe("reports, with the line", function()
    it("a tier the main set does not declare", function()
      fails('\ntier "fre" { limit = 5 }',
        'p/tenants/acme.lua:2: tier "fre": is not a tier of the main policy set (did you mean "free"?);'
          .. " a tenant file can only change the tiers the main set declares")
    end)

    it("a tier that changes nothing, or with bad fields", function()
      fails('tier "free" {}', 'p/tenants/acme.lua:1: tier "free": changes nothing; set limit, window, algorithm, burst or mode')
      fails('\n\ntier "free" { limit = 0 }',
        'p/tenants/acme.lua:3: tier "free": limit: expected a positive whole number, got number 0')
      fails('tier "free" { limt = 5 }', {
        "p/tenants/acme.lua:1: tier \"free\": unknown field 'limt' (did you mean 'limit'?)",
      })
      fails('tier "free" { window = "soon" }',
        'p/tenants/acme.lua:1: tier "free": window: bad duration "soon" (use e.g. "30s", "5m", "1h")')
      fails('tier "free" { burst = 5 }',
        'p/tenants/acme.lua:1: tier "free": burst: only applies to algorithm = "token_bucket"')
    end)

    it("the same tier twice", function()
      fails('tier "free" { limit = 5 }\ntier "free" { limit = 6 }',
        'p/tenants/acme.lua:2: tier "free": is already declared at p/tenants/acme.lua:1')
    end)

    it("an endpoint the main set does not declare", function()
      fails('endpoint "GET /itemz?kind=a&sort=new" { cache = { ttl = "1m" } }',
        'p/tenants/acme.lua:1: endpoint "GET /itemz?kind=a&sort=new": is not an endpoint of the main policy set'
          .. ' (did you mean "GET /items?kind=a&sort=new"?)')
      fails('endpoint "FETCH /items" { cache = { ttl = "1m" } }',
        'p/tenants/acme.lua:1: endpoint "FETCH /items": unknown method "FETCH" (use GET, HEAD, POST, PUT, PATCH,'
          .. ' DELETE, OPTIONS, or * for any method)')
    end)

    it("fields of an endpoint a tenant cannot change", function()
      fails('endpoint "POST /items" { body = "x", limit = "tier" }',
        'p/tenants/acme.lua:1: endpoint "POST /items": body: cannot be changed here: a tenant file may change only'
          .. " cache.ttl and limit of an endpoint")
      fails('endpoint "POST /items" { limits = "tier" }',
        "p/tenants/acme.lua:1: endpoint \"POST /items\": limits: unknown field 'limits' (did you mean 'limit'?)"
          .. " (a tenant file may change only cache.ttl and limit of an endpoint)")
      fails('endpoint "GET /reports/{name}" {}',
        'p/tenants/acme.lua:1: endpoint "GET /reports/{name}": changes nothing; set cache = { ttl = "..." } or limit')
    end)

    it("cache fields other than ttl, and a ttl for an endpoint that is not cached", function()
      fails('endpoint "GET /items?kind=a&sort=new" { cache = { ttl = "1m", key = "x:{user}" } }',
        'p/tenants/acme.lua:1: endpoint "GET /items?kind=a&sort=new": cache.key: cannot be changed here:'
          .. " a tenant file may change only cache.ttl")
      fails('endpoint "GET /items?kind=a&sort=new" { cache = {} }',
        'p/tenants/acme.lua:1: endpoint "GET /items?kind=a&sort=new": cache.ttl is required (e.g. ttl = "1m")')
      fails('endpoint "GET /reports/{name}" { cache = { ttl = "1m" } }',
        'p/tenants/acme.lua:1: endpoint "GET /reports/{name}": cache: the endpoint is not cached in the main'
          .. " policy set; a tenant file can only change the ttl of a cached endpoint")
    end)

    it("limits, checked as in the main set", function()
      fails('endpoint "GET /reports/{name}" { limit = { limit = 5, window = "1m", key = "r:{path.id}" } }',
        'p/tenants/acme.lua:1: endpoint "GET /reports/{name}": limit.key "r:{path.id}": {path.id}: the route'
          .. " has no {id} parameter")
      fails('endpoint "POST /items" { limit = { limit = 5, window = "1m", key = "free:{user}" } }',
        'p/tenants/acme.lua:1: endpoint "POST /items": limit: name "free" is also a tier\'s name;'
          .. " RateLimit headers could not tell them apart")
      fails('endpoint "POST /items" { limit = "tear" }',
        'p/tenants/acme.lua:1: endpoint "POST /items": limit: expected "tier" (the caller\'s tier) or a table'
          .. ' { limit = 10, window = "1m" }, got "tear"')
    end)

    it("more than 8 limits in an endpoint override", function()
      local function limits(n)
        local items = {}
        for i = 1, n do
          items[i] = '{ limit = 10, window = "1m", key = "a' .. i .. ':{user}" }'
        end
        return "{ " .. table.concat(items, ", ") .. " }"
      end
      fails('\nendpoint "GET /reports/{name}" { limit = ' .. limits(9) .. " }",
        'p/tenants/acme.lua:2: endpoint "GET /reports/{name}": limit: lists 9 limits; an endpoint may have at most 8')
      assert.are.equal(8, #acme('endpoint "GET /reports/{name}" { limit = ' .. limits(8) .. " }").endpoints[1].limits)
    end)

    it("hooks without adjust, with fields that are not functions, or twice", function()
      fails('hook "h" { when = function() return true end }',
        'p/tenants/acme.lua:1: hook "h": adjust is required (adjust = function(req, decision) ... end)')
      fails('hook "h" { adjust = "deny" }',
        'p/tenants/acme.lua:1: hook "h": adjust: expected a function(req, decision), got string "deny"')
      fails('hook "h" { when = true, adjust = function() end }',
        'p/tenants/acme.lua:1: hook "h": when: expected a function(req) that returns true for the requests to'
          .. " adjust, got boolean true")
      fails('hook "h" { adjust = function() end, wehn = 1 }',
        "p/tenants/acme.lua:1: hook \"h\": unknown field 'wehn' (did you mean 'when'?)")
      fails('hook "a b" { adjust = function() end }',
        "p/tenants/acme.lua:1: hook \"a b\": hook name \"a b\" may use only letters, digits, '_' and '-'")
      fails('hook "h" { adjust = function() end }\n\nhook "h" { adjust = function() end }',
        'p/tenants/acme.lua:3: hook "h": is already declared at p/tenants/acme.lua:1')
      fails('hook "h"',
        'p/tenants/acme.lua:1: hook "h": expected { ... } after the name, as in'
          .. ' hook "name" { when = function(req) ... end, adjust = function(req, decision) ... end }')
    end)

    it("what only the main set may declare", function()
      local tail = " cannot be used in a tenant file, which holds tier, endpoint and hook declarations;"
        .. " put it in the main policy files"
      fails('identity { user = "x" }', "p/tenants/acme.lua:1: identity" .. tail)
      fails('\nupstream "u" { url = "http://x" }', "p/tenants/acme.lua:2: upstream" .. tail)
      fails('on_change "t" { invalidate = { "x" } }', "p/tenants/acme.lua:1: on_change" .. tail)
      fails('local h = header "X"', "p/tenants/acme.lua:1: header" .. tail)
      fails('local s = sql("SELECT 1")', "p/tenants/acme.lua:1: sql" .. tail)
    end)

    it("Lua errors, unknown names and the load budget", function()
      fails('tier "free" {\n limit = 5', "p/tenants/acme.lua:2: '}' expected (to close '{' at line 1) near <eof>")
      fails('\nlocal x = nil + 1', "p/tenants/acme.lua:2: attempt to perform arithmetic on a nil value")
      fails('\nos.exit(1)', "p/tenants/acme.lua:2: unknown name 'os'")
      fails("while true do end", "p/tenants/acme.lua:1: policy file exceeded its instruction budget")
    end)

    it("a tenant name that is not a file-name word, or a main set without a tenant header", function()
      local set = dsl.load({ main_file(), tenant_file("a b", "") })
      assert.are.same({ ["a b"] = {
        "p/tenants/a b.lua:1: tenant name \"a b\" (the file's name) may use only letters, digits, '_', '-' and '.'",
      } }, set.tenant_errors)
      set = dsl.load({ main_file('tier "free" { limit = 1, window = "1h" }\nidentity { user = header "U" }'),
        tenant_file("acme", "") })
      assert.are.same({ acme = {
        'p/tenants/acme.lua:1: a tenant file needs an identity block in the main policy set that declares'
          .. ' tenant = header "X-Tenant-Id"',
      } }, set.tenant_errors)
    end)

    it("every error of a file, in line order", function()
      fails('tier "free" { limit = 0 }\ntier "gold" { limit = 1 }\nhook "h" {}', {
        'p/tenants/acme.lua:1: tier "free": limit: expected a positive whole number, got number 0',
        'p/tenants/acme.lua:2: tier "gold": is not a tier of the main policy set; a tenant file can only'
          .. " change the tiers the main set declares",
        'p/tenants/acme.lua:3: hook "h": adjust is required (adjust = function(req, decision) ... end)',
      })
    end)

    it("at most 20 messages, each cut at 400 bytes between characters", function()
      local set = load_acme('for i = 1, 30 do tier("g" .. i) { limit = 1 } end\n'
        .. 'tier(("\u{e9}"):rep(300)) { limit = 1 }')
      local errs = set.tenant_errors.acme
      assert.are.equal(21, #errs)
      assert.are.equal('p/tenants/acme.lua:1: tier "g1": is not a tier of the main policy set; a tenant'
        .. " file can only change the tiers the main set declares", errs[1])
      assert.are.equal("p/tenants/acme.lua:1: 11 more messages left out", errs[21])
      local set2 = load_acme('tier("x" .. ("\u{e9}"):rep(300)) { limit = 1 }')
      local long = set2.tenant_errors.acme[1]
      assert.are.equal(402, #long) -- byte 400 starts an é: cut before it, then "..."
      assert.are.equal('p/tenants/acme.lua:1: tier "', long:sub(1, 28))
      assert.are.equal("\u{e9}...", long:sub(-5))
    end)
  end)

  describe("isolation", function()
    it("a broken tenant file rejects neither the main set nor another tenant", function()
      local set, errs = dsl.load({
        main_file(),
        tenant_file("acme", 'tier "free" { limit = "lots" }'),
        tenant_file("beta", 'tier "free" { limit = 7 }'),
      })
      assert.is_nil(errs)
      assert.are.equal(3, #set.endpoints)
      assert.are.equal(100, set.tiers[1].limit)
      assert.are.equal(1, #set.tenants)
      assert.are.equal("beta", set.tenants[1].name)
      assert.are.equal(7, set.tenants[1].tiers[1].limit)
      assert.are.same({ acme = {
        'p/tenants/acme.lua:1: tier "free": limit: expected a positive whole number, got string "lots"',
      } }, set.tenant_errors)
      assert.are.same({ { path = "p/00-main.lua" } }, set.files)
    end)

    it("a tenant file's globals stay its own", function()
      local set = dsl.load({
        main_file(),
        tenant_file("acme", "shared = 5"),
        tenant_file("beta", 'tier "free" { limit = shared }'),
      })
      assert.are.same({ beta = { "p/tenants/beta.lua:1: unknown name 'shared'" } }, set.tenant_errors)
    end)

    it("when the main set fails, its errors and then the tenant files' errors", function()
      local set, errs = dsl.load({
        main_file('tier "free" { limit = 0, window = "1h" }\nidentity { tenant = header "T" }'),
        tenant_file("acme", 'tier "free" { limit = 5 }\nhook "h" {}'),
      })
      assert.is_nil(set)
      assert.are.same({
        'p/00-main.lua:1: tier "free": limit: expected a positive whole number, got number 0',
        'p/tenants/acme.lua:2: hook "h": adjust is required (adjust = function(req, decision) ... end)',
      }, errs)
    end)
  end)

  describe("last good version", function()
    local GOOD = 'tier "free" { limit = 500 }'

    it("keeps a broken tenant on the version that last loaded", function()
      local set = dsl.load({ main_file(), tenant_file("acme", 'tier "free" { limit = -1 }') },
        { last_good = { acme = { path = "p/tenants/acme.lua", source = GOOD } } })
      assert.are.equal(1, #set.tenants)
      assert.is_true(set.tenants[1].last_good)
      assert.are.equal(GOOD, set.tenants[1].source)
      assert.are.equal(500, set.tenants[1].tiers[1].limit)
      assert.are.same({ acme = {
        'p/tenants/acme.lua:1: tier "free": limit: expected a positive whole number, got number -1',
      } }, set.tenant_errors)
    end)

    it("uses a fixed file rather than the last good version", function()
      local set = dsl.load({ main_file(), tenant_file("acme", 'tier "free" { limit = 600 }') },
        { last_good = { acme = { path = "p/tenants/acme.lua", source = GOOD } } })
      assert.is_nil(set.tenants[1].last_good)
      assert.are.equal(600, set.tenants[1].tiers[1].limit)
    end)

    it("drops a last good version that no longer fits the main set", function()
      local set = dsl.load({
        main_file('tier "pro" { limit = 1, window = "1h" }\nidentity { tenant = header "T" }'),
        tenant_file("acme", "tier 'free' {"),
      }, { last_good = { acme = { path = "p/tenants/acme.lua", source = GOOD } } })
      assert.are.same({}, set.tenants)
      assert.are.equal(2, #set.tenant_errors.acme)
      assert.are.equal('p/tenants/acme.lua:1: the last version of tenant "acme" that loaded does not load against'
        .. ' this policy set either (p/tenants/acme.lua:1: tier "free": is not a tier of the main policy set;'
        .. ' a tenant file can only change the tiers the main set declares); the tenant has no overrides',
        set.tenant_errors.acme[2])
    end)

    it("forgets a tenant whose file is gone", function()
      local set = dsl.load({ main_file() }, { last_good = { acme = { path = "p/tenants/acme.lua", source = GOOD } } })
      assert.are.same({}, set.tenants)
      assert.are.same({}, set.tenant_errors)
    end)
  end)

  describe("tenant_hooks", function()
    it("collects the hook functions of a tenant file", function()
      local hooks = assert(dsl.tenant_hooks("t.lua", [[
tier "free" { limit = 5 }
hook "a" { when = function(req) return req.x end, adjust = function(req, d) d.cost = 3 end }
hook("b", { adjust = function(req, d) d.cost = d.cost + 1 end })
]]))
      assert.are.same({ "a", "b" }, { hooks[1].name, hooks[2].name })
      assert.is_nil(hooks[2].when)
      local d = { cost = 1 }
      assert.is_true(hooks[1].when({ x = true }))
      hooks[1].adjust({}, d)
      hooks[2].adjust({}, d)
      assert.are.equal(4, d.cost)
    end)
  end)
end)
