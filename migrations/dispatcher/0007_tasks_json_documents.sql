-- The task document columns become `json`: the dispatcher writes each task's
-- spec and result once or a few times and reads them back whole, and never
-- queries inside them. `json` stores the text after a syntax check, while
-- `jsonb` converts it to its binary form on every write: measured with
-- pgbench on the dispatcher's batch shape (100 tasks, 3 events each, one
-- transaction), the task row cost about a tenth less this way. Readers are
-- unchanged (both types decode to the same JSON); `->` and `->>` work on both.
alter table tasks
    alter column spec type json using spec::json,
    alter column result type json using result::json;
