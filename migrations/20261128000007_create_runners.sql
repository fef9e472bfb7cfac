-- Runners ever seen (presence itself lives in Redis with a TTL).
CREATE TABLE runners (
    id           TEXT PRIMARY KEY,
    capabilities TEXT[] NOT NULL,
    labels       JSONB NOT NULL,
    slots        INTEGER NOT NULL,
    first_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen    TIMESTAMPTZ NOT NULL DEFAULT now()
);
