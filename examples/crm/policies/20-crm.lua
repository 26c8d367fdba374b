-- 20-crm.lua - the CRM's lists and the writes that change them.
--
-- Reading: GET /api/crm?type=contacts (or projects, deals, interactions)
-- answers the caller's 20 newest rows of that kind as a JSON array, straight
-- from PostgreSQL. The answer is cached for 5 minutes per user; writes below
-- drop it at once, so the cache never shows a user stale data of their own.
--
-- Writing: POST to a collection creates a row; PUT replaces the editable
-- fields of one row, PATCH changes only the fields the body holds, DELETE
-- removes it. Each answers the row it wrote (RETURNING *, `one = true`: a
-- JSON object rather than an array); a write aimed at a row that does not
-- exist or belongs to someone else changes nothing and answers no row.
--
-- How to read an endpoint:
--   sql    the statement; $1, $2, ... are filled from `args`, in order
--   args   templates: {user} is the caller, {path.id} the {id} of the URL,
--          {body.name} the field "name" of the JSON body. Every value is
--          passed as text, so the SQL casts where it needs a type
--          ($1::bigint); a field missing from the body is NULL.
--   cache  ttl: how long an answer is reused; key: under which name, with
--          {user} in it so no user ever sees another's rows; tags: labels
--          that writes name in `invalidate` to drop every entry carrying them
--   limit  "tier": counts against the caller's tier budget (00-tiers.lua)
--
-- Every statement has `owner_id = $1` with $1 = {user}: a user can read and
-- change only their own rows, whatever id they put in the URL.

-- The tags every CRM write drops: the CRM lists and the dashboard of the
-- user who wrote (30-dashboard.lua tags its entries "dash:{user}").
local CRM_WRITE = { "crm:{user}", "dash:{user}" }

---------------------------------------------------------------------------
-- Lists: the 20 newest rows of the caller, cached 5 minutes.

endpoint "GET /api/crm?type=contacts" {
  sql = [[
    SELECT id, name, email, company, created_at
    FROM contacts
    WHERE owner_id = $1::bigint
    ORDER BY created_at DESC, id DESC
    LIMIT 20
  ]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "crm:contacts:{user}", tags = { "crm:{user}" } },
  limit = "tier",
}

endpoint "GET /api/crm?type=projects" {
  sql = [[
    SELECT id, name, status, budget, created_at
    FROM projects
    WHERE owner_id = $1::bigint
    ORDER BY created_at DESC, id DESC
    LIMIT 20
  ]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "crm:projects:{user}", tags = { "crm:{user}" } },
  limit = "tier",
}

endpoint "GET /api/crm?type=deals" {
  sql = [[
    SELECT id, contact_id, title, amount, stage, closed, created_at
    FROM deals
    WHERE owner_id = $1::bigint
    ORDER BY created_at DESC, id DESC
    LIMIT 20
  ]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "crm:deals:{user}", tags = { "crm:{user}" } },
  limit = "tier",
}

endpoint "GET /api/crm?type=interactions" {
  sql = [[
    SELECT id, contact_id, kind, notes, occurred_at
    FROM interactions
    WHERE owner_id = $1::bigint
    ORDER BY occurred_at DESC, id DESC
    LIMIT 20
  ]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "crm:interactions:{user}", tags = { "crm:{user}" } },
  limit = "tier",
}

---------------------------------------------------------------------------
-- Contacts. Body: { "name": "...", "email": "...", "company": "..." }

