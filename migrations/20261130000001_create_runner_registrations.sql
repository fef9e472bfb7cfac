-- API-02: runner identities, created by admins. A registration names one runner (its name is
-- the runner id) and holds the labels it gets; labels a runner declares itself grant nothing.
-- The runner's token is stored as a SHA-256 hash and shown once, like API tokens (but in its own
-- table: a runner token opens no API route, an API token never registers a runner).
-- `session_key` is the key of the runner's current session (returned by `POST
-- /api/v1/runners/register`, replaced at every registration, deleted on revoke): the
-- orchestrator checks the MAC of every `Started` report with it. It must be readable by the
-- orchestrator, so it is stored as is; it never leaves PostgreSQL except in that one answer.
-- `refused_starts` counts `Started` reports naming this runner that were refused (unsigned,
-- wrongly signed, revoked, or lacking a label the job requires): a counter, not a table, so a
-- flood cannot grow the database; each refusal is also logged and recorded as the attempt's
-- outcome.
CREATE TABLE runner_registrations (
    id                 UUID PRIMARY KEY,
    name               TEXT NOT NULL,
    labels             JSONB NOT NULL DEFAULT '{}',
    token_hash         TEXT NOT NULL UNIQUE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at         TIMESTAMPTZ,
    session_key        TEXT,
    registered_at      TIMESTAMPTZ,
    capabilities       TEXT[] NOT NULL DEFAULT '{}',
    slots              INTEGER,
    version            TEXT,
    refused_starts     BIGINT NOT NULL DEFAULT 0,
    last_refusal       TEXT
);
-- One live registration per name: the name is the runner id.
CREATE UNIQUE INDEX runner_registrations_live_name ON runner_registrations (name)
    WHERE revoked_at IS NULL;
