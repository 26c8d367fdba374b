-- 30-crm.lua - the CRM's lists and the writes that change them, served by the app.
--
-- Reading: GET /api/crm?type=contacts (or projects, deals, interactions) is
-- forwarded to the app once, then answered from the cache for 5 minutes per
-- user (X-Cache: HIT, with Age and the app's ETag; If-None-Match answers 304
-- from the cache). The app says `Cache-Control: max-age=300`: sluice keeps an
-- answer for the policy's ttl or the app's max-age, whichever is shorter, and
-- never stores an answer that is an error, sets a cookie or says private or
-- no-store.
--
-- Writing: POST, PUT, PATCH and DELETE are forwarded as they are; when the
-- app answers 2xx, the caller's CRM lists and dashboard are dropped from the
-- cache (the tags below), so the next read shows the write. A refused write
-- (4xx, 5xx) drops nothing.
--
-- Every key holds {user}: one user's answer is never served to another. The
-- app scopes its SQL by the same X-User-Id, which sluice forwards.

local CRM_WRITE = { "crm:{user}", "dash:{user}" }

-- Users whose lists are filled in the background when sluice starts and after
-- every reload, so even their first request is a cache hit.
local WARM = { { user = "1" }, { user = "2" }, { user = "3" }, { user = "4" } }

for _, kind in ipairs({ "contacts", "projects", "deals", "interactions" }) do
  endpoint ("GET /api/crm?type=" .. kind) {
    upstream = "app",
    cache = { ttl = "5m", key = "crm:" .. kind .. ":{user}", tags = { "crm:{user}" }, warm = WARM },
    limit = "tier",
  }
end

-- Writes. contacts, projects and deals can be created, replaced, changed and
-- deleted; the app answers the written row, or 404 for a row that is not the
-- caller's.
for _, kind in ipairs({ "contacts", "projects", "deals" }) do
  endpoint ("POST /api/crm/" .. kind) { upstream = "app", invalidate = CRM_WRITE, limit = "tier" }
  for _, method in ipairs({ "PUT", "PATCH", "DELETE" }) do
    endpoint (method .. " /api/crm/" .. kind .. "/{id}") {
      upstream = "app", invalidate = CRM_WRITE, limit = "tier",
    }
  end
end
