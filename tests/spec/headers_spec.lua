-- headers_spec.lua - cors and the header rules: normalized forms and each refusal, file:line.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local PRELUDE = [[
identity { user = header "X-User-Id", tier = header("X-Plan", { trusted = true }) }
tier "free" { limit = 100, window = "1h" }
upstream "app" { url = "http://127.0.0.1:3000", request_headers = { ["X-Source"] = "sluice", ["X-A"] = "up" },
  response_headers = { Server = false } }
]]

local function load(src)
  return dsl.load({ { path = "00.lua", source = PRELUDE }, { path = "t.lua", source = src } })
end

local function set_of(src)
  local set, errs = load(src)
  assert(set, "expected the set to load, got:\n" .. table.concat(errs or {}, "\n"))
  return set
end

local function fails(src, expected)
  if type(expected) == "string" then expected = { expected } end
  local set, errs = load(src)
  assert.is_nil(set)
  assert.are.same(expected, errs)
end

describe("cors", function()
  it("normalizes an endpoint's cors", function()
    local e = set_of([[
endpoint "GET /a" { body = "{}", cors = { origins = { "https://app.example.com", "http://localhost:5173" },
  methods = { "GET", "POST" }, headers = { "Content-Type" }, expose = { "X-Cache" }, credentials = true,
  max_age = "10m" } }
]]).endpoints[1]
    assert.are.same({
      origins = { "https://app.example.com", "http://localhost:5173" }, methods = { "GET", "POST" },
      headers = { "Content-Type" }, expose = { "X-Cache" }, credentials = true, max_age_s = 600,
    }, e.cors)
  end)

  it("gives the set's cors { } to every endpoint but those with their own or cors = false", function()
    local set = set_of([[
cors { origins = "*", headers = "*" }
endpoint "GET /a" { body = "{}" }
endpoint "GET /b" { body = "{}", cors = false }
endpoint "GET /c" { body = "{}", cors = { origins = { "https://x.example" } } }
]])
    assert.are.same({ any_origin = true, headers_any = true, credentials = false }, set.endpoints[1].cors)
    assert.is_nil(set.endpoints[2].cors)
    assert.are.same({ origins = { "https://x.example" }, credentials = false }, set.endpoints[3].cors)
  end)

  it("refuses credentials with origins = \"*\" (Fetch standard, CORS protocol and credentials)", function()
    fails([[endpoint "GET /a" { body = "{}", cors = { origins = "*", credentials = true } }]],
      't.lua:1: endpoint "GET /a": cors.credentials: true cannot go with origins = "*": a browser refuses'
      .. ' credentials for any origin (Fetch standard, CORS protocol and credentials); list the origins')
  end)

  it("refuses malformed origins: scheme://host[:port], lowercase, no path", function()
    fails([[
endpoint "GET /a" { body = "{}", cors = { origins = { "https://app.example.com/", "app.example.com",
  "https://App.example.com", "https://a.example:99999", "https://a.example/x" } } }
]], {
      't.lua:1: endpoint "GET /a": cors.origins[1]: "https://app.example.com/" is not an origin: may not hold'
        .. " a path, query or fragment (not even a trailing '/')",
      't.lua:1: endpoint "GET /a": cors.origins[2]: "app.example.com" is not an origin: expected scheme://host[:port]',
      't.lua:1: endpoint "GET /a": cors.origins[3]: "https://App.example.com" is not an origin: must be lowercase,'
        .. " as browsers send it",
      't.lua:1: endpoint "GET /a": cors.origins[4]: "https://a.example:99999" is not an origin: the port must be'
        .. " a number from 1 to 65535",
      't.lua:1: endpoint "GET /a": cors.origins[5]: "https://a.example/x" is not an origin: may not hold a path,'
        .. " query or fragment (not even a trailing '/')",
    })
  end)

  it("refuses a cors without origins, unknown fields and a second cors block", function()
    fails([[
cors { origins = { "https://a.example" } }
cors { methods = { "GET" }, max = 1 }
]], {
      't.lua:2: cors: is already declared at t.lua:1; a policy set has one cors block (an endpoint may'
        .. " have its own cors = { ... })",
    })
    fails([[endpoint "GET /a" { body = "{}", cors = { methods = { "GET" }, max = 1 } }]], {
      't.lua:1: endpoint "GET /a": cors: unknown field "max" (cors takes origins, methods, headers, expose,'
        .. " credentials, max_age)",
      't.lua:1: endpoint "GET /a": cors.origins: is required: a list such as { "https://app.example.com" }, or "*"',
    })
  end)

  it("cannot be set from a tenant file", function()
    local main = 'identity { user = header "X-User-Id", tenant = header "X-Tenant-Id" }\n'
      .. 'endpoint "GET /a" { body = "{}" }'
    local set = dsl.load({ { path = "00.lua", source = main },
      { path = "p/tenants/acme.lua", source = 'endpoint "GET /a" { cors = false }', tenant = "acme" } })
    assert.matches('^p/tenants/acme.lua:1: endpoint "GET /a": cors: cannot be changed here',
      set.tenant_errors.acme[1])
  end)
end)

