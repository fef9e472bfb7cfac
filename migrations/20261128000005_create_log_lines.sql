-- Log lines of each attempt, keyed by their sequence number so redelivered batches are no-ops.
CREATE TABLE log_lines (
    job_id   UUID NOT NULL,
    attempt  INTEGER NOT NULL,
    seq      BIGINT NOT NULL,
    at_ms    BIGINT NOT NULL,
    stage    TEXT,
    level    TEXT NOT NULL,
    source   TEXT NOT NULL,
    line     TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
