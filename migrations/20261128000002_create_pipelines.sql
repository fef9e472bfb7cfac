-- Pipelines and their versions: every push is a new version with its source and parsed shape.
CREATE TABLE pipelines (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE pipeline_versions (
    pipeline_id UUID NOT NULL REFERENCES pipelines (id),
    version     INTEGER NOT NULL,
    file_name   TEXT NOT NULL,
    source      TEXT NOT NULL,
    definition  JSONB NOT NULL,
    requires    TEXT[] NOT NULL,
    class_key   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, version)
);
