-- API-03: each runner session has a RabbitMQ user of its own. `broker_user` names it while it
-- exists: set when the runner joins, cleared once a revoked registration's user is deleted
-- (the reaper retries until the broker agrees). NULL when the orchestrator runs with shared
-- broker users: then reports are not checked against a publishing user.
ALTER TABLE runner_registrations ADD COLUMN broker_user TEXT;
