---@meta sluice
-- sluice/meta/sluice.lua - type annotations of the policy language for the Lua language server
-- (LuaLS): completion, hover text and checks of the fields of tier, identity, endpoint,
-- upstream, on_change and, in tenant files, hook. Never run, and not compiled into the
-- binary. Point LuaLS at its directory with a .luarc.json beside the policies:
--
--   { "runtime.version": "Lua 5.4",
--     "workspace.library": ["/usr/share/sluice/luals"],
--     "diagnostics.globals": [] }
--
-- (from a source tree: "lua/sluice/meta"). docs/policies.md is the full description;
-- tests/spec/luals_meta_spec.lua checks that every name and field the DSL takes is here.

---A duration: "250ms", "30s", "5m", "1h", "1d", a string of plain seconds ("30") or a number
---of seconds (1.5). Decimals in strings are refused.
---@alias sluice.Duration string|number

---@alias sluice.Algorithm
---| "sliding_window" # default: a two-window weighted counter, O(1) memory
---| "sliding_log"    # exact: one entry per distinct millisecond of the window
---| "token_bucket"   # GCRA; `burst` is its capacity (default `limit`)
---| "fixed_window"

---@alias sluice.Mode
---| "enforce" # default: refuses past the limit
---| "shadow"  # counted and decided, never refuses, never in RateLimit headers

---A template: text with {user} {tenant} {tier} {ip} {method} {route} {path.NAME} {path}
---{query.NAME} {query} {header.NAME} {body.NAME} {claim.NAME} (with jwt or api_key), and
---{row.COLUMN} in on_change.
---@alias sluice.Template string

-- ---- tier ---------------------------------------------------------------------------------

---@class sluice.Tier
---@field limit integer requests per window
---@field window sluice.Duration
---@field algorithm? sluice.Algorithm
---@field burst? integer the most a caller may send at once (token_bucket)
---@field mode? sluice.Mode

---A plan and its budget: `tier "free" { limit = 100, window = "1h" }`. Endpoints with
---`limit = "tier"` count against one counter per caller. In a tenant file: an override of a
---main tier for the tenant's callers (any of its fields).
---@param name string
---@return fun(fields: sluice.Tier)
---@overload fun(name: string, fields: sluice.Tier)
function tier(name) end

-- ---- identity -----------------------------------------------------------------------------

---What an identity header's value must be (at most one option).
---@class sluice.HeaderOptions
---@field integer? boolean a 64-bit integer; canonical form without "+" or leading zeros
---@field uuid? boolean a UUID; canonical form lower-case 8-4-4-4-12
---@field pattern? string a POSIX extended regular expression the whole value must match
---@field trusted? boolean a layer in front sets it and drops the client's (required of a tier header)

---A request header as an identity source (read-only). Calling it with options types it:
---`header "X-User-Id" { integer = true }`.
---@class sluice.Header
---@field kind "header"
---@field name string
---@overload fun(opts: sluice.HeaderOptions): sluice.Header

---A claim of the caller's verified token, or a column of its API key's row (read-only).
---Calling it with options types it: `claim "sub" { integer = true }`.
---@class sluice.Claim
---@field kind "claim"
---@field name string
---@overload fun(opts: sluice.HeaderOptions): sluice.Claim

---A key source of `jwt.keys`: exactly one of jwks, pem, secret_file and secret_env.
---@class sluice.JwtKey
---@field jwks? string a JWK set file in the policy directory
---@field pem? string a PEM public key or certificate file in the policy directory
---@field secret_file? string an HS256 secret (32 bytes or more) in a file of the policy directory
---@field secret_env? string an HS256 secret in this environment variable
---@field kid? string the key id tokens name (not with jwks)
---@field alg? "RS256"|"RS384"|"RS512"|"PS256"|"ES256"|"ES384"|"EdDSA"|"HS256" the one algorithm it verifies

---Bearer tokens (JWS compact JWTs) verified by sluice.
---@class sluice.Jwt
---@field keys string|sluice.JwtKey[] a JWK set file ("jwks.json"), or a list of key sources
---@field issuer? string iss must be this
---@field audience? string aud must name this (without it, a token naming an audience is refused)
---@field leeway? sluice.Duration clock skew allowed on exp, nbf and iat (default "30s")
---@field required? boolean a request without a credential is refused with 401

---API keys looked up in PostgreSQL by their SHA-256; the row's columns are the claims.
---@class sluice.ApiKey
---@field header? string the field callers send the key in ("X-API-Key"), or
---@field query? string the query parameter
---@field sql string the lookup; $1 is the hex SHA-256 of the key, never the key
---@field hash? "sha256"
---@field ttl? sluice.Duration how long a worker reuses a lookup's answer (default "1m")
---@field required? boolean a request without a credential is refused with 401

---An SQL lookup (read-only): the tier of `identity`, or the callers of `cache.warm`.
---@class sluice.Sql
---@field kind "sql"
---@field sql string

