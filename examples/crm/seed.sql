-- seed.sql - deterministic demo data for the CRM example (load schema.sql first).
--
-- Every value is computed from the row number, so two loads give the same
-- rows. 1,000 users, 100 contacts each (100,000 in all), and a few thousand
-- projects, deals, interactions, messages, agents and events. Users 1-4 have
-- one plan each (free, starter, professional, enterprise), which the tests
-- use; the rest are mostly free, as real sign-ups are.
--
-- Owner scheme: row g of every table belongs to user ((g - 1) % 1000) + 1, so
-- user u owns rows u, u + 1000, u + 2000, ... and the contacts of user u are
-- exactly the ids u + 1000 * k (k = 0..99). Other attributes are picked by
-- pg_temp.pick(g, salt, n), a fixed hash of the row number into 0..n-1, so
-- each user gets a varied mix.

BEGIN;

CREATE FUNCTION pg_temp.pick(g bigint, salt int, n int) RETURNS int
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT (((g * 2654435761 + salt * 40503) % 4294967296) / 65536 % n)::int $$;

TRUNCATE events, agents, messages, interactions, deals, projects, contacts, users RESTART IDENTITY CASCADE;

INSERT INTO users (id, name, email, plan, created_at)
SELECT g,
       'User ' || g,
       'user' || g || '@example.com',
       CASE
           WHEN g <= 4 THEN (ARRAY['free', 'starter', 'professional', 'enterprise'])[g]
           WHEN g % 20 < 12 THEN 'free'
           WHEN g % 20 < 17 THEN 'starter'
           WHEN g % 20 < 19 THEN 'professional'
           ELSE 'enterprise'
       END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 1000) AS g;

INSERT INTO contacts (id, owner_id, name, email, company, created_at)
SELECT g,
       (g - 1) % 1000 + 1,
       (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken',
              'Margaret', 'Dennis'])[pg_temp.pick(g, 1, 10) + 1] || ' ' ||
       (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen',
              'Thompson', 'Hamilton', 'Ritchie', 'Kay'])[pg_temp.pick(g, 2, 11) + 1],
       'contact' || g || '@example.com',
       'Company ' || (pg_temp.pick(g, 3, 97) + 1),
       timestamptz '2024-06-01 00:00:00+00' + g * interval '5 minutes'
FROM generate_series(1, 100000) AS g;

INSERT INTO projects (id, owner_id, name, status, budget, created_at)
SELECT g,
       (g - 1) % 1000 + 1,
       'Project ' || g,
       (ARRAY['planned', 'active', 'active', 'on_hold', 'done'])[pg_temp.pick(g, 4, 5) + 1],
       (pg_temp.pick(g, 5, 50) + 1) * 1000.00,
       timestamptz '2024-06-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 5000) AS g;

INSERT INTO deals (id, owner_id, contact_id, title, amount, stage, closed, created_at)
SELECT g,
       (g - 1) % 1000 + 1,
       (g - 1) % 1000 + 1 + 1000 * pg_temp.pick(g, 6, 100),
       'Deal ' || g,
       (pg_temp.pick(g, 7, 200) + 1) * 250.00,
       s.stage,
       s.stage IN ('won', 'lost'),
       timestamptz '2024-06-01 00:00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 8000) AS g,
     LATERAL (SELECT (ARRAY['lead', 'qualified', 'proposal', 'negotiation', 'won', 'lost'])[pg_temp.pick(g, 8, 6) + 1]
                     AS stage) AS s;

INSERT INTO interactions (id, owner_id, contact_id, kind, notes, occurred_at)
SELECT g,
       (g - 1) % 1000 + 1,
       (g - 1) % 1000 + 1 + 1000 * pg_temp.pick(g, 9, 100),
       (ARRAY['call', 'email', 'meeting', 'note'])[pg_temp.pick(g, 10, 4) + 1],
       'Interaction ' || g,
       timestamptz '2024-06-01 00:00:00+00' + g * interval '23 minutes'
FROM generate_series(1, 10000) AS g;

INSERT INTO messages (id, owner_id, body, read, created_at)
SELECT g,
       (g - 1) % 1000 + 1,
       'Message ' || g,
       pg_temp.pick(g, 11, 3) <> 0,
       timestamptz '2024-06-01 00:00:00+00' + g * interval '41 minutes'
FROM generate_series(1, 5000) AS g;

INSERT INTO agents (id, owner_id, name, status, config)
SELECT g,
       (g - 1) % 1000 + 1,
       'Agent ' || g,
       (ARRAY['idle', 'running', 'running', 'failed', 'stopped'])[pg_temp.pick(g, 12, 5) + 1],
       jsonb_build_object('model', (ARRAY['small', 'medium', 'large'])[pg_temp.pick(g, 13, 3) + 1],
                          'interval_s', (pg_temp.pick(g, 14, 6) + 1) * 60)
FROM generate_series(1, 2000) AS g;

INSERT INTO events (id, owner_id, kind, payload, created_at)
SELECT g,
       (g - 1) % 1000 + 1,
       (ARRAY['login', 'contact.created', 'deal.updated', 'agent.run', 'message.sent'])
           [pg_temp.pick(g, 15, 5) + 1],
       jsonb_build_object('n', g),
       timestamptz '2024-06-01 00:00:00+00' + g * interval '13 minutes'
FROM generate_series(1, 10000) AS g;

-- The rows above were given explicit ids: move each sequence past them so
-- that the next INSERT gets a fresh id.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contacts', 'projects', 'deals', 'interactions', 'messages',
                             'agents', 'events'] LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, %L), (SELECT max(id) FROM %I))',
                       t, 'id', t);
    END LOOP;
END
$$;

COMMIT;

ANALYZE;
