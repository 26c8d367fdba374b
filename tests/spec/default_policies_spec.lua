-- default_policies_spec.lua - the starting policy set in policies/.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local DIR = "policies"

local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("a")
  f:close()
  return text
end

local function must_load(set, errs)
  assert(set, "does not load:\n" .. table.concat(errs or {}, "\n"))
  return set
end

describe("policies/", function()
  local set

  setup(function()
    set = must_load(dsl.load_dir(DIR))
  end)

  it("has the four tiers, per hour", function()
    local got = {}
    for _, t in ipairs(set.tiers) do
      got[#got + 1] = { t.name, t.limit, t.window_ms }
    end
    assert.are.same({
      { "free", 100, 3600000 },
      { "starter", 1000, 3600000 },
      { "professional", 10000, 3600000 },
      { "enterprise", 100000, 3600000 },
    }, got)
  end)

  it("has the same tiers as the CRM example", function()
    local crm = must_load(dsl.load_dir("examples/crm/policies"))
    local function strip(tiers)
      local out = {}
      for i, t in ipairs(tiers) do
        out[i] = { t.name, t.limit, t.window_ms, t.algorithm, t.burst }
      end
      return out
    end
    assert.are.same(strip(crm.tiers), strip(set.tiers))
  end)

  it("identifies callers by trusted headers, anonymous ones on the free tier", function()
    assert.are.same({
      user = { header = "X-User-Id" },
      tenant = { header = "X-Tenant-Id" },
      tier = { header = "X-User-Plan", trusted = true },
      tier_ttl_ms = 60000,
      default_tier = "free",
      file = DIR .. "/10-identity.lua",
      line = set.identity.line,
    }, set.identity)
  end)

  it("answers a health check, neither cached nor limited", function()
    assert.are.equal(1, #set.endpoints)
    local e = set.endpoints[1]
    assert.are.same({ "GET /healthz", "static", 200, "application/json" }, { e.name, e.source, e.status, e.content_type })
    assert.is_nil(e.cache)
    assert.are.same({}, e.limits)
  end)

  -- The examples in the comments of 20-endpoints.lua are meant to be
  -- copied: they must load as written.
  it("documents endpoint examples that load", function()
    local text = read(DIR .. "/20-endpoints.lua")
    local examples = text:match("%-%- Examples[^\n]*\n(.-)\n[^\n]*%-%- A liveness")
    assert.is_string(examples)
    local code = {}
    for line in examples:gmatch("[^\n]*") do
      local stripped = line:match("^%-%-   (.*)$")
      if stripped then
        code[#code + 1] = stripped
      end
    end
    assert.is_true(#code > 5)
    local files = {}
    for _, name in ipairs({ "00-tiers.lua", "10-identity.lua" }) do
      files[#files + 1] = { path = DIR .. "/" .. name, source = read(DIR .. "/" .. name) }
    end
    files[#files + 1] = { path = "examples.lua", source = table.concat(code, "\n") }
    local with_examples = must_load(dsl.load(files))
    local names = {}
    for i, e in ipairs(with_examples.endpoints) do
      names[i] = e.name
    end
    assert.are.same({ "GET /api/notes", "POST /api/notes" }, names)
    assert.are.same({ "notes:{user}" }, with_examples.endpoints[2].invalidate)
  end)

  it("documents an SQL tier lookup that loads", function()
    local text = read(DIR .. "/10-identity.lua")
    local alt = {}
    for line in text:gmatch("[^\n]+") do
      local code = line:match("^%s*%-%-%s+(tier[%w_]* +=.*)$")
      if code then
        alt[#alt + 1] = code
      end
    end
    assert.are.equal(2, #alt)
    local src = 'tier "free" { limit = 1, window = "1h" }\nidentity {\n  user = header "X-User-Id",\n  '
      .. table.concat(alt, "\n  ") .. "\n}"
    local s = must_load(dsl.load({ { path = "alt.lua", source = src } }))
    assert.are.same({ "{user}" }, s.identity.tier.args)
    assert.are.equal(60000, s.identity.tier_ttl_ms)
  end)
end)
