-- crm_jwt_policies_spec.lua - the CRM example with JWT identity (examples/crm/jwt/policies):
-- the CRM's own endpoints and limits, callers identified by verified tokens only.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"

local DIR = "examples/crm/jwt/policies"

describe("examples/crm/jwt/policies", function()
  local set, main
  setup(function()
    local errs
    set, errs = dsl.load_dir(DIR)
    assert(set, "does not load:\n" .. table.concat(errs or {}, "\n"))
    main = assert(dsl.load_dir("examples/crm/policies"))
  end)

  it("verifies ES256 tokens of the CRM's issuer, for the crm audience, and requires one", function()
    assert.are.same({ keys = { { jwks = "jwks.json" } }, issuer = "https://auth.crm.example",
      audience = "crm", leeway_ms = 30000, required = true }, set.identity.jwt)
  end)

  it("reads the caller from the token's claims, never from a header", function()
    assert.are.same({ claim = "sub", integer = true }, set.identity.user)
    assert.are.same({ claim = "org" }, set.identity.tenant)
    assert.are.same({ claim = "plan" }, set.identity.tier)
    assert.is_nil(set.identity.tier.sql)
  end)

  it("serves the CRM's endpoints with the CRM's keys and limits", function()
    assert.are.equal(#main.endpoints, #set.endpoints)
    for i, e in ipairs(main.endpoints) do
      assert.are.equal(e.name, set.endpoints[i].name)
      assert.are.same(e.cache, set.endpoints[i].cache)
      assert.are.same(e.limits, set.endpoints[i].limits)
    end
    assert.are.equal(1, #set.tenants)
    assert.are.equal("acme", set.tenants[1].name)
  end)
end)
