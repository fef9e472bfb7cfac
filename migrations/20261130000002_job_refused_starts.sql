-- Starts of a job refused by the runner identity policy (API-02). Each refusal queues another
-- attempt without using a retry; past a small bound the job ends `lost` instead, so a runner
-- that keeps taking a job it may not run cannot grow the attempts table or delay the job forever.
ALTER TABLE jobs ADD COLUMN refused_starts integer NOT NULL DEFAULT 0;
