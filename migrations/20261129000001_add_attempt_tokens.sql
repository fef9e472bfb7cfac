-- API-03: the attempt token a runner drew when it took the job's lease. Stored at `Started`;
-- every later report of the attempt must carry the same one. Never shown by the API.
-- `forged_reports` counts reports refused for a wrong or missing token (each is also logged as a
-- security event): a counter, not a table, so a flood of forgeries cannot grow the database.
ALTER TABLE attempts
    ADD COLUMN token TEXT,
    ADD COLUMN forged_reports INTEGER NOT NULL DEFAULT 0;
