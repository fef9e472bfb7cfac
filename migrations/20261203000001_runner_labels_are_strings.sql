-- A registration's labels are a JSON object of strings, as the API only ever writes them
-- (`api/registrations.rs` checks every key and value). The whole-attempt statement matches a
-- job's `label:KEY=VALUE` requirements against them in SQL and the identity check in Rust;
-- this keeps the two readings the same whatever writes the table.
ALTER TABLE runner_registrations ADD CONSTRAINT runner_registrations_labels_are_strings
    CHECK (jsonb_typeof(labels) = 'object'
           AND NOT jsonb_path_exists(labels, '$.* ? (@.type() != "string")'));
