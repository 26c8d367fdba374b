-- 30-dashboard.lua - the dashboard's panels.
--
-- Each panel is cached per user for as long as it may lag: the headline
-- numbers 3 minutes, the inbox 1 minute, agents and the activity feed 5
-- minutes. Every entry is tagged "dash:{user}", which every CRM write
-- (20-crm.lua) and every change seen in the database (50-changes.lua)
-- drops, so a user's own edits show at once.

-- The headline numbers, one JSON object (`one = true`): counts and sums
-- over everything the user owns.
endpoint "GET /api/dashboard" {
  sql = [[
    SELECT
      (SELECT count(*) FROM contacts WHERE owner_id = $1::bigint)                  AS contacts,
      (SELECT count(*) FROM projects WHERE owner_id = $1::bigint
                                       AND status = 'active')                      AS active_projects,
      (SELECT coalesce(sum(budget), 0) FROM projects WHERE owner_id = $1::bigint
                                                      AND status = 'active')       AS active_budget,
      (SELECT count(*) FROM deals WHERE owner_id = $1::bigint AND NOT closed)      AS open_deals,
      (SELECT coalesce(sum(amount), 0) FROM deals WHERE owner_id = $1::bigint
                                                    AND NOT closed)                AS pipeline_value,
      (SELECT coalesce(sum(amount), 0) FROM deals WHERE owner_id = $1::bigint
                                                    AND stage = 'won')             AS won_value,
      (SELECT count(*) FROM interactions WHERE owner_id = $1::bigint)              AS interactions,
      (SELECT count(*) FROM messages WHERE owner_id = $1::bigint AND NOT read)     AS unread_messages,
      (SELECT count(*) FROM agents WHERE owner_id = $1::bigint
                                     AND status = 'running')                       AS running_agents
  ]],
  args  = { "{user}" },
  one   = true,
  cache = { ttl = "3m", key = "dash:stats:{user}", tags = { "dash:{user}" } },
  limit = "tier",
}

-- The inbox: the 20 newest messages, unread ones first.
endpoint "GET /api/dashboard/messages" {
  sql = [[
    SELECT id, body, read, created_at
    FROM messages
    WHERE owner_id = $1::bigint
    ORDER BY read, created_at DESC, id DESC
    LIMIT 20
  ]],
  args  = { "{user}" },
  cache = { ttl = "1m", key = "dash:messages:{user}", tags = { "dash:{user}" } },
  limit = "tier",
}

-- The user's AI agents and their state.
endpoint "GET /api/dashboard/agents" {
  sql = [[
    SELECT id, name, status, config
    FROM agents
    WHERE owner_id = $1::bigint
    ORDER BY name, id
  ]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "dash:agents:{user}", tags = { "dash:{user}" } },
  limit = "tier",
}

-- The activity feed: the 50 newest events.
endpoint "GET /api/dashboard/events" {
  sql = [[
    SELECT id, kind, payload, created_at
    FROM events
    WHERE owner_id = $1::bigint
    ORDER BY created_at DESC, id DESC
    LIMIT 50
  ]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "dash:events:{user}", tags = { "dash:{user}" } },
  limit = "tier",
}
