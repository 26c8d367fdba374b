-- 00-tiers.lua - the CRM's plans and the request budget of each.
--
-- Every caller belongs to one tier (10-identity.lua says how sluice finds
-- it). An endpoint that says `limit = "tier"` spends from the caller's tier
-- budget: one counter per caller, shared by every such endpoint, so a free
-- user gets 100 requests an hour across the whole CRM, not 100 per endpoint.
--
-- The window slides: "100 per hour" means at most 100 in any 60 minutes,
-- not 100 per clock hour. Answers carry RateLimit headers that tell the
-- caller how much is left; past the budget the answer is 429.
--
-- The names are the values of users.plan in schema.sql.

tier "free"         { limit = 100,    window = "1h" }
tier "starter"      { limit = 1000,   window = "1h" }
tier "professional" { limit = 10000,  window = "1h" }
tier "enterprise"   { limit = 100000, window = "1h" }
