-- 50-changes.lua - dropping cached entries when rows change behind sluice's back.
--
-- The CRM's own writes through sluice invalidate what they change (see
-- 20-crm.lua). Rows also change elsewhere: the Next.js app writes some
-- tables directly, agents log events, mail arrives. For each table below,
-- a trigger (installed with `sluice triggers POLICY_DIR`) sends a
-- PostgreSQL NOTIFY for every changed row, and sluice drops the tags listed,
-- filled from that row: {row.owner_id} is the owner_id column of the
-- inserted, updated or deleted row.

on_change "contacts"     { invalidate = { "crm:{row.owner_id}", "dash:{row.owner_id}" } }
on_change "projects"     { invalidate = { "crm:{row.owner_id}", "dash:{row.owner_id}" } }
on_change "deals"        { invalidate = { "crm:{row.owner_id}", "dash:{row.owner_id}" } }
on_change "interactions" { invalidate = { "crm:{row.owner_id}", "dash:{row.owner_id}" } }
on_change "messages"     { invalidate = { "dash:{row.owner_id}" } }
on_change "agents"       { invalidate = { "dash:{row.owner_id}" } }
on_change "events"       { invalidate = { "dash:{row.owner_id}" } }
