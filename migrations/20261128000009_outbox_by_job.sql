-- Ending an attempt marks its unpublished outbox rows, and a retry copies the job's last
-- dispatch: both look rows up by job.
CREATE INDEX outbox_job ON outbox (job_id, id);