---@class sluice.Identity
---@field user? sluice.Header|sluice.Claim the caller's user: a header the auth layer in front sets, or a claim
---@field tenant? sluice.Header|sluice.Claim the caller's tenant (tenants/NAME.lua applies to it)
---@field tier? sluice.Header|sluice.Claim|sluice.Sql the caller's tier name: a trusted header, a claim or a lookup
---@field jwt? sluice.Jwt bearer tokens verified with these keys
---@field api_key? sluice.ApiKey API keys looked up by their hash
---@field tier_ttl? sluice.Duration how long a looked-up tier is reused
---@field default_tier? string the tier of unknown and anonymous callers

---Who is calling: `identity { user = header "X-User-Id", default_tier = "free" }`.
---@param fields sluice.Identity
function identity(fields) end

---A request header as an identity source, optionally typed:
---`header("X-User-Id", { integer = true })`.
---@param name string
---@param opts? sluice.HeaderOptions
---@return sluice.Header
function header(name, opts) end

---A claim of the caller's verified credential as an identity source, optionally typed:
---`claim("sub", { integer = true })`.
---@param name string
---@param opts? sluice.HeaderOptions
---@return sluice.Claim
function claim(name, opts) end

---A PostgreSQL statement with its arguments (templates, passed as text):
---`sql("SELECT plan FROM users WHERE id = $1::bigint", "{user}")` or with a list of them.
---@param query string
---@param ... sluice.Template|sluice.Template[]
---@return sluice.Sql
function sql(query, ...) end

-- ---- endpoint -----------------------------------------------------------------------------

---@class sluice.WarmCaller
---@field user? string
---@field tenant? string

---@class sluice.Cache
---@field ttl sluice.Duration|"origin" how long an answer is fresh ("origin": as the upstream says)
---@field key? sluice.Template the entry's key; must hold {user} or {tenant} unless shared
---@field tags? sluice.Template[] what writes and on_change invalidate
---@field shared? boolean the entry is the same for every caller
---@field stale_while_revalidate? sluice.Duration answer stale while one request refreshes
---@field stale_if_error? sluice.Duration answer stale when the origin fails
---@field warm? sluice.WarmCaller[]|sluice.Sql callers whose entries are filled at start and reload
---@field override? boolean upstream: the TTL is the freshness whatever the answer says
---@field keep? sluice.Duration upstream: kept past freshness for revalidation (default "1h")
---@field targeted? string[] upstream: targeted cache-control fields read, first found wins
---@field anonymous? "bypass"|"share" callers who lack what the key names bypass the cache (default), or share the entry
---@field max_size? integer|string upstream: the largest answer stored, bytes or "512k", "1m", "1g" (default --cache-max-size, 1 MiB); larger ones are streamed, not stored

---@class sluice.Limit
---@field limit integer requests per window
---@field window sluice.Duration
---@field key? sluice.Template what is counted (default: the route and the caller)
---@field algorithm? sluice.Algorithm
---@field burst? integer
---@field name? string the policy name in RateLimit headers
---@field cost? integer a request counts this many times
---@field fail? "open"|"closed" with the shared store down: admit (default) or answer 503
---@field mode? sluice.Mode
---@field anonymous? "ip"|"share" callers who lack what the key names are counted by address (default), or share it

---@alias sluice.Limits "tier"|sluice.Limit|("tier"|sluice.Limit)[]

---@class sluice.Endpoint
---@field sql? string a PostgreSQL statement; $1..$n are `args`
---@field args? sluice.Template[]
---@field one? boolean answer the first row as an object, or 404
---@field upstream? string the name of an upstream to forward to
---@field body? string a fixed answer
---@field status? integer the fixed answer's status (default 200)
---@field content_type? string the fixed answer's type (default application/json)
---@field cache? sluice.Cache GET and HEAD only
---@field limit? sluice.Limits every limit must admit a request
---@field invalidate? sluice.Template[] tags dropped after a successful write
---@field cors? sluice.Cors|false this endpoint's CORS (false: none, whatever cors { } says)
---@field request_headers? sluice.HeaderRules upstream only: fields set (templates) or removed (false)
---@field response_headers? sluice.HeaderRules fields of the answer set (templates) or removed (false)
---@field timeout? sluice.Duration upstream: overrides the upstream's timeout for this endpoint
---@field connect_timeout? sluice.Duration upstream: overrides the upstream's connect_timeout
---@field sql_timeout? sluice.Duration sql: the statement's deadline instead of --db-deadline, else 504
---@field compress? boolean|sluice.Compress gzip/br/zstd forms of cached answers (default: the set's compress, else off)

---What a route does: `endpoint "GET /api/things/{id}" { sql = "...", args = { "{path.id}" } }`.
---In a tenant file: an override of `cache.ttl` and `limit` of a main endpoint.
---@param route string "METHOD /path", segments literal, {param} or a final *, ?name=value pins
---@return fun(fields: sluice.Endpoint)
---@overload fun(route: string, fields: sluice.Endpoint)
function endpoint(route) end

-- ---- compress -----------------------------------------------------------------------------

---@class sluice.Compress
---@field types? string[] media types compressed: "application/json", "text/*", "application/*+json" (default: text, JSON, XML, JavaScript, SVG)
---@field min_size? integer|string bodies smaller are left alone (default "1k")
---@field codings? ("br"|"zstd"|"gzip")[] the forms made (default all three; among equal q values br, then zstd, then gzip)

---The set's default for its cached endpoints (an endpoint's own `compress` wins):
---`compress(true)` or `compress { types = { "application/json" }, min_size = "2k" }`.
---@param v boolean|sluice.Compress
function compress(v) end

