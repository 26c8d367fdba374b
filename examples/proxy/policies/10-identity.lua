-- 10-identity.lua - who is calling, and which tier they are on.
--
-- sluice sits behind the CRM's auth layer (the Next.js middleware), which
-- checks the session and forwards the caller's ids in trusted headers; a
-- client cannot set them itself. Endpoints refer to these values in keys
-- and SQL arguments as {user} and {tenant}.
--
-- A request without X-User-Id is anonymous: it gets the default tier and is
-- counted by its IP address.

identity {
  -- users.id of the signed-in user: a whole number, so "01" and "+1" are
  -- user 1 (one budget, one cache entry), and "abc" is refused with 400.
  user   = header("X-User-Id", { integer = true }),
  tenant = header "X-Tenant-Id",   -- the workspace, when the auth layer sends one

  -- The tier is the user's plan, read from PostgreSQL. The answer is kept
  -- for tier_ttl, so an upgrade takes effect within a minute and the query
  -- does not run on every request. A plan that names no tier, and an
  -- anonymous caller, get default_tier.
  tier         = sql("SELECT plan FROM users WHERE id = $1::bigint", "{user}"),
  tier_ttl     = "1m",
  default_tier = "free",
}
