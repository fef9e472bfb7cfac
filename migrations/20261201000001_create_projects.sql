-- Projects (API-01): pipelines, and so their jobs, belong to one; a project token sees only its
-- own. Everything that existed before belongs to `default`.
CREATE TABLE projects (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO projects (id, name) VALUES (gen_random_uuid(), 'default');

-- Pipelines are unique per (project, name).
ALTER TABLE pipelines ADD COLUMN project_id UUID REFERENCES projects (id);
UPDATE pipelines SET project_id = (SELECT id FROM projects WHERE name = 'default');
ALTER TABLE pipelines ALTER COLUMN project_id SET NOT NULL;
ALTER TABLE pipelines DROP CONSTRAINT pipelines_name_key;
ALTER TABLE pipelines ADD CONSTRAINT pipelines_project_name_key UNIQUE (project_id, name);

-- Admin tokens have no project (they see every project); every other token is scoped to one.
-- Non-admin tokens made before projects existed keep what they saw: `default`.
ALTER TABLE tokens ADD COLUMN project_id UUID REFERENCES projects (id);
UPDATE tokens SET project_id = (SELECT id FROM projects WHERE name = 'default') WHERE NOT is_admin;
ALTER TABLE tokens ADD CONSTRAINT tokens_admin_or_project CHECK (is_admin = (project_id IS NULL));
