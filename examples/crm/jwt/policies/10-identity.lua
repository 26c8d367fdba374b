-- 10-identity.lua - who is calling: the CRM with signed tokens instead of trusted headers.
--
-- The rest of this directory is the CRM of ../../policies (links to its
-- files): the same endpoints, keys and limits. Only the identity differs.
-- Here nothing in front of sluice needs to be trusted: every caller sends
-- the token the CRM's auth server signed,
--
--   Authorization: Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6...
--
-- and sluice verifies it with the public keys of jwks.json (a JWK set, in
-- this directory: ../tokens.py keys writes it). Replacing jwks.json is a
-- key rotation: the running server reloads the policy and from then on
-- accepts tokens of the new keys and refuses those of keys that left the
-- set. A token that is expired, not meant for "crm", signed by another
-- issuer or key, or tampered with is refused with 401; so is a request
-- without one (required = true).
--
-- The caller's values come from the token's claims: sub is users.id (a
-- whole number), plan the tier, org the tenant (tenants/acme.lua applies to
-- org "acme"). A claim is also a template variable: {claim.plan}.

identity {
  jwt = {
    keys     = "jwks.json",
    issuer   = "https://auth.crm.example",
    audience = "crm",
    leeway   = "30s",           -- clock skew allowed on exp, nbf and iat
    required = true,
  },
  user   = claim("sub", { integer = true }),
  tenant = claim "org",
  tier   = claim "plan",        -- signed by the issuer: no lookup, nothing the client can set
  default_tier = "free",
}
