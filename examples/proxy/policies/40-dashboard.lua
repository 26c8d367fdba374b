-- 40-dashboard.lua - the dashboard's panels, served by the app.
--
-- Each panel is cached per user for as long as it may lag: the headline
-- numbers 3 minutes, the inbox 1 minute, agents and the activity feed 5
-- minutes. Every entry is tagged "dash:{user}", which every CRM write
-- (30-crm.lua) drops.
--
-- The dashboard is the page users open first, so it is never slow because
-- of the cache:
--   stale_while_revalidate  for 30 s past its ttl an entry is still answered
--                           at once (X-Cache: STALE) while one request in the
--                           background refreshes it from the app
--   stale_if_error          for 10 minutes past its ttl an entry is answered
--                           (X-Cache: STALE) when the app is down, slow past
--                           its timeout, or answers 5xx
--   warm                    the enterprise users' panels are filled when
--                           sluice starts and after every reload

local function panel(ttl, key)
  return {
    ttl = ttl,
    key = "dash:" .. key .. ":{user}",
    tags = { "dash:{user}" },
    stale_while_revalidate = "30s",
    stale_if_error = "10m",
    warm = sql("SELECT id::text AS user_id FROM users WHERE plan = 'enterprise' ORDER BY users.id LIMIT 10"),
  }
end

endpoint "GET /api/dashboard" {
  upstream = "app",
  cache = panel("3m", "stats"),
  limit = "tier",
}

endpoint "GET /api/dashboard/messages" {
  upstream = "app",
  cache = panel("1m", "messages"),
  limit = "tier",
}

endpoint "GET /api/dashboard/agents" {
  upstream = "app",
  cache = panel("5m", "agents"),
  limit = "tier",
}

endpoint "GET /api/dashboard/events" {
  upstream = "app",
  cache = panel("5m", "events"),
  limit = "tier",
}
