-- dsl_spec.lua - the policy language: normalized forms, error messages, sandbox.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"
local duration = require "sluice.duration"

-- Declarations most endpoint specs need, in a file of their own so that the
-- line numbers of the file under test start at 1.
local PRELUDE = [[
tier "free" { limit = 100, window = "1h" }
identity { user = header "X-User-Id", tenant = header "X-Tenant-Id" }
upstream "app" { url = "http://127.0.0.1:3000" }
]]

local function load_one(src, opts)
  return dsl.load({ { path = "t.lua", source = src } }, opts)
end

local function load_with_prelude(src)
  return dsl.load({ { path = "00.lua", source = PRELUDE }, { path = "t.lua", source = src } })
end

local function must_load(set, errs)
  assert(set, "expected the set to load, got:\n" .. table.concat(errs or {}, "\n"))
  assert.is_nil(errs)
  return set
end

-- The set of one file, which must load.
local function set_of(src)
  return must_load(load_one(src))
end

-- The endpoint of a file loaded after PRELUDE, which must load.
local function endpoint_of(src)
  return must_load(load_with_prelude(src)).endpoints[1]
end

-- item(1), ..., item(n), joined with ", ".
local function joined(n, item)
  local items = {}
  for i = 1, n do
    items[i] = item(i)
  end
  return table.concat(items, ", ")
end

-- Policy text for a list of n items: { item(1), ..., item(n) }.
local function list_of(n, item)
  return "{ " .. joined(n, item) .. " }"
end

-- Loads and returns the errors, which must be there.
local function errors_of(set, errs)
  assert.is_nil(set)
  assert.is_table(errs)
  return errs
end

-- The file alone must fail with exactly `expected` (one message or a list).
local function fails(src, expected)
  if type(expected) == "string" then expected = { expected } end
  assert.are.same(expected, errors_of(load_one(src)))
end

-- The file after PRELUDE must fail with exactly `expected`.
local function fails_after_prelude(src, expected)
  if type(expected) == "string" then expected = { expected } end
  assert.are.same(expected, errors_of(load_with_prelude(src)))
end

