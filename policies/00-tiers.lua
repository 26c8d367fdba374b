-- 00-tiers.lua - the plans callers can be on, and the request budget of each.
--
-- This directory is a starting point: copy it, then add your endpoints.
-- Files load in name order into one policy set; `sluice check DIR` checks
-- them and reports problems as file:line.
--
-- A tier is a budget of requests per caller:
--   limit      how many requests ...
--   window     ... in any span of this long ("30s", "5m", "1h", "1d")
--   algorithm  optional: sliding_window (default, a close estimate in O(1)
--              memory), sliding_log (exact), token_bucket (with burst = N,
--              the most a caller may send at once) or fixed_window
--   mode       optional: "enforce" (default) or "shadow": a shadow tier is
--              counted and decided exactly as an enforced one, but never
--              refuses and never shows in RateLimit headers; its would-be
--              refusals show in GET /callers and the limit metrics. Switch
--              it to "enforce" later and it goes on from the same counts.
--
-- An endpoint that says `limit = "tier"` spends from the caller's tier
-- budget: one counter per caller, shared by every such endpoint. Answers
-- carry RateLimit headers; past the budget the answer is 429.

tier "free"         { limit = 100,    window = "1h" }
tier "starter"      { limit = 1000,   window = "1h" }
tier "professional" { limit = 10000,  window = "1h" }
tier "enterprise"   { limit = 100000, window = "1h" }
