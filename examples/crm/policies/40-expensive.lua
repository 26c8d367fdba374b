-- 40-expensive.lua - an endpoint costly enough to need its own, stricter limit.
--
-- The pipeline report aggregates all of a user's deals and the interactions
-- with their contacts. Besides the tier budget, each user may run it at most
-- 10 times a minute. Both limits apply: a request is admitted only when both
-- admit it, and only then does either count it.
--
-- The extra limit:
--   limit      10 requests ...
--   window     ... in any minute
--   key        what is counted: one counter per user ({user}); every endpoint
--              using the key "expensive:{user}" shares this counter
--   algorithm  sliding_log keeps the time of every admitted request, so the
--              limit is exact (the default, sliding_window, approximates)
--
-- The answer is cached as well, and a cached answer still counts against
-- both limits. CRM writes drop it with the rest of the user's CRM data.

endpoint "GET /api/reports/pipeline" {
  sql = [[
    WITH d AS (
      SELECT stage, amount, contact_id
      FROM deals
      WHERE owner_id = $1::bigint
    )
    SELECT d.stage,
           count(*)                      AS deals,
           sum(d.amount)                 AS total,
           round(avg(d.amount), 2)       AS average,
           count(DISTINCT d.contact_id)  AS contacts,
           (SELECT count(*)
            FROM interactions i
            WHERE i.owner_id = $1::bigint
              AND i.contact_id IN (SELECT contact_id FROM d AS s WHERE s.stage = d.stage))
                                         AS interactions
    FROM d
    GROUP BY d.stage
    ORDER BY array_position(ARRAY['lead', 'qualified', 'proposal', 'negotiation', 'won', 'lost'],
                            d.stage)
  ]],
  args  = { "{user}" },
  cache = { ttl = "10m", key = "report:pipeline:{user}", tags = { "crm:{user}" } },
  limit = {
    "tier",
    { limit = 10, window = "1m", key = "expensive:{user}", algorithm = "sliding_log" },
  },
}
