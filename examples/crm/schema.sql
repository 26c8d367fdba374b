-- schema.sql - the CRM example's tables: users and what each user owns.
--
-- Every row but a user's own belongs to one user through owner_id; the
-- policies in policies/ scope every statement by owner_id = {user}.
-- Loading this file again starts from empty tables.

DROP TABLE IF EXISTS events, agents, messages, interactions, deals, projects, contacts, users CASCADE;

CREATE TABLE users (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    plan       text NOT NULL DEFAULT 'free'
               CHECK (plan IN ('free', 'starter', 'professional', 'enterprise')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id         bigserial PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    email      text,
    company    text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id         bigserial PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    status     text NOT NULL DEFAULT 'active'
               CHECK (status IN ('planned', 'active', 'on_hold', 'done')),
    budget     numeric(12, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deals (
    id         bigserial PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id bigint REFERENCES contacts (id) ON DELETE SET NULL,
    title      text NOT NULL,
    amount     numeric(12, 2) NOT NULL DEFAULT 0,
    stage      text NOT NULL DEFAULT 'lead'
               CHECK (stage IN ('lead', 'qualified', 'proposal', 'negotiation', 'won', 'lost')),
    closed     boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE interactions (
    id          bigserial PRIMARY KEY,
    owner_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id  bigint REFERENCES contacts (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('call', 'email', 'meeting', 'note')),
    notes       text,
    occurred_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id         bigserial PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body       text NOT NULL,
    read       boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id       bigserial PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name     text NOT NULL,
    status   text NOT NULL DEFAULT 'idle' CHECK (status IN ('idle', 'running', 'failed', 'stopped')),
    config   jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The policies read "the newest rows of one owner": one index per table
-- serves both the owner_id filter and the ordering.
CREATE INDEX contacts_owner_idx     ON contacts (owner_id, created_at DESC, id DESC);
CREATE INDEX projects_owner_idx     ON projects (owner_id, created_at DESC, id DESC);
CREATE INDEX deals_owner_idx        ON deals (owner_id, created_at DESC, id DESC);
CREATE INDEX interactions_owner_idx ON interactions (owner_id, occurred_at DESC, id DESC);
CREATE INDEX messages_owner_idx     ON messages (owner_id, created_at DESC, id DESC);
CREATE INDEX agents_owner_idx       ON agents (owner_id);
CREATE INDEX events_owner_idx       ON events (owner_id, created_at DESC, id DESC);
CREATE INDEX deals_contact_idx      ON deals (contact_id);
CREATE INDEX interactions_contact_idx ON interactions (contact_id);
