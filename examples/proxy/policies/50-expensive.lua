-- 50-expensive.lua - the pipeline report: costly for the app, so limited harder.
--
-- Besides the tier budget, each user may run it at most 10 times a minute
-- (a cached answer counts too). CRM writes drop it with the user's lists.

endpoint "GET /api/reports/pipeline" {
  upstream = "app",
  cache = { ttl = "10m", key = "report:pipeline:{user}", tags = { "crm:{user}" } },
  limit = {
    "tier",
    { limit = 10, window = "1m", key = "expensive:{user}", algorithm = "sliding_log" },
  },
}
