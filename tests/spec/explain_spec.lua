-- `sluice explain` on the example policies: what a request gets, as the server would do it.
local json = require "dkjson"

local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
local DIR = "examples/crm/policies"

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs explain and returns the decoded JSON and the exit status.
local function explain(request, headers, extra)
  local cmd = { quote(BIN), "explain", quote(DIR), quote(request) }
  for _, h in ipairs(headers or {}) do
    cmd[#cmd + 1] = "-H " .. quote(h)
  end
  for _, a in ipairs(extra or {}) do
    cmd[#cmd + 1] = quote(a)
  end
  local p = assert(io.popen(table.concat(cmd, " ") .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  local doc, _, err = json.decode(out)
  assert(doc, "not JSON (" .. tostring(err) .. "): " .. out)
  return doc, ok and 0 or code
end

local function by_name(limits)
  local t = {}
  for _, l in ipairs(limits) do
    t[l.name] = l
  end
  return t
end

describe("sluice explain on examples/crm", function()
  it("names the endpoint, its file and line, and the policy generation", function()
    local e, code = explain("GET /api/crm?type=contacts", { "X-User-Id: 42" })
    assert.are.equal(0, code)
    assert.are.equal("GET /api/crm?type=contacts", e.endpoint.name)
    assert.matches("20%-crm%.lua$", e.endpoint.file)
    assert.is_true(e.endpoint.line > 0)
    assert.are.equal(1, e.generation)
  end)

  it("gives a free user 100 per hour under one counter per caller", function()
    local e = explain("GET /api/crm?type=contacts", { "X-User-Id: 42" }, { "--tier", "free" })
    local free = by_name(e.limits).free
    assert.are.same({ 100, 3600, "tier:u:42", "sliding_window" },
      { free.limit, free.window_seconds, free.key, free.algorithm })
  end)

  it("shows the contacts cache: 5 minutes, private key, crm tag", function()
    local e = explain("GET /api/crm?type=contacts", { "X-User-Id: 42" })
    assert.are.equal(300, e.cache.ttl_seconds)
    assert.are.equal("crm:contacts:42", e.cache.key)
    assert.are.same({ "crm:42" }, e.cache.tags)
    assert.is_false(e.cache.shared)
  end)

  it("shows the expensive endpoint's extra limit of 10 per minute", function()
    local e = explain("GET /api/reports/pipeline", { "X-User-Id: 42" }, { "--tier", "enterprise" })
    local l = by_name(e.limits)
    assert.are.equal(100000, l.enterprise.limit)
    assert.are.same({ 10, 60, "expensive:42", "sliding_log" },
      { l.expensive.limit, l.expensive.window_seconds, l.expensive.key, l.expensive.algorithm })
  end)

  it("lists what a write invalidates", function()
    local e = explain("POST /api/crm/contacts", { "X-User-Id: 42" },
      { "-d", '{"name":"Ada","email":"ada@example.com"}' })
    table.sort(e.invalidate)
    assert.are.same({ "crm:42", "dash:42" }, e.invalidate)
    assert.is_nil(next(e.cache or {}))
  end)

  -- explain runs the request path's own steps: what the server refuses, explain refuses.
  it("refuses a write without the JSON body the server needs, with the server's 400", function()
    local e = explain("POST /api/crm/contacts", { "X-User-Id: 42" })
    assert.are.equal(400, e.status)
    assert.matches("needs a JSON object body", e.detail)
    assert.is_nil(e.invalidate)
  end)

  it("refuses a body with a duplicate key as the server does, and invalidates nothing", function()
    local e = explain("POST /api/crm/contacts", { "X-User-Id: 42" },
      { "-d", '{"name":"a","name":"b","email":"c"}' })
    assert.are.equal(400, e.status)
    assert.matches("duplicate object key", e.detail)
    assert.is_nil(e.invalidate)
  end)

  it("uses a whole-number user in its canonical form in every key", function()
    local e = explain("GET /api/dashboard", { "X-User-Id: +007" })
    assert.are.equal("7", e.caller.user)
    assert.matches(":7$", e.cache.key)
    assert.are.equal("tier:u:7", e.limits[1].key)
  end)

  it("refuses a user that is not a whole number, or given twice, as the server does", function()
    local e = explain("GET /api/dashboard", { "X-User-Id: a:b%" })
    assert.are.equal(400, e.status)
    assert.are.equal("the identity header X-User-Id is not a whole number (a 64-bit integer in decimal)",
      e.detail)
    e = explain("GET /api/dashboard", { "X-User-Id: 7", "x-user-id: 8" })
    assert.are.equal(400, e.status)
    assert.are.equal("the identity header X-User-Id is given more than once", e.detail)
  end)

  it("limits anonymous callers by address", function()
    local e = explain("GET /api/dashboard", nil, { "--ip", "10.1.2.3" })
    assert.is_true(e.caller.user == nil or e.caller.user == json.null)
    assert.are.equal("tier:ip:10.1.2.3", by_name(e.limits).free.key)
  end)

  it("applies a tenant's overrides", function()
    local plain = explain("GET /api/crm?type=contacts", { "X-User-Id: 5" })
    local acme = explain("GET /api/crm?type=contacts", { "X-User-Id: 5", "X-Tenant-Id: acme" })
    assert.are.equal("acme", acme.tenant.name)
    assert.is_true(acme.tenant.tier_override)
    assert.are_not.equal(plain.limits[1].limit, acme.limits[1].limit)
  end)

  it("answers 404 for a path no endpoint has", function()
    local e = explain("GET /nowhere")
    assert.are.equal(404, e.status)
  end)
end)
