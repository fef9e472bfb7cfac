-- Jobs, their attempts (the attempt number fences stale reports) and stage runs.
CREATE TABLE jobs (
    id               UUID PRIMARY KEY,
    pipeline_id      UUID NOT NULL,
    pipeline_version INTEGER NOT NULL,
    inputs           JSONB NOT NULL,
    class_key        TEXT NOT NULL REFERENCES classes (class_key),
    state            TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    runner_id        TEXT,
    outcome          JSONB,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    FOREIGN KEY (pipeline_id, pipeline_version) REFERENCES pipeline_versions (pipeline_id, version)
);
CREATE INDEX jobs_state_created ON jobs (state, created_at);
CREATE INDEX jobs_pipeline_created ON jobs (pipeline_id, created_at);
CREATE INDEX jobs_class_queued ON jobs (class_key, created_at) WHERE state = 'queued';

CREATE TABLE attempts (
    job_id      UUID NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    runner_id   TEXT,
    outcome     JSONB,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE stage_runs (
    job_id      UUID NOT NULL,
    attempt     INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    duration_ms BIGINT,
    error       TEXT,
    PRIMARY KEY (job_id, attempt, idx),
    FOREIGN KEY (job_id, attempt) REFERENCES attempts (job_id, attempt)
);