describe("header rules", function()
  it("apply the endpoint's after its upstream's, sorted by name", function()
    local e = set_of([[
endpoint "GET /a" { upstream = "app", request_headers = { ["X-A"] = false, ["X-Caller"] = "u-{user}" },
  response_headers = { ["Cache-Control"] = "public, max-age=60" } }
]]).endpoints[1]
    assert.are.same({ { name = "X-A", remove = true }, { name = "X-Caller", value = "u-{user}" },
      { name = "X-Source", value = "sluice" } }, e.request_headers)
    assert.are.same({ { name = "Cache-Control", value = "public, max-age=60" }, { name = "Server", remove = true } },
      e.response_headers)
  end)

  it("refuse identity fields (RFC 9110 11.6.2 Authorization, the identity block's headers)", function()
    fails([[
endpoint "GET /a" { upstream = "app", request_headers = { Authorization = false, ["x-user-id"] = "1",
  ["X-Plan"] = "pro", Cookie = false, ["X-API-Key"] = "k" } }
]], {
      't.lua:1: endpoint "GET /a": request_headers["Authorization"]: "Authorization" cannot be set or removed'
        .. " here: it carries the caller's credential",
      't.lua:1: endpoint "GET /a": request_headers["Cookie"]: "Cookie" cannot be set or removed here: it'
        .. " carries the caller's credential",
      't.lua:1: endpoint "GET /a": request_headers["X-API-Key"]: "X-API-Key" cannot be set or removed here: it'
        .. " carries the caller's credential",
      't.lua:1: endpoint "GET /a": request_headers["X-Plan"]: "X-Plan" cannot be set or removed here: it is read'
        .. " by the identity block (tier)",
      't.lua:1: endpoint "GET /a": request_headers["x-user-id"]: "x-user-id" cannot be set or removed here: it is'
        .. " read by the identity block (user)",
    })
  end)

  it("refuse hop-by-hop and framing fields (RFC 9110 7.6.1)", function()
    fails([[
upstream "b" { url = "http://127.0.0.1:3001", request_headers = { Connection = false, ["Proxy-Foo"] = "x",
  Host = "h", ["Content-Length"] = "1", TE = false, Upgrade = false, ["Keep-Alive"] = false,
  Trailer = false, ["Transfer-Encoding"] = false } }
]], (function()
      local out = {}
      for _, n in ipairs({ "Connection", "Content-Length", "Host", "Keep-Alive", "Proxy-Foo", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade" }) do
        out[#out + 1] = 't.lua:1: upstream "b": request_headers["' .. n .. '"]: "' .. n .. '" cannot be set or'
          .. " removed here: it is hop-by-hop or framing (RFC 9110 section 7.6.1) and belongs to each connection"
      end
      return out
    end)())
  end)

  it("refuse fields sluice writes, bad names and values with CR, LF or NUL", function()
    fails([[
endpoint "GET /a" { body = "{}", response_headers = { ["X-Cache"] = false, ["Access-Control-Allow-Origin"] = "*",
  ["Bad Name"] = "x", ["X-B"] = "a\r\nb", ["X-C"] = 1, ["X-D"] = "{nope}" } }
]], {
      't.lua:1: endpoint "GET /a": response_headers["Access-Control-Allow-Origin"]: "Access-Control-Allow-Origin"'
        .. " cannot be set or removed here: it is written by sluice from cors = { ... }",
      't.lua:1: endpoint "GET /a": response_headers: expected a header field name (an RFC 9110 token), got "Bad Name"',
      't.lua:1: endpoint "GET /a": response_headers["X-B"]: the value may not hold CR, LF or NUL',
      't.lua:1: endpoint "GET /a": response_headers["X-C"]: expected a value (a template string such as "{user}")'
        .. " or false to remove the field, got 1",
      't.lua:1: endpoint "GET /a": response_headers["X-Cache"]: "X-Cache" cannot be set or removed here: it is'
        .. " written by sluice itself",
      't.lua:1: endpoint "GET /a": response_headers["X-D"] "{nope}": unknown variable {nope}',
    })
  end)

  it("refuse {query...} and {body.NAME} in values", function()
    fails([[endpoint "POST /a" { upstream = "app", request_headers = { ["X-Q"] = "{query.x}", ["X-B"] = "{body.y}" } }]], {
      't.lua:1: endpoint "POST /a": request_headers["X-B"] "{body.y}": {body.y} is not available in a header value'
        .. " (use {user}, {tenant}, {tier}, {ip}, {method}, {route}, {path.NAME}, {header.NAME} or {claim.NAME})",
      't.lua:1: endpoint "POST /a": request_headers["X-Q"] "{query.x}": {query.x} is not available in a header value'
        .. " (use {user}, {tenant}, {tier}, {ip}, {method}, {route}, {path.NAME}, {header.NAME} or {claim.NAME})",
    })
  end)

  it("refuse request_headers on an endpoint without an upstream", function()
    fails([[endpoint "GET /a" { sql = "SELECT 1", request_headers = { ["X-A"] = "b" } }]],
      't.lua:1: endpoint "GET /a": request_headers: only goes with upstream = "NAME": no other source sends a request')
  end)
end)