-- ---- upstream -----------------------------------------------------------------------------

---@class sluice.Upstream
---@field url string http://host:port[/prefix] or https://host:port[/prefix] (TLS, verified)
---@field timeout? sluice.Duration request sent to answer complete (default "5s"), else 504
---@field connect_timeout? sluice.Duration default "1s"
---@field forward_headers? string[] only these request fields reach the app
---@field request_headers? sluice.HeaderRules set (templates) or removed (false) on each request
---@field response_headers? sluice.HeaderRules set or removed on each answer (the endpoint's after these)
---@field ca_file? string https: CA certificates (PEM, in the policy directory) trusted instead of the system's
---@field cert_file? string https: a client certificate (PEM) for mutual TLS, with key_file
---@field key_file? string https: the client certificate's private key (PEM)

---An HTTP/1.1 app endpoints forward to: `upstream "app" { url = "http://127.0.0.1:3000" }`.
---@param name string
---@return fun(fields: sluice.Upstream)
---@overload fun(name: string, fields: sluice.Upstream)
function upstream(name) end

-- ---- cors and header rules ---------------------------------------------------------------

---@alias sluice.HeaderRules table<string, string|false> field name -> template value, or false: removed

---@class sluice.Cors
---@field origins string[]|"*" "https://app.example.com" (scheme://host[:port]), or "*"
---@field methods? string[] Access-Control-Allow-Methods (default: the method asked, as routed)
---@field headers? string[]|"*" Access-Control-Allow-Headers ("*": those asked; default: none)
---@field expose? string[] Access-Control-Expose-Headers
---@field credentials? boolean Access-Control-Allow-Credentials: true (not with origins = "*")
---@field max_age? sluice.Duration Access-Control-Max-Age

---CORS for every endpoint that does not say its own `cors = { ... }` or `cors = false`.
---@param fields sluice.Cors
function cors(fields) end

-- ---- on_change ----------------------------------------------------------------------------

---@class sluice.OnChange
---@field invalidate? sluice.Template[] tags expanded with the changed row ({row.COLUMN})
---@field credentials? boolean the table holds API keys: a change makes every worker forget them

---Rows of a PostgreSQL table changed by anyone drop these tags (`sluice triggers` installs
---the triggers): `on_change "contacts" { invalidate = { "crm:{row.owner_id}" } }`.
---@param table string "TABLE" or "SCHEMA.TABLE"
---@return fun(fields: sluice.OnChange)
---@overload fun(table: string, fields: sluice.OnChange)
function on_change(table) end

-- ---- hook (tenant files) ------------------------------------------------------------------

---A request as a hook reads it (read-only).
---@class sluice.Request
---@field method string
---@field path string as sent
---@field query table<string, string> decoded, the first value of each name
---@field headers table<string, string> lower-case names, the first value of each
---@field user? string
---@field tenant? string
---@field tier? string
---@field ip string
---@field endpoint string "GET /api/crm?type=contacts"

---@class sluice.DecisionLimit
---@field name string
---@field limit integer change it for this request only
---@field window number seconds
---@field algorithm sluice.Algorithm
---@field mode sluice.Mode

---@class sluice.Deny
---@field status integer 400..499
---@field message string the problem+json detail

---What the hooks decide for a request.
---@class sluice.Decision
---@field cost integer starts at 1: the request counts this many times against every limit
---@field limits sluice.DecisionLimit[]
---@field deny? sluice.Deny answer this instead; later hooks do not run

---@class sluice.Hook
---@field when? fun(req: sluice.Request): boolean true for the requests to adjust
---@field adjust fun(req: sluice.Request, decision: sluice.Decision)

---Tenant files only: Lua run for each request of the tenant before its limits are checked.
---@param name string
---@return fun(fields: sluice.Hook)
---@overload fun(name: string, fields: sluice.Hook)
function hook(name) end

-- ---- the sandbox's basics beside Lua's own ------------------------------------------------

---table.unpack, under its Lua 5.1 name.
unpack = table.unpack