endpoint "POST /api/crm/contacts" {
  sql = [[
    INSERT INTO contacts (owner_id, name, email, company)
    VALUES ($1::bigint, $2, $3, $4)
    RETURNING *
  ]],
  args = { "{user}", "{body.name}", "{body.email}", "{body.company}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "PUT /api/crm/contacts/{id}" {
  sql = [[
    UPDATE contacts
    SET name = $3, email = $4, company = $5
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}", "{body.name}", "{body.email}", "{body.company}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "PATCH /api/crm/contacts/{id}" {
  sql = [[
    UPDATE contacts
    SET name    = coalesce($3, name),
        email   = coalesce($4, email),
        company = coalesce($5, company)
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}", "{body.name}", "{body.email}", "{body.company}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "DELETE /api/crm/contacts/{id}" {
  sql = [[
    DELETE FROM contacts
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

---------------------------------------------------------------------------
-- Projects. Body: { "name": "...", "status": "active", "budget": 12000 }
-- status is one of planned, active, on_hold, done (default active).

endpoint "POST /api/crm/projects" {
  sql = [[
    INSERT INTO projects (owner_id, name, status, budget)
    VALUES ($1::bigint, $2, coalesce($3, 'active'), coalesce($4::numeric, 0))
    RETURNING *
  ]],
  args = { "{user}", "{body.name}", "{body.status}", "{body.budget}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "PUT /api/crm/projects/{id}" {
  sql = [[
    UPDATE projects
    SET name = $3, status = coalesce($4, 'active'), budget = coalesce($5::numeric, 0)
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}", "{body.name}", "{body.status}", "{body.budget}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "PATCH /api/crm/projects/{id}" {
  sql = [[
    UPDATE projects
    SET name   = coalesce($3, name),
        status = coalesce($4, status),
        budget = coalesce($5::numeric, budget)
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}", "{body.name}", "{body.status}", "{body.budget}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "DELETE /api/crm/projects/{id}" {
  sql = [[
    DELETE FROM projects
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

---------------------------------------------------------------------------
-- Deals. Body: { "contact_id": 42, "title": "...", "amount": 5000, "stage": "lead" }
-- stage is one of lead, qualified, proposal, negotiation, won, lost; a deal
-- is closed once it is won or lost. contact_id may be left out, and must
-- otherwise be one of the caller's contacts: a write naming someone else's
-- contact changes nothing.

endpoint "POST /api/crm/deals" {
  sql = [[
    INSERT INTO deals (owner_id, contact_id, title, amount, stage, closed)
    SELECT $1::bigint, $2::bigint, $3, coalesce($4::numeric, 0),
           coalesce($5, 'lead'), coalesce($5, 'lead') IN ('won', 'lost')
    WHERE $2::bigint IS NULL
       OR EXISTS (SELECT 1 FROM contacts WHERE id = $2::bigint AND owner_id = $1::bigint)
    RETURNING *
  ]],
  args = { "{user}", "{body.contact_id}", "{body.title}", "{body.amount}", "{body.stage}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "PUT /api/crm/deals/{id}" {
  sql = [[
    UPDATE deals
    SET contact_id = $3::bigint,
        title      = $4,
        amount     = coalesce($5::numeric, 0),
        stage      = coalesce($6, 'lead'),
        closed     = coalesce($6, 'lead') IN ('won', 'lost')
    WHERE id = $2::bigint AND owner_id = $1::bigint
      AND ($3::bigint IS NULL
           OR EXISTS (SELECT 1 FROM contacts WHERE id = $3::bigint AND owner_id = $1::bigint))
    RETURNING *
  ]],
  args = { "{user}", "{path.id}", "{body.contact_id}", "{body.title}", "{body.amount}", "{body.stage}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "PATCH /api/crm/deals/{id}" {
  sql = [[
    UPDATE deals
    SET contact_id = coalesce($3::bigint, contact_id),
        title      = coalesce($4, title),
        amount     = coalesce($5::numeric, amount),
        stage      = coalesce($6, stage),
        closed     = coalesce($6, stage) IN ('won', 'lost')
    WHERE id = $2::bigint AND owner_id = $1::bigint
      AND ($3::bigint IS NULL
           OR EXISTS (SELECT 1 FROM contacts WHERE id = $3::bigint AND owner_id = $1::bigint))
    RETURNING *
  ]],
  args = { "{user}", "{path.id}", "{body.contact_id}", "{body.title}", "{body.amount}", "{body.stage}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}

endpoint "DELETE /api/crm/deals/{id}" {
  sql = [[
    DELETE FROM deals
    WHERE id = $2::bigint AND owner_id = $1::bigint
    RETURNING *
  ]],
  args = { "{user}", "{path.id}" },
  one = true,
  invalidate = CRM_WRITE,
  limit = "tier",
}
