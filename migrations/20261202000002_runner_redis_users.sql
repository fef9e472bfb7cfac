-- Each runner session has a Redis ACL user of its own (`redis_user`), whose password is derived
-- from the session key, so the orchestrator can make it again after Redis lost it. Cleared once a
-- revoked registration's user is deleted. NULL with shared Redis users.
ALTER TABLE runner_registrations ADD COLUMN redis_user TEXT;
