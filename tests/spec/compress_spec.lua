-- compress_spec.lua - compress: an endpoint's field and the set's default, normalized and checked.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local function load(src)
  return dsl.load({ { path = "t.lua", source = src } })
end

local function endpoints(src)
  local set, errs = load(src)
  assert(set, "expected the set to load, got:\n" .. table.concat(errs or {}, "\n"))
  local by = {}
  for _, e in ipairs(set.endpoints) do by[e.name] = e end
  return by
end

local function errors_of(src)
  local set, errs = load(src)
  assert.is_nil(set)
  return table.concat(errs, "\n")
end

describe("compress", function()
  it("is off unless asked for", function()
    local e = endpoints('endpoint "GET /a" { body = "x", cache = { ttl = "1m" } }')["GET /a"]
    assert.is_nil(e.compress)
  end)

  it("true makes every coding, br first, from 1 KiB", function()
    local e = endpoints('endpoint "GET /a" { body = "x", cache = { ttl = "1m" }, compress = true }')["GET /a"]
    assert.same({ codings = { "br", "zstd", "gzip" }, min_size = 1024 }, e.compress)
  end)

  it("the long form sets types, min_size and codings", function()
    local e = endpoints([[endpoint "GET /a" { body = "x", cache = { ttl = "1m" },
      compress = { types = { "Application/JSON", "text/*", "application/*+xml" }, min_size = "2k",
                   codings = { "gzip" } } }]])["GET /a"]
    assert.same({ codings = { "gzip" }, min_size = 2048,
                  types = { "application/json", "text/*", "application/*+xml" } }, e.compress)
  end)

  it("compress(...) is the default of the set's cached endpoints; an endpoint's own wins", function()
    local by = endpoints([[
compress { min_size = 100 }
endpoint "GET /a" { body = "x", cache = { ttl = "1m" } }
endpoint "GET /b" { body = "x", cache = { ttl = "1m" }, compress = false }
endpoint "GET /c" { body = "x", cache = { ttl = "1m" }, compress = { codings = { "br" } } }
endpoint "GET /d" { body = "x" }
endpoint "POST /e" { body = "x" }
]])
    assert.same({ codings = { "br", "zstd", "gzip" }, min_size = 100 }, by["GET /a"].compress)
    assert.is_nil(by["GET /b"].compress)
    assert.same({ codings = { "br" }, min_size = 1024 }, by["GET /c"].compress)
    assert.is_nil(by["GET /d"].compress) -- not cached: never compressed
    assert.is_nil(by["POST /e"].compress)
  end)

  it("reports wrong values with file:line", function()
    local msg = errors_of([[
endpoint "GET /a" { body = "x", cache = { ttl = "1m" }, compress = { codings = { "deflate" } } }
endpoint "GET /b" { body = "x", cache = { ttl = "1m" }, compress = { types = { "json" } } }
endpoint "GET /c" { body = "x", cache = { ttl = "1m" }, compress = { level = 9 } }
endpoint "GET /d" { body = "x", compress = true }
endpoint "GET /e" { body = "x", cache = { ttl = "1m" }, compress = "yes" }
compress(true)
compress(false)
]])
    assert.matches('t.lua:1: endpoint "GET /a": compress.codings: unknown coding string "deflate"', msg, 1, true)
    assert.matches('t.lua:2: endpoint "GET /b": compress.types: expected a media type', msg, 1, true)
    assert.matches("t.lua:3: endpoint \"GET /c\": compress: unknown field 'level'", msg, 1, true)
    assert.matches('t.lua:4: endpoint "GET /d": compress: applies to cached answers', msg, 1, true)
    assert.matches('t.lua:5: endpoint "GET /e": compress: expected a table', msg, 1, true)
    assert.matches("t.lua:7: compress: is already declared at t.lua:6", msg, 1, true)
  end)

  it("cannot be used in a tenant file", function()
    local set = dsl.load({
      { path = "p/00.lua", source = 'endpoint "GET /a" { body = "x", cache = { ttl = "1m" } }' },
      { path = "p/tenants/acme.lua", source = "compress(true)", tenant = "acme" },
    })
    assert.matches("compress cannot be used in a tenant file", set.tenant_errors.acme[1], 1, true)
  end)
end)
