-- Reliability: retries, queue timeouts, cancel, the reaper's lease tracking, delayed publishes.

-- What the job's definition says about retries and waiting (copied at submit time, so the
-- reaper needs no definition), and a cancel request that a runner has not answered yet.
ALTER TABLE jobs
    ADD COLUMN retry JSONB NOT NULL DEFAULT '{"count": 2, "on": ["lost"], "backoff": 0}',
    ADD COLUMN queue_timeout_ms BIGINT NOT NULL DEFAULT 86400000,
    ADD COLUMN cancel_requested_at TIMESTAMPTZ,
    ADD COLUMN cancel_reason TEXT;

-- When the attempt was queued (queue timeouts count from here), and since when the reaper has
-- seen its runner's lease missing (cleared when it comes back; `lost` after the grace period).
ALTER TABLE attempts
    ADD COLUMN queued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN lease_missing_since TIMESTAMPTZ;

-- A retry's message waits until its backoff has passed.
ALTER TABLE outbox
    ADD COLUMN available_at TIMESTAMPTZ NOT NULL DEFAULT now();
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (available_at, id) WHERE published_at IS NULL;

CREATE INDEX jobs_running ON jobs (id) WHERE state = 'running';
