-- route_conflicts_spec.lua - duplicate and ambiguous routes: the validator's indexed search
-- names the same earlier route as comparing every pair would, also among 10,000 routes.
package.path = "lua/?.lua;" .. package.path

local dsl = require "sluice.dsl"
local validate = require "sluice.validate"

-- The messages a policy file with these endpoint names (one a line, from line 1) gets from
-- the rule as it reads: each route against every route declared before it, in order; the
-- first one with the same method and shape whose pins equal its own is a duplicate, or failing
-- that, with as many pins, none of them pinned to another value, an ambiguity.
local function pairwise_messages(names)
  local routes, out = {}, {}
  local function pin_map(pins)
    local m = {}
    for _, p in ipairs(pins) do m[p.name] = p.value end
    return m
  end
  for i, name in ipairs(names) do
    local r = assert(validate.parse_route(name))
    local mine = pin_map(r.pins)
    for j, o in ipairs(routes) do
      if o.method == r.method and o.shape == r.shape and #o.pins == #r.pins then
        local theirs, same, compatible = pin_map(o.pins), true, true
        for k, v in pairs(mine) do
          if theirs[k] ~= v then same = false end
          if theirs[k] ~= nil and theirs[k] ~= v then compatible = false end
        end
        if same then
          out[#out + 1] = ('t.lua:%d: endpoint "%s": is already declared at t.lua:%d'):format(i, name, j)
          break
        elseif compatible then
          out[#out + 1] = ('t.lua:%d: endpoint "%s": is ambiguous with "%s" (t.lua:%d): one request '
            .. 'can match both; pin the same query parameters on both'):format(i, name, names[j], j)
          break
        end
      end
    end
    routes[i] = r
  end
  return out
end

-- The messages the DSL gives a file declaring these endpoints, one a line ({} when it loads).
local function dsl_messages(names)
  local lines = {}
  for i, name in ipairs(names) do
    lines[i] = ('endpoint "%s" { body = "{}" }'):format(name)
  end
  local set, errs = dsl.load({ { path = "t.lua", source = table.concat(lines, "\n") .. "\n" } })
  if set then return {} end
  return errs
end

describe("route conflicts", function()
  it("name the same earlier route as comparing every pair does, on random sets", function()
    -- Few methods, shapes, names and values, so that duplicates, ambiguities and routes that
    -- only look alike (other pins, other values, parameter names aside) all come up, and
    -- routes in one bucket pin different sets of names.
    local methods = { "GET", "GET", "POST", "HEAD" }
    local paths = { "/a", "/a/{id}", "/a/{x}", "/a/b", "/c/*", "/a/" }
    local pnames = { "p", "q", "r", "s" }
    local values = { "1", "2" }
    math.randomseed(20240611)
    local conflicts = 0
    for _ = 1, 300 do
      local names = {}
      for i = 1, math.random(2, 14) do
        local pins, used = {}, {}
        for _ = 1, math.random(0, 3) do
          local n = pnames[math.random(#pnames)]
          if not used[n] then
            used[n] = true
            pins[#pins + 1] = n .. "=" .. values[math.random(#values)]
          end
        end
        names[i] = methods[math.random(#methods)] .. " " .. paths[math.random(#paths)]
          .. (#pins > 0 and ("?" .. table.concat(pins, "&")) or "")
      end
      local want = pairwise_messages(names)
      conflicts = conflicts + #want
      assert.are.same(want, dsl_messages(names))
    end
    assert.is_true(conflicts > 100) -- the sets did exercise the checks
  end)

  it("the earliest of several conflicting routes, in another group of pinned names", function()
    -- Line 4 pins p=1 and r=1: it conflicts with line 3 (same names and values), and with
    -- line 1 (q is not r, p agrees), declared earlier, which is the one named.
    local names = { "GET /x?p=1&q=1", "GET /x?p=2&r=1", "GET /x?p=1&r=1", "GET /x?p=1&r=1" }
    assert.are.same(pairwise_messages(names), dsl_messages(names))
    assert.are.same({
      't.lua:3: endpoint "GET /x?p=1&r=1": is ambiguous with "GET /x?p=1&q=1" (t.lua:1): one request '
        .. 'can match both; pin the same query parameters on both',
      't.lua:4: endpoint "GET /x?p=1&r=1": is ambiguous with "GET /x?p=1&q=1" (t.lua:1): one request '
        .. 'can match both; pin the same query parameters on both',
    }, dsl_messages(names))
  end)

  it("a duplicate and an ambiguity among 10,000 routes", function()
    local names = {}
    for i = 1, 9997 do
      local k = i % 4
      if k == 0 then
        names[i] = "GET /api/r" .. i
      elseif k == 1 then
        names[i] = "GET /api/r" .. i .. "/{id}"
      elseif k == 2 then
        names[i] = "POST /api/r" .. i .. "/{id}/items"
      else
        names[i] = "GET /api/search?type=t" .. i -- 2,500 pinned values on one path
      end
    end
    names[9998] = "GET /api/r101/{key}" -- the route of line 101, parameter names aside
    names[9999] = "GET /api/search?kind=k" -- one query can match it and line 3
    names[10000] = "GET /api/search?type=t9999" -- a route reported already still counts
    assert.are.same({
      't.lua:9998: endpoint "GET /api/r101/{key}": is already declared at t.lua:101',
      't.lua:9999: endpoint "GET /api/search?kind=k": is ambiguous with "GET /api/search?type=t3" '
        .. '(t.lua:3): one request can match both; pin the same query parameters on both',
      't.lua:10000: endpoint "GET /api/search?type=t9999": is ambiguous with "GET /api/search?kind=k" '
        .. '(t.lua:9999): one request can match both; pin the same query parameters on both',
    }, dsl_messages(names))
  end)

  it("10,000 routes that only look alike load", function()
    local names = {}
    for i = 1, 10000 do
      names[i] = ({ "GET", "POST", "PUT", "DELETE" })[i % 4 + 1] .. " /api/r" .. (i // 4)
        .. "/{id}?v=" .. (i % 7)
    end
    assert.are.same({}, dsl_messages(names))
  end)
end)
