-- tenants/acme.lua - the rules of the tenant "acme", and of no one else.
--
-- A request belongs to acme when its X-Tenant-Id header (10-identity.lua)
-- is "acme". This file changes, for acme's callers only, what the main
-- policy files say; every other tenant keeps the main rules. If this file
-- is broken, acme keeps the last version of it that loaded, and nobody
-- else notices.

-- acme pays for its whole workspace: its users on the free plan get 500
-- requests an hour instead of 100. The window stays the main tier's (1h).
tier "free" { limit = 500 }

-- acme's sales team edits contacts all day from several tools, some of
-- which write behind sluice's back: their contact list is reused for one
-- minute rather than five. (A tenant file may change only an endpoint's
-- cache.ttl and its limit.)
endpoint "GET /api/crm?type=contacts" {
  cache = { ttl = "1m" },
}

-- Hooks are small Lua functions run for each of acme's requests: when(req)
-- picks the requests, adjust(req, decision) changes what happens to them.
-- req holds method, path, query, headers (lower-case names), user, tenant,
-- tier, ip and endpoint; it is read-only. decision holds cost (how many
-- requests this one counts as), limits (name, limit, window in seconds of
-- each limit) and deny.

-- Reports are heavy for acme's data: each one counts as 5 requests against
-- every limit of the report endpoint.
hook "reports_cost_more" {
  when = function(req)
    return req.path:sub(1, 13) == "/api/reports/"
  end,
  adjust = function(req, decision)
    decision.cost = 5
  end,
}

-- acme's auth layer marks its read-only integrations with
-- "X-Acme-Access: read-only": they may read, but every write is refused
-- with 403 before it reaches the database.
hook "read_only_integrations" {
  when = function(req)
    return req.headers["x-acme-access"] == "read-only" and req.method ~= "GET" and req.method ~= "HEAD"
  end,
  adjust = function(req, decision)
    decision.deny = { status = 403, message = "acme read-only integrations cannot write" }
  end,
}
