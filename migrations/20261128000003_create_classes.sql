-- Every requirement set a job was ever published with: its class key names its queue.
CREATE TABLE classes (
    class_key   TEXT PRIMARY KEY,
    requires    TEXT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