describe("sluice.dsl", function()
  describe("normalizes", function()
    it("tiers, in declaration order, with the default algorithm", function()
      local set = set_of([[
tier "free" { limit = 100, window = "1h" }
tier "burst" { limit = 10, window = "1s", algorithm = "token_bucket", burst = 50 }
tier "exact" { limit = 5, window = 60, algorithm = "sliding_log" }
]])
      assert.are.same({
        { name = "free", limit = 100, window_ms = 3600000, algorithm = "sliding_window", mode = "enforce", file = "t.lua", line = 1 },
        { name = "burst", limit = 10, window_ms = 1000, algorithm = "token_bucket", burst = 50, mode = "enforce", file = "t.lua", line = 2 },
        { name = "exact", limit = 5, window_ms = 60000, algorithm = "sliding_log", mode = "enforce", file = "t.lua", line = 3 },
      }, set.tiers)
      assert.are.same({ { path = "t.lua" } }, set.files)
      assert.are.same({}, set.endpoints)
      assert.are.same({}, set.upstreams)
      assert.are.same({}, set.on_change)
      assert.is_nil(set.identity)
    end)

    it("the call form tier(name, fields) like tier name { fields }", function()
      local set = set_of([[tier("free", { limit = 1, window = "1m" })]])
      assert.are.same({ name = "free", limit = 1, window_ms = 60000, algorithm = "sliding_window", mode = "enforce", file = "t.lua", line = 1 },
        set.tiers[1])
    end)

    it("an identity block with a tier looked up by SQL", function()
      local set = set_of([[
tier "free" { limit = 100, window = "1h" }
tier "pro" { limit = 1000, window = "1h" }

identity {
  user    = header "X-User-Id",
  tenant  = header "X-Tenant-Id",
  tier    = sql("SELECT plan FROM users WHERE id = $1", "{user}"),
  tier_ttl = "2m",
  default_tier = "pro",
}
]])
      assert.are.same({
        user = { header = "X-User-Id" },
        tenant = { header = "X-Tenant-Id" },
        tier = { sql = "SELECT plan FROM users WHERE id = $1", args = { "{user}" } },
        tier_ttl_ms = 120000,
        default_tier = "pro",
        file = "t.lua",
        line = 4,
      }, set.identity)
    end)

    it("an identity block with a tier header, the default tier_ttl and the first tier as default", function()
      local set = set_of([[
tier "free" { limit = 100, window = "1h" }
identity { user = header "X-User-Id", tier = header("X-Plan", { trusted = true }) }
]])
      assert.are.same({
        user = { header = "X-User-Id" },
        tier = { header = "X-Plan", trusted = true },
        tier_ttl_ms = 60000,
        default_tier = "free",
        file = "t.lua",
        line = 2,
      }, set.identity)
    end)

    it("identity headers declared with a type or a pattern", function()
      local set = set_of([[
identity {
  user   = header("X-User-Id", { integer = true }),
  tenant = header "X-Tenant-Id" { pattern = "[a-z0-9-]{1,64}" },
}
]])
      assert.are.same({ header = "X-User-Id", integer = true }, set.identity.user)
      assert.are.same({ header = "X-Tenant-Id", pattern = "[a-z0-9-]{1,64}" }, set.identity.tenant)
      set = set_of([[identity { user = header("X-User-Id", { uuid = true }), tenant = header("T", {}) }]])
      assert.are.same({ header = "X-User-Id", uuid = true }, set.identity.user)
      assert.are.same({ header = "T" }, set.identity.tenant)
      -- false is the same as leaving the option out
      set = set_of([[identity { user = header("U", { integer = false }) }]])
      assert.are.same({ header = "U" }, set.identity.user)
    end)

    it("sql(...) with its arguments as one list", function()
      local set = set_of([[
identity { user = header "U", tenant = header "T", tier = sql("SELECT p FROM u WHERE id = $1 AND t = $2", { "{user}", "{tenant}" }) }
]])
      assert.are.same({ sql = "SELECT p FROM u WHERE id = $1 AND t = $2", args = { "{user}", "{tenant}" } },
        set.identity.tier)
    end)

    it("upstreams, with the default timeout", function()
      local set = set_of([[
upstream "app" { url = "http://127.0.0.1:3000", timeout = "2s" }
upstream "legacy" { url = "http://10.0.0.5:8080/v1" }
]])
      assert.are.same({
        { name = "app", url = "http://127.0.0.1:3000", timeout_ms = 2000, connect_timeout_ms = 1000,
          host = "127.0.0.1", port = 3000, host_header = "127.0.0.1:3000", prefix = "", file = "t.lua", line = 1 },
        { name = "legacy", url = "http://10.0.0.5:8080/v1", timeout_ms = 5000, connect_timeout_ms = 1000,
          host = "10.0.0.5", port = 8080, host_header = "10.0.0.5:8080", prefix = "/v1", file = "t.lua", line = 2 },
      }, set.upstreams)
    end)

    it("an upstream URL without a port, with an IPv6 host, and with a connect timeout", function()
      local set = set_of([[
upstream "a" { url = "http://app.internal/" }
upstream "b" { url = "http://[::1]:8080/api/v2/", connect_timeout = "250ms" }
]])
      assert.are.same({ "app.internal", 80, "app.internal", "" },
        { set.upstreams[1].host, set.upstreams[1].port, set.upstreams[1].host_header, set.upstreams[1].prefix })
      assert.are.same({ "::1", 8080, "[::1]:8080", "/api/v2", 250 },
        { set.upstreams[2].host, set.upstreams[2].port, set.upstreams[2].host_header, set.upstreams[2].prefix,
          set.upstreams[2].connect_timeout_ms })
    end)

    it("an upstream's forward_headers, as written (none: every field a client may send)", function()
      local set = set_of([[
upstream "a" { url = "http://127.0.0.1:3000", forward_headers = { "Accept", "authorization", "X-User-Id" } }
upstream "b" { url = "http://127.0.0.1:3001", forward_headers = {} }
upstream "c" { url = "http://127.0.0.1:3002" }
]])
      assert.are.same({ "Accept", "authorization", "X-User-Id" }, set.upstreams[1].forward_headers)
      assert.are.same({}, set.upstreams[2].forward_headers)
      assert.is_nil(set.upstreams[3].forward_headers)
    end)

    it("a catch-all route: any method, and a default key of the whole path and query", function()
      local set = set_of([[
upstream "app" { url = "http://127.0.0.1:3000" }
endpoint "* /*" { upstream = "app", cache = { ttl = "5m" } }
endpoint "GET /files/*" { upstream = "app", cache = { ttl = "5m", key = "f:{path}:{query}" } }
]])
      local any, files = set.endpoints[1], set.endpoints[2]
      assert.are.same({ "*", "{method}:{route}:{path}:{query}", true },
        { any.method, any.cache.key, any.cache.query_all })
      assert.are.same({ "f:{path}:{query}", true }, { files.cache.key, files.cache.query_all })
    end)

    it("stale serving and warming in cache", function()
      local e = endpoint_of([[
endpoint "GET /api/dashboard" {
  upstream = "app",
  cache = { ttl = "3m", key = "dash:{user}", stale_while_revalidate = "30s", stale_if_error = "10m",
            warm = { { user = "1" }, { user = 2 } } },
}
]])
      assert.are.same(30000, e.cache.swr_ms)
      assert.are.same(600000, e.cache.sie_ms)
      assert.are.same({ callers = { { user = "1" }, { user = "2" } } }, e.cache.warm)
    end)

    it("cache.max_size in bytes or with a unit of 1024", function()
      local function size_of(v)
        return endpoint_of('endpoint "GET /f" { upstream = "app", cache = { ttl = "1m", key = "f:{user}", max_size = '
          .. v .. ' } }').cache.max_size
      end
      assert.are.same(1048576, size_of('"1m"'))
      assert.are.same(524288, size_of('"512k"'))
      assert.are.same(2048, size_of('"2KiB"'))
      assert.are.same(1073741824, size_of('"1g"'))
      assert.are.same(4096, size_of("4096"))
      assert.is_nil(endpoint_of('endpoint "GET /f" { upstream = "app", cache = { ttl = "1m", key = "f:{user}" } }')
        .cache.max_size)
    end)

    it("warming from a query", function()
      local e = endpoint_of([[
endpoint "GET /api/dashboard" {
  body = "{}",
  cache = { ttl = "3m", key = "dash:{user}", warm = sql("SELECT id::text FROM users WHERE plan = 'enterprise'") },
}
]])
      assert.are.same({ sql = "SELECT id::text FROM users WHERE plan = 'enterprise'" }, e.cache.warm)
    end)

    it("an sql endpoint with cache, tier limit and pinned query", function()
      local e = endpoint_of([[
endpoint "GET /api/crm?type=contacts" {
  sql   = "SELECT id, name FROM contacts WHERE owner_id = $1 ORDER BY id LIMIT 20",
  args  = { "{user}" },
  cache = { ttl = "5m", key = "crm:contacts:{user}", tags = { "crm:{user}" } },
  limit = "tier",
}
]])
      assert.are.same({
        name = "GET /api/crm?type=contacts",
        method = "GET",
        path = "/api/crm",
        pins = { { name = "type", value = "contacts" } },
        file = "t.lua",
        line = 1,
        source = "sql",
        sql = "SELECT id, name FROM contacts WHERE owner_id = $1 ORDER BY id LIMIT 20",
        args = { "{user}" },
        one = false,
        cache = { ttl_ms = 300000, key = "crm:contacts:{user}", tags = { "crm:{user}" }, shared = false },
        limits = { { tier = true } },
        invalidate = {},
      }, e)
    end)

    it("a write with body arguments, one = true and invalidation", function()
      local e = endpoint_of([[
endpoint "POST /api/crm/contacts" {
  sql  = "INSERT INTO contacts (owner_id, name, email) VALUES ($1, $2, $3) RETURNING *",
  args = { "{user}", "{body.name}", "{body.email}" },
  one  = true,
  invalidate = { "crm:{user}", "dash:{user}" },
  limit = "tier",
}
]])
      assert.are.same({
        name = "POST /api/crm/contacts",
        method = "POST",
        path = "/api/crm/contacts",
        pins = {},
        file = "t.lua",
        line = 1,
        source = "sql",
        sql = "INSERT INTO contacts (owner_id, name, email) VALUES ($1, $2, $3) RETURNING *",
        args = { "{user}", "{body.name}", "{body.email}" },
        one = true,
        limits = { { tier = true } },
        invalidate = { "crm:{user}", "dash:{user}" },
      }, e)
    end)

    it("an upstream endpoint with a tier limit and a strict extra limit", function()
      local e = endpoint_of([[
endpoint "POST /api/ai/{op}" {
  upstream = "app",
  limit = { "tier", { limit = 10, window = "1m", key = "expensive:{user}",
                      algorithm = "sliding_log" } },
}
]])
      assert.are.same({
        name = "POST /api/ai/{op}",
        method = "POST",
        path = "/api/ai/{op}",
        pins = {},
        file = "t.lua",
        line = 1,
        source = "upstream",
        upstream = "app",
        limits = {
          { tier = true },
          { name = "expensive", limit = 10, window_ms = 60000, key = "expensive:{user}",
            algorithm = "sliding_log", cost = 1, fail = "open", mode = "enforce" },
        },
        invalidate = {},
      }, e)
    end)

    it("a static endpoint with its defaults", function()
      local set = set_of([[endpoint "GET /healthz" { body = "ok" }]])
      assert.are.same({
        name = "GET /healthz", method = "GET", path = "/healthz", pins = {}, file = "t.lua", line = 1,
        source = "static", body = "ok", status = 200, content_type = "application/json",
        limits = {}, invalidate = {},
      }, set.endpoints[1])
    end)

    it("a static endpoint with status and content type", function()
      local set = set_of([[endpoint "GET /teapot" { body = "short and stout", status = 418, content_type = "text/plain" }]])
      local e = set.endpoints[1]
      assert.are.same({ "short and stout", 418, "text/plain" }, { e.body, e.status, e.content_type })
    end)

    it("a single limit table with every field", function()
      local e = endpoint_of([[
endpoint "GET /x" {
  body = "x",
  limit = { name = "bulk", limit = 5, window = "10s", key = "bulk:{user}", algorithm = "token_bucket",
            burst = 20, cost = 2, fail = "closed" },
}
]])
      assert.are.same({ {
        name = "bulk", limit = 5, window_ms = 10000, key = "bulk:{user}", algorithm = "token_bucket",
        burst = 20, cost = 2, fail = "closed", mode = "enforce",
      } }, e.limits)
    end)

    it("mode = \"shadow\" on a limit table, in a list of limits, and on a tier", function()
      local set = must_load(load_one([[
tier "free" { limit = 100, window = "1h", mode = "shadow" }
tier "pro" { limit = 1000, window = "1h", mode = "enforce" }
endpoint "GET /x" { body = "x", limit = { limit = 5, window = "1m", key = "x:{ip}", mode = "shadow" } }
endpoint "GET /y" {
  body = "y",
  limit = { "tier", { limit = 5, window = "1m", key = "y:{ip}", mode = "shadow" }, { limit = 9, window = "1m", key = "z:{ip}" } },
}
]]))
      assert.are.same({ "shadow", "enforce" }, { set.tiers[1].mode, set.tiers[2].mode })
      assert.are.equal("shadow", set.endpoints[1].limits[1].mode)
      local y = set.endpoints[2].limits
      assert.are.same({ true, "shadow", "enforce" }, { y[1].tier, y[2].mode, y[3].mode })
    end)

    it("the default limit key (route and caller) and name", function()
      local e = endpoint_of([[endpoint "GET /x" { body = "x", limit = { limit = 5, window = "1m" } }]])
      assert.are.same({ {
        name = "limit1", limit = 5, window_ms = 60000, key = "{route}:{tenant}:{user}",
        algorithm = "sliding_window", cost = 1, fail = "open", mode = "enforce",
      } }, e.limits)
      local anon = set_of([[endpoint "GET /x" { body = "x", limit = { limit = 5, window = "1m" } }]])
      assert.are.equal("{route}:{ip}", anon.endpoints[1].limits[1].key)
    end)

    it("a limit's name from the literal start of its key, else by position", function()
      local e = endpoint_of([[
endpoint "GET /x" {
  body = "x",
  limit = { "tier", { limit = 1, window = "1s", key = "{user}:burst" }, { limit = 9, window = "1h", key = "hourly{user}" } },
}
]])
      assert.are.same({ true, "limit2", "hourly" }, { e.limits[1].tier, e.limits[2].name, e.limits[3].name })
    end)

    it("the default cache key: method, route, path parameters, SQL arguments, caller", function()
      local e = endpoint_of([[
endpoint "GET /api/things/{id}" {
  sql = "SELECT * FROM things WHERE id = $1 AND owner = $2 OFFSET $3",
  args = { "{path.id}", "{user}", "{query.offset}" },
  cache = { ttl = 90 },
}
]])
      assert.are.same({
        ttl_ms = 90000,
        key = "{method}:{route}:{path.id}:{user}:{query.offset}:{tenant}",
        tags = {},
        shared = false,
      }, e.cache)
    end)

    it("a shared cache entry's default key leaves the caller out", function()
      local e = endpoint_of([[endpoint "GET /api/prices" { body = "[]", cache = { ttl = "1h", shared = true } }]])
      assert.are.same({ ttl_ms = 3600000, key = "{method}:{route}", tags = {}, shared = true }, e.cache)
    end)

    it("path parameters, wildcards and several pinned parameters", function()
      local set = set_of([[
endpoint "GET /files/{bucket}/*" { body = "x" }
endpoint "DELETE /api/items/{id}?hard=1&confirm=yes" { body = "x" }
endpoint "GET /" { body = "x" }
]])
      assert.are.same({ "/files/{bucket}/*", "/api/items/{id}", "/" },
        { set.endpoints[1].path, set.endpoints[2].path, set.endpoints[3].path })
      assert.are.same({ { name = "hard", value = "1" }, { name = "confirm", value = "yes" } }, set.endpoints[2].pins)
    end)

    it("on_change blocks", function()
      local set = set_of([[
on_change "contacts" { invalidate = { "crm:{row.owner_id}" } }
on_change "public.deals" { invalidate = { "crm:{row.owner_id}", "deal:{row.id}" } }
]])
      assert.are.same({
        { table = "contacts", invalidate = { "crm:{row.owner_id}" }, columns = { "owner_id" }, file = "t.lua",
          line = 1 },
        { table = "public.deals", invalidate = { "crm:{row.owner_id}", "deal:{row.id}" }, columns = { "id", "owner_id" },
          file = "t.lua", line = 2 },
      }, set.on_change)
    end)

    it("durations in every form to whole milliseconds", function()
      assert.are.equal(250, duration.parse("250ms"))
      assert.are.equal(30000, duration.parse("30s"))
      assert.are.equal(300000, duration.parse("5m"))
      assert.are.equal(3600000, duration.parse("1h"))
      assert.are.equal(86400000, duration.parse("1d"))
      assert.are.equal(45000, duration.parse(45))
      assert.are.equal(1500, duration.parse(1.5))
      assert.are.equal(250, duration.parse(0.25))
      assert.are.equal(7000, duration.parse("7"))
      assert.are.equal("integer", math.type(duration.parse(1.5)))
      assert.is_nil(duration.parse("0s"))
      assert.are.equal(0, duration.parse("0s", true))
    end)

    it("declarations of several files in file order, then declaration order", function()
      local set = must_load(dsl.load({
        { path = "p/10-a.lua", source = 'endpoint "GET /a" { body = "a" }\nendpoint "GET /b" { body = "b" }' },
        { path = "p/20-b.lua", source = '\n\nendpoint "GET /c" { body = "c" }' },
      }))
      assert.are.same({ { path = "p/10-a.lua" }, { path = "p/20-b.lua" } }, set.files)
      local got = {}
      for i, e in ipairs(set.endpoints) do
        got[i] = e.name .. "@" .. e.file .. ":" .. e.line
      end
      assert.are.same({ "GET /a@p/10-a.lua:1", "GET /b@p/10-a.lua:2", "GET /c@p/20-b.lua:3" }, got)
    end)

    it("what was declared, even if the policy changes its tables afterwards", function()
      local set = set_of([[
local fields = { limit = 100, window = "1h" }
tier "free" (fields)
fields.limit = 5
]])
      assert.are.equal(100, set.tiers[1].limit)
    end)

    it("policies that build declarations with Lua", function()
      local set = set_of([[
for _, kind in ipairs({ "contacts", "deals" }) do
  endpoint ("GET /api/" .. kind) { body = string.format("%q", kind:upper()) }
end
]])
      assert.are.same({ "GET /api/contacts", "GET /api/deals" }, { set.endpoints[1].name, set.endpoints[2].name })
      assert.are.equal('"DEALS"', set.endpoints[2].body)
    end)

    it("SQL text whose quotes and comments hold $n", function()
      local e = endpoint_of([[
endpoint "GET /x" {
  sql = "SELECT '$2', $tag$ $3 $tag$, \"a$4\" -- $5\n FROM t /* $6 /* $7 */ */ WHERE id = $1",
  args = { "{user}" },
}
]])
      assert.are.same({ "{user}" }, e.args)
    end)
  end)

  describe("reports", function()
    it("a bad duration, naming the field", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { ttl = "5 minutes" } }]],
        't.lua:1: endpoint "GET /x": cache.ttl: bad duration "5 minutes" (use e.g. "30s", "5m", "1h")')
      fails([[tier "free" { limit = 1, window = "1.5h" }]],
        't.lua:1: tier "free": window: bad duration "1.5h" (decimals are not allowed in text; use a smaller unit: "90m", not "1.5h")')
      fails([[tier "free" { limit = 1, window = "5w" }]],
        't.lua:1: tier "free": window: bad duration "5w": unknown unit "w" (use ms, s, m, h or d)')
      fails([[tier "free" { limit = 1, window = 0 }]], 't.lua:1: tier "free": window: bad duration 0 (must be more than 0)')
      fails([[tier "free" { limit = 1, window = -3 }]], 't.lua:1: tier "free": window: bad duration -3 (negative)')
      fails([[tier "free" { limit = 1, window = true }]],
        't.lua:1: tier "free": window: expected a duration such as "30s", got boolean')
    end)

    it("an unknown method", function()
      fails([[endpoint "FETCH /x" { body = "x" }]],
        't.lua:1: endpoint "FETCH /x": unknown method "FETCH" (use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, or * for any method)')
      fails([[endpoint "get /x" { body = "x" }]],
        't.lua:1: endpoint "get /x": unknown method "get" (methods are upper case: GET)')
      fails([[endpoint "/x" { body = "x" }]],
        't.lua:1: endpoint "/x": expected "METHOD /path", as in "GET /api/users/{id}"')
    end)

    it("a path that does not start with /", function()
      fails([[endpoint "GET api/x" { body = "x" }]], 't.lua:1: endpoint "GET api/x": path "api/x" must start with "/"')
    end)

    it("path segments that are not literal, {name} or a final *", function()
      fails([[endpoint "GET /x/{id}.json" { body = "x" }]],
        't.lua:1: endpoint "GET /x/{id}.json": path "/x/{id}.json": parameter "{id}.json" must be a whole segment "{name}"')
      fails([[endpoint "GET /x/a*" { body = "x" }]],
        't.lua:1: endpoint "GET /x/a*": path "/x/a*": segment "a*" mixes text with \'{\', \'}\' or \'*\''
        .. ' (parameters are whole segments "{name}", \'*\' a whole last segment)')
      fails([[endpoint "GET /x/*/y" { body = "x" }]], 't.lua:1: endpoint "GET /x/*/y": path "/x/*/y": \'*\' must be the last segment')
      fails([[endpoint "GET /x//y" { body = "x" }]],
        't.lua:1: endpoint "GET /x//y": path "/x//y" has an empty segment ("//"); only a trailing \'/\' may be empty')
      fails([[endpoint "GET /x/{a}/{a}" { body = "x" }]], 't.lua:1: endpoint "GET /x/{a}/{a}": path "/x/{a}/{a}": parameter {a} appears twice')
      fails([[endpoint "GET /x/{}" { body = "x" }]], 't.lua:1: endpoint "GET /x/{}": path "/x/{}": empty parameter name "{}"')
      fails([[endpoint "GET /x?type" { body = "x" }]],
        't.lua:1: endpoint "GET /x?type": pinned query parameter "type" needs a value (name=value)')
      fails([[endpoint "GET /x?a=1&a=2" { body = "x" }]], 't.lua:1: endpoint "GET /x?a=1&a=2": pinned query parameter "a" given twice')
    end)

    it("an endpoint without a source, or with two", function()
      fails([[endpoint "GET /x" { }]],
        't.lua:1: endpoint "GET /x": needs a source: sql = "SELECT ...", upstream = "NAME" or body = "..." (a fixed answer)')
      fails_after_prelude([[endpoint "GET /x" { sql = "SELECT 1", upstream = "app" }]],
        't.lua:1: endpoint "GET /x": has more than one source (sql and upstream); keep one')
    end)

    it("args and one without sql", function()
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", args = { "{user}" }, one = true }]], {
        't.lua:1: endpoint "GET /x": args: only goes with sql = "..."',
        't.lua:1: endpoint "GET /x": one: only goes with sql = "..."',
      })
      fails([[endpoint "GET /x" { sql = "SELECT 1", status = 201 }]], 't.lua:1: endpoint "GET /x": status: only goes with a fixed body = "..."')
    end)

    it("SQL placeholders beyond args", function()
      fails_after_prelude([[endpoint "GET /x" { sql = "SELECT * FROM t WHERE a = $1 AND b = $2", args = { "{user}" } }]],
        't.lua:1: endpoint "GET /x": sql: uses $2 but args has 1 value')
      fails([[endpoint "GET /x" { sql = "SELECT $1" }]],
        't.lua:1: endpoint "GET /x": sql: uses $1 but there are no args (add args = { "{user}", ... }, one template per $n)')
    end)

    it("an argument the SQL does not use", function()
      fails_after_prelude([[
endpoint "POST /x" {
  sql = "INSERT INTO t (a) VALUES ($1)",
  args = { "{user}", "{body.name}" },
}
]], 't.lua:1: endpoint "POST /x": args[2]: "{body.name}" is not used: the SQL has no $2')
    end)

    it("more than one statement in sql", function()
      fails([[endpoint "GET /x" { sql = "SELECT 1; DROP TABLE t" }]],
        't.lua:1: endpoint "GET /x": sql: holds more than one statement; write one statement per endpoint')
      assert.is_table(set_of([[endpoint "GET /x" { sql = "SELECT ';' ; -- trailing" }]]))
    end)

    it("one that is not a boolean", function()
      fails([[endpoint "GET /x" { sql = "SELECT 1", one = "yes" }]],
        't.lua:1: endpoint "GET /x": one: expected true or false, got string "yes"')
    end)

    it("a cache on a method other than GET and HEAD", function()
      fails_after_prelude([[endpoint "POST /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}" } }]],
        't.lua:1: endpoint "POST /x": cache: only GET and HEAD endpoints can be cached (a POST answer is never reused)')
    end)

    it("a cache without a ttl", function()
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { key = "x:{user}" } }]],
        't.lua:1: endpoint "GET /x": cache.ttl is required (e.g. ttl = "5m", or ttl = "origin")')
    end)

    it("a cache key shared between identified callers", function()
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "crm:contacts" } }]],
        't.lua:1: endpoint "GET /x": cache key "crm:contacts" is shared between callers; add {user} or {tenant}, or say shared = true')
      assert.is_table(endpoint_of([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{tenant}" } }]]))
      assert.is_table(endpoint_of([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x", shared = true } }]]))
      -- Without an identity block every caller is anonymous: nothing to keep apart.
      assert.is_table(set_of([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x" } }]]))
    end)

    it("a cache key that leaves out what the SQL depends on", function()
      fails_after_prelude([[
endpoint "GET /x" {
  sql = "SELECT * FROM t WHERE owner = $1 OFFSET $2",
  args = { "{user}", "{query.offset}" },
  cache = { ttl = "1m", key = "x:{user}" },
}
]], 't.lua:1: endpoint "GET /x": cache key "x:{user}" leaves out {query.offset}, which args use;'
        .. ' requests that differ only in it would share one cached answer')
      fails_after_prelude([[
endpoint "GET /x" {
  sql = "SELECT * FROM t WHERE owner = $1",
  args = { "{user}" },
  cache = { ttl = "1m", key = "x", shared = true },
}
]], 't.lua:1: endpoint "GET /x": cache key "x" leaves out {user}, which args use;'
        .. ' requests that differ only in it would share one cached answer')
    end)

    it("templates with unbalanced braces", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:{user" } }]],
        't.lua:1: endpoint "GET /x": cache.key "x:{user": unclosed \'{\'')
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:user}" } }]],
        't.lua:1: endpoint "GET /x": cache.key "x:user}": stray \'}\' (templates have no literal braces)')
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:{}:{user}" } }]],
        't.lua:1: endpoint "GET /x": cache.key "x:{}:{user}": empty \'{}\'')
    end)

    it("an upstream cache key that leaves out part of the path it forwards", function()
      local up = 'upstream "app" { url = "http://127.0.0.1:3000" }\n'
      fails(up .. [[endpoint "GET /items/{id}" { upstream = "app", cache = { ttl = "1m", key = "items" } }]],
        't.lua:2: endpoint "GET /items/{id}": cache.key: cache key "items" leaves out {path.id}; requests for'
        .. ' different id values would share one cached answer: add {path.id} (or {path})')
      fails(up .. [[endpoint "GET /assets/*" { upstream = "app", cache = { ttl = "1m", key = "a:{query}" } }]],
        't.lua:2: endpoint "GET /assets/*": cache.key: cache key "a:{query}" leaves out the path that \'*\''
        .. ' matches; different paths would share one cached answer: add {path}')
      assert.is_table(load_one(up .. [[endpoint "GET /items/{id}" { upstream = "app", cache = { ttl = "1m", key = "i:{path}" } }]]))
      fails([[endpoint "* /x" { body = "{}" }]],
        't.lua:1: endpoint "* /x": "*" (any method) only goes with upstream = "NAME": it forwards every method as it came')
    end)

    it("unknown template variables, with a suggestion", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:{usr}" } }]],
        't.lua:1: endpoint "GET /x": cache.key "x:{usr}": unknown variable {usr} (did you mean {user}?)')
      fails_after_prelude([[endpoint "GET /x" { body = "x", invalidate = { "x:{header}" } }]],
        't.lua:1: endpoint "GET /x": invalidate[1] "x:{header}": {header} needs a name, as in {header.NAME}')
      fails_after_prelude([[endpoint "GET /x" { body = "x", invalidate = { "x:{query.}" } }]],
        't.lua:1: endpoint "GET /x": invalidate[1] "x:{query.}": {query.} needs a name, as in {query.NAME}')
      fails_after_prelude('endpoint "GET /x" { body = "x", invalidate = { "x:{header.' .. ("h"):rep(65) .. '}" } }',
        't.lua:1: endpoint "GET /x": invalidate[1] "x:{header.' .. ("h"):rep(65) .. '}": the name in {header.'
        .. ("h"):rep(65) .. '} is longer than 64 bytes')
      fails_after_prelude([[endpoint "GET /x" { body = "x", invalidate = { "x:{user.id}" } }]],
        't.lua:1: endpoint "GET /x": invalidate[1] "x:{user.id}": {user.id}: {user} takes no name')
      fails_after_prelude([[endpoint "GET /x" { body = "x", invalidate = { "x:{header.X Y}" } }]],
        't.lua:1: endpoint "GET /x": invalidate[1] "x:{header.X Y}": bad name in {header.X Y}: names use letters, digits, \'_\' and \'-\'')
    end)

    it("two template variables with no ':' between them", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", invalidate = { "x:{user}-{tenant}" } }]],
        't.lua:1: endpoint "GET /x": invalidate[1] "x:{user}-{tenant}": {tenant} follows {user} without a \':\' between them,'
        .. ' so different values could expand to the same text')
    end)

    it("{path.NAME} that is not a parameter of the route", function()
      fails_after_prelude([[endpoint "GET /x/{id}" { sql = "SELECT $1", args = { "{path.ids}" } }]],
        't.lua:1: endpoint "GET /x/{id}": args[1] "{path.ids}": {path.ids}: the route has no {ids} parameter (did you mean {path.id}?)')
    end)

    it("{body.NAME} on a method without a body", function()
      fails_after_prelude([[endpoint "GET /x" { sql = "SELECT $1", args = { "{body.name}" } }]],
        't.lua:1: endpoint "GET /x": args[1] "{body.name}": {body.name}: GET requests have no body'
        .. ' (only POST, PUT, PATCH and DELETE endpoints can use {body.NAME})')
      assert.is_table(endpoint_of([[endpoint "DELETE /x" { sql = "SELECT $1", args = { "{body.reason}" } }]]))
    end)

    it("bad cache.max_size, and one on an endpoint without an upstream", function()
      fails_after_prelude([[endpoint "GET /x" {
  upstream = "app",
  cache = { ttl = "1m", key = "x:{user}", max_size = "1 megabyte" },
}]],
        't.lua:1: endpoint "GET /x": cache.max_size: bad size "1 megabyte" (use e.g. "512k", "1m", or a number of bytes)')
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", max_size = "2g" } }]],
        't.lua:1: endpoint "GET /x": cache.max_size: size "2g" out of range (1 byte to 1g)')
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", max_size = 0 } }]],
        't.lua:1: endpoint "GET /x": cache.max_size: size 0 out of range (1 byte to 1g)')
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", max_size = true } }]],
        't.lua:1: endpoint "GET /x": cache.max_size: expected a size such as "1m", got boolean true')
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:{user}", max_size = "1m" } }]],
        't.lua:1: endpoint "GET /x": cache.max_size: bounds an upstream\'s answers (larger ones are streamed, not stored);'
        .. ' this endpoint has no upstream')
    end)

    it("stale and warm fields outside cache, and bad warm lists", function()
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", stale_if_error = "1m", cache = { ttl = "1m", key = "x:{user}" } }]],
        't.lua:1: endpoint "GET /x": stale_if_error: goes inside cache = { ... } (cache = { ttl = "5m", stale_if_error = ... })')
      fails_after_prelude([[endpoint "GET /x/{id}" { upstream = "app", cache = { ttl = "1m", key = "x:{user}:{path.id}", warm = { { user = "1" } } } }]],
        't.lua:1: endpoint "GET /x/{id}": cache.warm: needs an endpoint without {path} parameters (the warm callers give no path values)')
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", warm = { { usr = "1" } } } }]],
        "t.lua:1: endpoint \"GET /x\": cache.warm[1]: unknown field 'usr' (did you mean 'user'?)")
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", warm = "1" } }]],
        't.lua:1: endpoint "GET /x": cache.warm: expected a list of callers { { user = "1" }, ... } or sql("SELECT id FROM users ..."), got string "1"')
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", warm = sql("SELECT id FROM u WHERE p = $1", "x") } }]],
        't.lua:1: endpoint "GET /x": cache.warm: the warm query takes no parameters ($1)')
      fails_after_prelude([[endpoint "GET /x" { upstream = "app", cache = { ttl = "1m", key = "x:{user}", stale_while_revalidate = "soon" } }]],
        't.lua:1: endpoint "GET /x": cache.stale_while_revalidate: ' .. select(2, duration.parse("soon", true)))
    end)

    it("forward_headers that name what sluice sets, never forwards, or twice", function()
      local up = 'upstream "a" { url = "http://127.0.0.1:3000", forward_headers = %s }'
      fails(up:format('{ "Accept", "Host", "via", "X-Request-Id" }'), {
        't.lua:1: upstream "a": forward_headers[2]: "Host" is set by sluice itself',
        't.lua:1: upstream "a": forward_headers[3]: "via" is set by sluice itself',
        't.lua:1: upstream "a": forward_headers[4]: "X-Request-Id" is set by sluice itself',
      })
      fails(up:format('{ "X-Forwarded-Scheme", "X-Real-IP", "Connection" }'), {
        't.lua:1: upstream "a": forward_headers[1]: "X-Forwarded-Scheme" is never forwarded from a client'
          .. ' (a caller could pose as a proxy with it)',
        't.lua:1: upstream "a": forward_headers[2]: "X-Real-IP" is never forwarded from a client'
          .. ' (a caller could pose as a proxy with it)',
        't.lua:1: upstream "a": forward_headers[3]: "Connection" is hop-by-hop (RFC 9110 section 7.6.1)'
          .. ' and never forwarded',
      })
      fails(up:format('{ "Accept", "accept" }'),
        't.lua:1: upstream "a": forward_headers[2]: "accept" is listed twice (at [1] too)')
      fails(up:format('{ "Bad Name", 7 }'), {
        't.lua:1: upstream "a": forward_headers[1]: expected a header field name, got string "Bad Name"',
        't.lua:1: upstream "a": forward_headers[2]: expected a header field name, got number 7',
      })
      fails(up:format('"Accept"'),
        't.lua:1: upstream "a": forward_headers: expected a list of header names, as in { "Accept", "Authorization" },'
        .. ' got string "Accept"')
      fails(up:format(list_of(65, function(i) return '"X-H' .. i .. '"' end)),
        't.lua:1: upstream "a": forward_headers: lists 65 fields; an upstream may have at most 64')
    end)

    it("upstream URLs that cannot be split", function()
      fails([[upstream "a" { url = "http://[::1/" }]],
        't.lua:1: upstream "a": url: a bracketed IPv6 address must look like [::1], got "http://[::1/"')
      fails([[upstream "a" { url = "http://h:99999" }]],
        't.lua:1: upstream "a": url: the port must be a number from 1 to 65535, got "http://h:99999"')
    end)

    it("{row.COLUMN} outside on_change, and request variables inside it", function()
      fails_after_prelude([[endpoint "POST /x" { body = "x", invalidate = { "crm:{row.owner_id}" } }]],
        't.lua:1: endpoint "POST /x": invalidate[1] "crm:{row.owner_id}": {row.owner_id} is only available in on_change')
      fails([[on_change "contacts" { invalidate = { "crm:{user}" } }]],
        't.lua:1: on_change "contacts": invalidate[1] "crm:{user}": {user} is not available in on_change,'
        .. ' which runs for a changed row, not a request (use {row.COLUMN})')
    end)

    it("{user} and {tenant} when no identity block declares them", function()
      fails([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:{user}" } }]],
        't.lua:1: endpoint "GET /x": cache.key "x:{user}": {user} needs an identity block that declares a user'
        .. ' (identity { user = header "X-User-Id" })')
      fails([[
identity { user = header "U" }
endpoint "GET /x" { body = "x", cache = { ttl = "1m", key = "x:{user}:{tenant}" } }
]], 't.lua:2: endpoint "GET /x": cache.key "x:{user}:{tenant}": {tenant} needs an identity block that declares a tenant'
        .. ' (identity { tenant = header "X-Tenant-Id" })')
    end)

    it("a limit that is neither \"tier\", a table nor a list of them", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = "free" }]],
        't.lua:1: endpoint "GET /x": limit: expected "tier" (the caller\'s tier) or a table { limit = 10, window = "1m" }, got "free"')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = 100 }]],
        't.lua:1: endpoint "GET /x": limit: expected "tier", { limit = 10, window = "1m" } or a list of these, got number 100')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { "tier", limit = 3 } }]],
        't.lua:1: endpoint "GET /x": limit: mixes a list with fields; write a list of "tier" and tables, or one table')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { "tier", "tier" } }]],
        't.lua:1: endpoint "GET /x": limit[2]: "tier" is listed twice')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = {} }]],
        't.lua:1: endpoint "GET /x": limit: is an empty table; leave limit out for no limit')
    end)

    it("a limit without a positive whole limit or without a window", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 0, window = "1m" } }]],
        't.lua:1: endpoint "GET /x": limit.limit: expected a positive whole number, got number 0')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { "tier", { limit = 2.5, window = "1m" } } }]],
        't.lua:1: endpoint "GET /x": limit[2].limit: expected a positive whole number, got number 2.5')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 10 } }]],
        't.lua:1: endpoint "GET /x": limit.window is required (e.g. window = "1m")')
    end)

    it("an unknown algorithm", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 1, window = "1m", algorithm = "sliding_windw" } }]],
        't.lua:1: endpoint "GET /x": limit.algorithm: unknown algorithm "sliding_windw" (did you mean \'sliding_window\'?)'
        .. ' (use sliding_window, sliding_log, token_bucket or fixed_window)')
    end)

    it("burst without token_bucket", function()
      fails([[tier "free" { limit = 1, window = "1m", burst = 5 }]], 't.lua:1: tier "free": burst: only applies to algorithm = "token_bucket"')
    end)

    it("a cost that is not a positive whole number", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 10, window = "1m", cost = 0 } }]],
        't.lua:1: endpoint "GET /x": limit.cost: expected a positive whole number, got number 0')
    end)

    it("fail other than open or closed", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 10, window = "1m", fail = "shut" } }]],
        't.lua:1: endpoint "GET /x": limit.fail: expected "open" or "closed", got "shut"')
    end)

    it("a mode other than enforce or shadow, with the line and a suggestion", function()
      fails_after_prelude([[

endpoint "GET /x" { body = "x", limit = { limit = 10, window = "1m", mode = "shadw" } }]],
        't.lua:2: endpoint "GET /x": limit.mode: unknown mode "shadw" (did you mean \'shadow\'?)'
          .. ' (use "enforce" or "shadow")')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { "tier", { limit = 10, window = "1m", mode = "log" } } }]],
        't.lua:1: endpoint "GET /x": limit[2].mode: unknown mode "log" (use "enforce" or "shadow")')
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 10, window = "1m", mode = true } }]],
        't.lua:1: endpoint "GET /x": limit.mode: expected a string, got boolean true')
      fails([[
tier "free" { limit = 1, window = "1m", mode = "enforced" }]],
        't.lua:1: tier "free": mode: unknown mode "enforced" (did you mean \'enforce\'?) (use "enforce" or "shadow")')
    end)

    it("two limits of one endpoint with the same name", function()
      fails_after_prelude([[
endpoint "GET /x" {
  body = "x",
  limit = { { limit = 1, window = "1s", key = "a:{user}" }, { limit = 9, window = "1m", key = "a:{user}:m" } },
}
]], 't.lua:1: endpoint "GET /x": limit[2]: name "a" is used by limit[1] too; give each limit its own name (name = "...")')
    end)

    it("a limit named like a tier", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", limit = { limit = 1, window = "1s", name = "free" } }]],
        't.lua:1: endpoint "GET /x": limit: name "free" is also a tier\'s name; RateLimit headers could not tell them apart')
    end)

    it("one limit key with two different rules", function()
      fails_after_prelude([[
endpoint "GET /a" { body = "x", limit = { limit = 10, window = "1m", key = "expensive:{user}" } }
endpoint "GET /b" { body = "x", limit = { limit = 20, window = "1m", key = "expensive:{user}" } }
]], 't.lua:2: endpoint "GET /b": limit: key "expensive:{user}" is also used by "GET /a" (t.lua:1) with another limit,'
        .. ' window or algorithm; one counter cannot follow two rules')
    end)

    it("limit = \"tier\" without any tier", function()
      fails([[endpoint "GET /x" { body = "x", limit = "tier" }]],
        't.lua:1: endpoint "GET /x": limit: "tier" needs at least one tier declared (tier "free" { limit = 100, window = "1h" })')
    end)

    it("more than 8 limits on an endpoint, which the request path would not count", function()
      local function limits(n)
        return list_of(n, function(i) return '{ limit = 10, window = "1m", key = "a' .. i .. '" }' end)
      end
      fails('\nendpoint "GET /x" { body = "{}", limit = ' .. limits(9) .. " }",
        't.lua:2: endpoint "GET /x": limit: lists 9 limits; an endpoint may have at most 8')
      local e = set_of('endpoint "GET /x" { body = "{}", limit = ' .. limits(8) .. " }").endpoints[1]
      assert.are.equal(8, #e.limits)
      assert.are.equal("a8", e.limits[8].name)
    end)

    it("more than 16 cache tags or invalidate templates on an endpoint", function()
      local function tags(n)
        return list_of(n, function(i) return '"t' .. i .. ':{path.id}"' end)
      end
      fails('\n\nendpoint "GET /x/{id}" { body = "{}", cache = { ttl = "1m", key = "x:{path.id}", tags = '
        .. tags(17) .. " } }",
        't.lua:3: endpoint "GET /x/{id}": cache.tags: lists 17 tags; an endpoint may have at most 16')
      fails('endpoint "POST /x/{id}" { body = "{}", invalidate = ' .. tags(17) .. " }",
        't.lua:1: endpoint "POST /x/{id}": invalidate: lists 17 tags; an endpoint may have at most 16')
      local set = set_of('endpoint "GET /x/{id}" { body = "{}", cache = { ttl = "1m", key = "x:{path.id}", tags = '
        .. tags(16) .. ' } }\nendpoint "POST /x/{id}" { body = "{}", invalidate = ' .. tags(16) .. " }")
      assert.are.equal(16, #set.endpoints[1].cache.tags)
      assert.are.equal(16, #set.endpoints[2].invalidate)
    end)

    it("more than 32 SQL arguments", function()
      local function stmt(n)
        return '"SELECT ' .. joined(n, function(i) return "$" .. i end) .. '"'
      end
      local function args(n)
        return list_of(n, function(i) return '"{query.q' .. i .. '}"' end)
      end
      fails('endpoint "GET /x" { sql = ' .. stmt(33) .. ", args = " .. args(33) .. " }",
        't.lua:1: endpoint "GET /x": args: lists 33 values; a statement may have at most 32')
      local e = set_of('endpoint "GET /x" { sql = ' .. stmt(32) .. ", args = " .. args(32) .. " }").endpoints[1]
      assert.are.equal(32, #e.args)
      local function tier(n)
        return 'identity { user = header "U", tier = sql(' .. stmt(n) .. ", "
          .. list_of(n, function() return '"{user}"' end) .. ") }"
      end
      fails(tier(33), "t.lua:1: identity: tier.args: lists 33 values; a statement may have at most 32")
      assert.are.equal(32, #set_of(tier(32)).identity.tier.args)
    end)

    it("a default_tier that is not a declared tier", function()
      fails([[
tier "free" { limit = 1, window = "1h" }
identity { user = header "U", default_tier = "fre" }
]], 't.lua:2: identity: default_tier: "fre" is not a declared tier (did you mean "free"?)')
    end)

    it("an upstream that is not declared", function()
      fails_after_prelude([[endpoint "GET /x" { upstream = "ap" }]],
        't.lua:1: endpoint "GET /x": upstream: "ap" is not a declared upstream (did you mean "app"?)')
      fails([[endpoint "GET /x" { upstream = "app" }]],
        't.lua:1: endpoint "GET /x": upstream: "app" is not a declared upstream'
        .. ' (declare it: upstream "app" { url = "http://127.0.0.1:3000" })')
    end)

    it("bad upstream declarations", function()
      fails([[
upstream "a" { url = "https://example.com?x" }
upstream "b" { url = "ftp://x" }
upstream "c" { timeout = "1s" }
]], {
        't.lua:1: upstream "a": url: may not hold a query string',
        't.lua:2: upstream "b": url: expected http[s]://HOST[:PORT][/PREFIX], got "ftp://x"',
        't.lua:3: upstream "c": url is required (e.g. url = "http://127.0.0.1:3000")',
      })
    end)

    it("unknown fields, with a suggestion", function()
      fails_after_prelude([[endpoint "GET /x" { body = "x", cache = { tll = "5m", key = "x:{user}" } }]], {
        't.lua:1: endpoint "GET /x": cache: unknown field \'tll\' (did you mean \'ttl\'?)',
        't.lua:1: endpoint "GET /x": cache.ttl is required (e.g. ttl = "5m")',
      })
      fails_after_prelude([[endpoint "GET /x" { body = "x", cahce = {} }]],
        't.lua:1: endpoint "GET /x": unknown field \'cahce\' (did you mean \'cache\'?)')
      fails([[tier "free" { limit = 1, window = "1h", colour = "red" }]], 't.lua:1: tier "free": unknown field \'colour\'')
      fails([[identity { user = header "U", tier_tl = "1m" }]], 't.lua:1: identity: unknown field \'tier_tl\' (did you mean \'tier_ttl\'?)')
      fails([[endpoint "GET /x" { "x" }]], {
        't.lua:1: endpoint "GET /x": unexpected list item string "x" (fields are written name = value)',
        't.lua:1: endpoint "GET /x": needs a source: sql = "SELECT ...", upstream = "NAME" or body = "..." (a fixed answer)',
      })
    end)

    it("values of the wrong type", function()
      fails([[endpoint "GET /x" { sql = 5 }]], 't.lua:1: endpoint "GET /x": sql: expected a string, got number 5')
      fails([[endpoint "GET /x" { sql = "SELECT $1", args = "{ip}" }]], {
        't.lua:1: endpoint "GET /x": args: expected a list, as in { "{user}", "{path.id}" }, got string "{ip}"',
        't.lua:1: endpoint "GET /x": sql: uses $1 but there are no args (add args = { "{user}", ... }, one template per $n)',
      })
      fails([[endpoint "GET /x" { body = "x", cache = { ttl = "1m", shared = "yes" } }]],
        't.lua:1: endpoint "GET /x": cache.shared: expected true or false, got string "yes"')
      fails([[endpoint "GET /x" { body = "x", cache = "5m" }]],
        't.lua:1: endpoint "GET /x": cache: expected a table { ttl = "5m", key = "...", tags = { ... } }, got string "5m"')
      fails([[endpoint "GET /x" { body = "x", invalidate = { 42 } }]],
        't.lua:1: endpoint "GET /x": invalidate[1]: expected a template string such as "crm:{user}", got number 42')
      fails([[identity { user = "X-User-Id" }]],
        't.lua:1: identity: user: expected header "NAME", got string "X-User-Id" (write user = header "X-User-Id")')
      fails([[tier "free" { limit = "100", window = "1h" }]], 't.lua:1: tier "free": limit: expected a positive whole number, got string "100"')
      fails([[tier "free" (42)]], 't.lua:1: tier "free": expected a table of fields { ... } after the name, got number 42')
      fails([[tier { limit = 1 }]], 't.lua:1: tier: expected a name in quotes first, as in tier "free" { limit = 100, window = "1h" }, got table')
    end)

    it("a declaration whose fields never come", function()
      fails([[
tier "free" { limit = 1, window = "1h" }
endpoint "GET /x"
]], 't.lua:2: endpoint "GET /x": expected { ... } after the name, as in endpoint "GET /api/things" { sql = "SELECT ..." }')
    end)

    it("duplicate tiers, endpoints, identity blocks and on_change tables", function()
      fails([[
tier "free" { limit = 1, window = "1h" }
tier "free" { limit = 2, window = "1h" }
identity { user = header "U" }
identity { user = header "V" }
endpoint "GET /x?type=a" { body = "x" }
endpoint "GET /x?type=a" { body = "y" }
endpoint "GET /x/{id}" { body = "x" }
endpoint "GET /x/{key}" { body = "x" }
on_change "t" { invalidate = { "t:{row.id}" } }
on_change "t" { invalidate = { "t:{row.id}" } }
]], {
        't.lua:2: tier "free": is already declared at t.lua:1',
        't.lua:4: identity: is already declared at t.lua:3; a policy set has one identity block',
        't.lua:6: endpoint "GET /x?type=a": is already declared at t.lua:5',
        't.lua:8: endpoint "GET /x/{key}": is already declared at t.lua:7',
        't.lua:10: on_change "t": is already declared at t.lua:9; list every tag in one invalidate',
      })
    end)

    it("routes one request could match twice", function()
      fails([[
endpoint "GET /x?type=a" { body = "x" }
endpoint "GET /x?kind=b" { body = "y" }
]], 't.lua:2: endpoint "GET /x?kind=b": is ambiguous with "GET /x?type=a" (t.lua:1): one request can match both;'
        .. ' pin the same query parameters on both')
    end)

    it("bad names of tiers and on_change tables", function()
      fails([[tier "free plan" { limit = 1, window = "1h" }]],
        't.lua:1: tier "free plan": tier name "free plan" may use only letters, digits, \'_\' and \'-\'')
      fails([[on_change "my-table" { invalidate = { "x:{row.id}" } }]],
        't.lua:1: on_change "my-table": table name "my-table" is not an identifier (letters, digits and \'_\', optionally schema.table)')
    end)

    it("identity blocks that identify no one, or misuse tier_ttl", function()
      fails([[identity { default_tier = "free" }]], {
        't.lua:1: identity: declares neither user nor tenant (e.g. user = header "X-User-Id")',
        't.lua:1: identity: default_tier: "free" is not a declared tier',
      })
      fails([[identity { user = header "U", tier = header("P", { trusted = true }), tier_ttl = "1m" }]],
        't.lua:1: identity: tier_ttl: only applies when the tier is looked up with sql(...)')
      fails([[identity { user = header "U", tier = sql("SELECT p FROM u WHERE id = $1", "{path.id}") }]],
        't.lua:1: identity: tier.args[1] "{path.id}": {path.id} is not available here'
        .. ' (the tier lookup may use {user}, {tenant}, {ip} and {header.NAME})')
      fails([[identity { user = header "U", tier = sql("SELECT p FROM u WHERE id = $2", "{user}") }]], {
        't.lua:1: identity: tier.sql: uses $2 but tier.args has 1 value',
        't.lua:1: identity: tier.args[1]: "{user}" is not used: the SQL has no $1',
      })
    end)

    it("identity header options that are unknown, of the wrong type, or exclude each other", function()
      fails([[identity { user = header("U", { integr = true }) }]],
        "t.lua:1: identity: user: unknown field 'integr' (did you mean 'integer'?)")
      fails([[identity { user = header("U", { integer = "yes" }) }]],
        't.lua:1: identity: user.integer: expected true or false, got string "yes"')
      fails([[identity { user = header("U", { integer = true, uuid = true }) }]],
        "t.lua:1: identity: user: integer and uuid exclude each other; give one")
      fails([[identity { tenant = header("T", { uuid = true, pattern = "[a-f0-9-]+" }) }]],
        "t.lua:1: identity: tenant: uuid and pattern exclude each other; give one")
      fails([[identity { user = header("U", { pattern = "" }) }]],
        "t.lua:1: identity: user.pattern: is empty")
      fails([[identity { user = header("U", { pattern = 5 }) }]],
        "t.lua:1: identity: user.pattern: expected a string, got number 5")
      fails([[identity { user = header("U", "integer") }]],
        't.lua:1: identity: user: expected options { integer = true }, { uuid = true } or'
        .. ' { pattern = "[a-z0-9-]{1,64}" } after the header name, got string "integer"')
      fails([[identity { user = header("U", { "integer" }) }]],
        't.lua:1: identity: user: unexpected list item string "integer" (fields are written name = value)')
      fails([[
tier "free" { limit = 1, window = "1h" }
identity { user = header "U", tier = header("P", { pattern = "[a-z]+", trusted = true }) }
]], "t.lua:2: identity: tier: takes only { trusted = true }: its value is matched against the declared tier names")
      -- A tier the client could set is the client's choice of budget.
      fails([[
tier "free" { limit = 1, window = "1h" }
identity { user = header "U", tier = header "X-Plan" }
]], 't.lua:2: identity: tier: header "X-Plan" comes from the client, which could pick its own tier; when a'
        .. ' layer in front sets it (and drops the client\'s), say so: header("X-Plan", { trusted = true })')
      fails([[identity { user = header "X-Id", tenant = header "x-id" }]],
        't.lua:1: identity: tenant: reads header "x-id" as user does; give each its own header')
    end)

    it("jwt blocks: key sources, paths inside the directory, algorithms, claims", function()
      local id = set_of([[
identity {
  jwt = { keys = "./keys//jwks.json", issuer = "https://auth.example.com", audience = "crm",
          leeway = "10s", required = true },
  user = claim("sub", { integer = true }), tenant = claim "org", tier = claim "plan",
}
]]).identity
      assert.are.same({ keys = { { jwks = "keys/jwks.json" } }, issuer = "https://auth.example.com",
        audience = "crm", leeway_ms = 10000, required = true }, id.jwt)
      assert.are.same({ claim = "sub", integer = true }, id.user)
      assert.are.same({ claim = "org" }, id.tenant)
      assert.are.same({ claim = "plan" }, id.tier)
      id = set_of([[
identity {
  jwt = { keys = { { pem = "rsa.pem", kid = "r", alg = "PS256" }, { secret_env = "JWT_SECRET" },
                   { secret_file = "hs.key", kid = "h" } } },
  user = claim "sub",
}
]]).identity
      assert.are.same({ { pem = "rsa.pem", kid = "r", alg = "PS256" }, { secret_env = "JWT_SECRET" },
        { secret_file = "hs.key", kid = "h" } }, id.jwt.keys)
      assert.are.equal(30000, id.jwt.leeway_ms)
      assert.is_false(id.jwt.required)
      fails([[identity { jwt = { keys = "/etc/jwks.json" }, user = claim "sub" }]],
        't.lua:1: identity: jwt.keys: "/etc/jwks.json" is absolute; name a file inside the policy'
        .. ' directory (a change to it reloads the policy)')
      fails([[identity { jwt = { keys = "../jwks.json" }, user = claim "sub" }]],
        't.lua:1: identity: jwt.keys: "../jwks.json" leaves the policy directory; name a file inside it')
      fails([[identity { jwt = { keys = { { pem = "k.pem", alg = "HS256" } } }, user = claim "sub" }]],
        "t.lua:1: identity: jwt.keys[1].alg: HS256 takes a secret (secret_file or secret_env), not a public key")
      fails([[identity { jwt = { keys = { { secret_env = "S", alg = "RS256" } } }, user = claim "sub" }]],
        "t.lua:1: identity: jwt.keys[1].alg: a secret verifies HS256 only")
      fails([[identity { jwt = { keys = { { pem = "k.pem", alg = "none" } } }, user = claim "sub" }]],
        't.lua:1: identity: jwt.keys[1].alg: "none" is not an algorithm sluice verifies'
        .. " (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA, HS256)")
      fails([[identity { jwt = { keys = { { pem = "k.pem", jwks = "j.json" } } }, user = claim "sub" }]],
        "t.lua:1: identity: jwt.keys[1]: needs exactly one of jwks, pem, secret_file and secret_env,"
        .. " got jwks and pem")
      fails([[identity { jwt = { keys = "jwks.json" }, user = header "X-User-Id" }]],
        't.lua:1: identity: user: header "X-User-Id" would let any caller name itself past the credential:'
        .. ' with jwt or api_key, the user comes from a claim (user = claim "...")')
      fails([[identity { user = claim "sub" }]],
        't.lua:1: identity: user: claim "sub" needs a credential to read it from: declare'
        .. ' jwt = { keys = "jwks.json", ... } or api_key = { ... } in this identity block')
      fails([[identity { jwt = { issuer = "x" }, user = claim "sub" }]],
        't.lua:1: identity: jwt.keys is required (e.g. keys = "jwks.json" (a JWK set file in the policy directory))')
    end)

    it("api_key blocks: where the key comes, one $1 (its hash), credentials kept out of templates", function()
      local set = set_of([[
identity {
  api_key = { header = "X-API-Key", sql = "SELECT user_id AS sub FROM api_keys WHERE key_hash = $1",
              ttl = "30s", required = true },
  user = claim "sub",
}
on_change "api_keys" { credentials = true }
]])
      assert.are.same({ header = "X-API-Key", sql = "SELECT user_id AS sub FROM api_keys WHERE key_hash = $1",
        hash = "sha256", ttl_ms = 30000, required = true }, set.identity.api_key)
      assert.is_true(set.on_change[1].credentials)
      assert.are.same({}, set.on_change[1].invalidate)
      fails([[identity { api_key = { sql = "SELECT 1 WHERE $1 = 'x'" }, user = claim "sub" }]],
        't.lua:1: identity: api_key: needs one of header = "X-API-Key" and query = "api_key", where callers send the key')
      fails([[identity { api_key = { header = "X-K", sql = "SELECT $1, $2" }, user = claim "sub" }]],
        "t.lua:1: identity: api_key.sql: takes exactly one parameter, $1: the key's hash (never the key itself)")
      fails([[identity { api_key = { header = "X-K", sql = "SELECT $1", hash = "md5" }, user = claim "sub" }]],
        't.lua:1: identity: api_key.hash: expected "sha256" (the hex SHA-256 of the key), got "md5"')
      fails([[identity { api_key = { header = "Authorization", sql = "SELECT $1" }, user = claim "sub" }]],
        "t.lua:1: identity: api_key.header: Authorization carries bearer tokens (jwt); name a header of its own")
      fails([[
identity { api_key = { query = "k", sql = "SELECT $1" }, user = claim "sub" }
endpoint "GET /x" { body = "{}", cache = { ttl = "1m", key = "x:{user}:{query.k}" } }
]], 't.lua:2: endpoint "GET /x": cache.key "x:{user}:{query.k}": {query.k} is the API key: a template would'
        .. " put it in clear in a key, a tag or an SQL argument (use {user} or {claim.NAME})")
      fails([[
identity { jwt = { keys = "j.json" }, user = claim "sub" }
endpoint "GET /x" { sql = "SELECT $1", args = { "{header.Authorization}" } }
]], 't.lua:2: endpoint "GET /x": args[1] "{header.Authorization}": {header.Authorization} is the bearer token:'
        .. " a template would put it in clear in a key, a tag or an SQL argument (use {user} or {claim.NAME})")
      fails([[
identity { user = header "X-User-Id" }
on_change "api_keys" { credentials = true }
]], "t.lua:2: on_change \"api_keys\": credentials: forgets the API keys the workers looked up, but the identity"
        .. " declares no api_key")
    end)

    it("{claim.NAME} only with a credential", function()
      fails_after_prelude([[endpoint "GET /x" { body = "{}", cache = { ttl = "1m", key = "x:{user}:{claim.plan}" } }]],
        't.lua:1: endpoint "GET /x": cache.key "x:{user}:{claim.plan}": {claim.plan} needs an identity block with a credential'
        .. ' (identity { jwt = { keys = "jwks.json" }, ... })')
    end)

    it("a tenant file's errors as the tenant's, without rejecting the set", function()
      local set = must_load(dsl.load({
        { path = "p/10-tiers.lua", source = 'tier "free" { limit = 1, window = "1h" }' },
        { path = "p/tenants/acme.lua", source = 'tier "free" { limit = 5, window = "1h" }', tenant = "acme" },
      }))
      assert.are.same({}, set.tenants)
      assert.are.same({
        acme = {
          'p/tenants/acme.lua:1: a tenant file needs an identity block in the main policy set that declares'
            .. ' tenant = header "X-Tenant-Id"',
        },
      }, set.tenant_errors)
    end)

    it("the errors of every file, in file and line order", function()
      local errs = errors_of(dsl.load({
        { path = "a.lua", source = 'tier "free" { limit = 1, window = "1h" }\n\nendpoint "GET /x" { body = 1 }\ntier "b" { limit = 0, window = "1h" }' },
        { path = "b.lua", source = 'endpoint "GET /y" { body = "y", cache = { ttl = "soon" } }' },
        { path = "c.lua", source = 'endpoint "GET /z" { body = "z" }' },
        { path = "d.lua", source = '\nupstream "u" { url = "nope" }' },
      }))
      assert.are.same({
        'a.lua:3: endpoint "GET /x": body: expected a string, got number 1',
        'a.lua:4: tier "b": limit: expected a positive whole number, got number 0',
        'b.lua:1: endpoint "GET /y": cache.ttl: bad duration "soon" (use e.g. "30s", "5m", "1h")',
        'd.lua:2: upstream "u": url: expected http[s]://HOST[:PORT][/PREFIX], got "nope"',
      }, errs)
    end)

    it("a Lua syntax error with the line Lua reports, and the other files' errors", function()
      local src = 'tier "free" { limit = 1, window = "1h" }\nendpoint "GET /x" {\n  body = "x"\n  limit = "tier"\n}\n'
      local _, lua_msg = load(src, "@broken.lua", "t", {})
      assert.matches("^broken%.lua:4: ", lua_msg)
      local errs = errors_of(dsl.load({
        { path = "broken.lua", source = src },
        { path = "ok.lua", source = 'tier "x" { limit = 0, window = "1h" }' },
      }))
      assert.are.same({ lua_msg, 'ok.lua:1: tier "x": limit: expected a positive whole number, got number 0' }, errs)
    end)

    it("a runtime error in a policy file at its line", function()
      fails('tier "free" { limit = 1, window = "1h" }\nlocal n = nil\nlocal x = n.field',
        "t.lua:3: attempt to index a nil value (local 'n')")
      fails('\nerror("no such plan")', "t.lua:2: no such plan")
      fails('\n\nerror({ code = 1 })', "t.lua:3: error object is a table value")
    end)

    it("a misspelt DSL name, with a suggestion", function()
      fails('tier "free" { limit = 1, window = "1h" }\nendpont "GET /x" { body = "x" }',
        "t.lua:2: unknown name 'endpont' (did you mean 'endpoint'?)")
    end)

    it("long paths in full, though Lua shortens chunk names", function()
      local path = "some/deeply/nested/directory/of/policies/for/one/team/and/another/10-tiers.lua"
      local errs = errors_of(dsl.load({ { path = path, source = "\nlocal x = nil + 1" } }))
      assert.are.same({ path .. ":2: attempt to perform arithmetic on a nil value" }, errs)
    end)
  end)

  describe("sandbox", function()
    for _, name in ipairs({
      "os", "io", "require", "load", "loadfile", "dofile", "debug", "package", "rawset", "rawget",
      "setmetatable", "getmetatable", "collectgarbage", "print", "coroutine", "xpcall", "_G",
    }) do
      it("has no " .. name, function()
        local errs = errors_of(load_one("local x = " .. name))
        assert.are.equal(1, #errs)
        assert.matches("^t%.lua:1: unknown name '" .. name .. "'", errs[1])
      end)
    end

    it("offers the safe basics", function()
      local set = set_of([[
local parts = {}
for i, v in ipairs({ 3, 1, 2 }) do parts[#parts + 1] = tostring(v * i) end
table.sort(parts)
assert(type(next({})) == "nil" and select("#", 1, 2) == 2 and tonumber("7") == 7)
assert(math.max(1, 5) == 5 and utf8.char(72) == "H" and unpack({ 1, 2 }) == 1)
assert(pcall(error, "x") == false)
for k in pairs({ a = 1 }) do parts[#parts + 1] = k end
endpoint "GET /x" { body = table.concat(parts, ",") .. ("!"):rep(2) }
]])
      assert.are.equal("2,3,6,a!!", set.endpoints[1].body)
    end)

    it("keeps the string library read-only, and the real one intact", function()
      fails('string.upper = function() return "pwned" end',
        "t.lua:1: the string library is read-only (cannot set string.upper)")
      fails("string.x = 1", "t.lua:1: the string library is read-only (cannot set string.x)")
      fails("math.pi = 3", "t.lua:1: the math library is read-only (cannot set math.pi)")
      fails("table.insert = nil", "t.lua:1: the table library is read-only (cannot set table.insert)")
      fails("utf8.char = nil", "t.lua:1: the utf8 library is read-only (cannot set utf8.char)")
      assert.are.equal("OK", string.upper("ok"))
      assert.are.equal(math.pi, 4 * math.atan(1))
    end)

    it("keeps the string metatable out of reach", function()
      local errs = errors_of(load_one('local mt = getmetatable("")\nmt.__index = {}'))
      assert.are.same({ "t.lua:1: unknown name 'getmetatable'" }, errs)
      errs = errors_of(load_one('("x").upper = 1'))
      assert.matches("^t%.lua:1: attempt to index a string value", errs[1])
      assert.are.equal("X", ("x"):upper())
    end)

    it("hides string.dump", function()
      fails('assert(string.dump == nil, "dump is there")\nlocal f = string.dump(print)',
        "t.lua:2: unknown name 'print'")
    end)

    it("gives each file its own globals", function()
      local errs = errors_of(dsl.load({
        { path = "a.lua", source = "shared = 1" },
        { path = "b.lua", source = "local x = shared" },
      }))
      assert.are.same({ "b.lua:1: unknown name 'shared'" }, errs)
    end)

    it("cannot change the values header and sql return", function()
      fails('local h = header "X"\nh.name = 5', "t.lua:2: header(...) values are read-only")
    end)

    it("stops an endless loop with the instruction budget", function()
      fails("local n = 0\nwhile true do n = n + 1 end", "t.lua:2: policy file exceeded its instruction budget")
    end)

    it("stops an endless loop inside pcall", function()
      fails("pcall(function()\n  while true do end\nend)\nendpoint 'GET /x' { body = 'x' }",
        "t.lua:2: policy file exceeded its instruction budget")
      assert.are.same({ "t.lua:1: policy file exceeded its instruction budget" },
        errors_of(load_one("while true do pcall(function() while true do end end) end", { budget = 100000 })))
      assert.are.same({ "t.lua:1: policy file exceeded its instruction budget" },
        errors_of(load_one("local function f() return pcall(f) end while true do pcall(f) end", { budget = 100000 })))
      assert.are.same({ "t.lua:1: policy file exceeded its instruction budget" },
        errors_of(load_one("table.sort({ 3, 2, 1 }, function() while true do end end)", { budget = 100000 })))
    end)

    it("counts the budget per file", function()
      local busy = "local n = 0 for i = 1, 60000 do n = n + i end"
      local set = must_load(dsl.load({
        { path = "a.lua", source = busy },
        { path = "b.lua", source = busy },
      }, { budget = 1000000 }))
      assert.is_table(set)
    end)
  end)

  describe("load_dir", function()
    local dir

    before_each(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p '" .. dir .. "/tenants' '" .. dir .. "/lib'"))
      local function write(name, text)
        local f = assert(io.open(dir .. "/" .. name, "w"))
        f:write(text)
        f:close()
      end
      write("20-b.lua", 'endpoint "GET /b" { body = "b" }')
      write("10-a.lua", 'endpoint "GET /a" { body = "a" }')
      write("README.md", "not a policy")
      write("lib/helper.lua", "this is not loaded")
    end)

    after_each(function()
      os.execute("rm -rf '" .. dir .. "'")
    end)

    it("loads dir/*.lua in name order", function()
      local set = must_load(dsl.load_dir(dir))
      assert.are.same({ { path = dir .. "/10-a.lua" }, { path = dir .. "/20-b.lua" } }, set.files)
      assert.are.same({ "GET /a", "GET /b" }, { set.endpoints[1].name, set.endpoints[2].name })
    end)

    it("passes tenants/*.lua as tenant files", function()
      local f = assert(io.open(dir .. "/tenants/acme.lua", "w"))
      f:write("")
      f:close()
      local files = assert(dsl.read_dir(dir .. "/"))
      assert.are.same({ dir .. "/10-a.lua", dir .. "/20-b.lua", dir .. "/tenants/acme.lua" },
        { files[1].path, files[2].path, files[3].path })
      assert.are.same({ nil, nil, "acme" }, { files[1].tenant, files[2].tenant, files[3].tenant })
    end)

    it("reports a directory without policy files", function()
      assert.are.same({ dir .. "/lib/nothing: no *.lua policy files" },
        errors_of(dsl.load_dir(dir .. "/lib/nothing")))
    end)
  end)
end)

describe("sluice.dsl https upstreams and endpoint deadlines", function()
  it("normalizes an https upstream: port 443 by default, its TLS files inside the directory", function()
    local set = set_of([[
upstream "a" { url = "https://api.example.com/v1" }
upstream "b" { url = "https://10.0.0.7:8443", ca_file = "./tls//ca.pem", cert_file = "client.pem",
               key_file = "client.key" }
]])
    local a, b = set.upstreams[1], set.upstreams[2]
    assert.are.same({ "api.example.com", 443, "api.example.com", "/v1", true },
      { a.host, a.port, a.host_header, a.prefix, a.tls })
    assert.is_nil(a.ca_file)
    assert.are.same({ "10.0.0.7", 8443, true, "tls/ca.pem", "client.pem", "client.key" },
      { b.host, b.port, b.tls, b.ca_file, b.cert_file, b.key_file })
  end)

  it("reports TLS files on an http upstream, half a client certificate, paths outside", function()
    fails([[
upstream "a" { url = "http://127.0.0.1:1", ca_file = "ca.pem" }
upstream "b" { url = "https://127.0.0.1:1", cert_file = "c.pem" }
upstream "c" { url = "https://127.0.0.1:1", ca_file = "../ca.pem" }
]], {
      't.lua:1: upstream "a": ca_file: only goes with an https:// url',
      't.lua:2: upstream "b": cert_file: a client certificate needs both cert_file and key_file',
      't.lua:3: upstream "c": ca_file: "../ca.pem" leaves the policy directory; name a file inside it',
    })
  end)

  it("normalizes an endpoint's own timeouts and an SQL endpoint's sql_timeout", function()
    local set = set_of([[
upstream "app" { url = "http://127.0.0.1:3000", timeout = "1s" }
endpoint "GET /slow" { upstream = "app", timeout = "3s", connect_timeout = "200ms" }
endpoint "GET /fast" { upstream = "app" }
endpoint "GET /q" { sql = "SELECT 1", sql_timeout = "100ms" }
]])
    local by = {}
    for _, e in ipairs(set.endpoints) do by[e.name] = e end
    assert.are.same({ 3000, 200 }, { by["GET /slow"].timeout_ms, by["GET /slow"].connect_timeout_ms })
    assert.is_nil(by["GET /fast"].timeout_ms)
    assert.are.same(100, by["GET /q"].sql_timeout_ms)
  end)

  it("reports a deadline on an endpoint it does not bound", function()
    fails_after_prelude([[
endpoint "GET /a" { sql = "SELECT 1", timeout = "1s" }
endpoint "GET /b" { upstream = "app", sql_timeout = "1s" }
endpoint "GET /c" { body = "x", connect_timeout = "1s" }
endpoint "GET /d" { upstream = "app", timeout = "soon" }
]], {
      't.lua:1: endpoint "GET /a": timeout: bounds an upstream\'s answer; this endpoint has no upstream'
        .. ' (its statement\'s deadline is sql_timeout = "...")',
      't.lua:2: endpoint "GET /b": sql_timeout: bounds an SQL statement; this endpoint has no sql'
        .. ' (an upstream\'s deadline is timeout = "...")',
      't.lua:3: endpoint "GET /c": connect_timeout: bounds an upstream\'s answer; this endpoint has no upstream',
      't.lua:4: endpoint "GET /d": timeout: bad duration "soon" (use e.g. "30s", "5m", "1h")',
    })
  end)
end)
