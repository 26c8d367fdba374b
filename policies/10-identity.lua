-- 10-identity.lua - who is calling, and which tier they are on.
--
-- sluice trusts these headers: run it behind the layer that authenticates
-- callers (an auth proxy, your app's middleware) and make sure that layer
-- sets them and strips any a client sent. Endpoints refer to the values as
-- {user} and {tenant} in cache keys, limit keys and SQL arguments.
--
-- A request without a user is anonymous: it gets default_tier and is
-- counted by its IP address. Without an identity block at all, every caller
-- is anonymous.

identity {
  user   = header "X-User-Id",
  tenant = header "X-Tenant-Id",   -- optional: leave out if you have no tenants

  -- The caller's tier, here from a header the auth layer sets (and strips
  -- from what clients send: a client that could set it would pick its own
  -- budget, so sluice check wants it marked trusted). To read it from your
  -- database instead, with the answer kept for tier_ttl:
  --   tier     = sql("SELECT plan FROM users WHERE id = $1::bigint", "{user}"),
  --   tier_ttl = "1m",
  tier = header("X-User-Plan", { trusted = true }),

  -- The tier of anonymous callers, and of callers whose tier names none of
  -- the tiers in 00-tiers.lua.
  default_tier = "free",
}
