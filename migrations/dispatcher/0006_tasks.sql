-- The dispatcher's task projection: one row per task, derived from the
-- task's events (`concord events replay --project tasks` rebuilds it).
--
-- `last_sequence` is the sequence of the task's newest event; writers update
-- a row only where it still holds the sequence they read (optimistic
-- concurrency), so two dispatcher replicas can never both record an outcome
-- for the same task. Rows are updated a few times each (pending, assigned,
-- final): fillfactor leaves room for HOT updates (no index on the status).
create table tasks (
    task_id        text        primary key,
    capability     text        not null,
    status         text        not null,
    priority       integer     not null,
    correlation_id text        not null default '',
    attempts       integer     not null default 0,
    agent_id       text        not null default '',
    -- The task as accepted (canonical JSON of `Task`, defaults filled in).
    spec           jsonb       not null,
    -- The outcome so far (canonical JSON of `TaskResult`).
    result         jsonb       not null,
    last_sequence  bigint      not null,
    submitted_at   timestamptz not null,
    updated_at     timestamptz not null,
    completed_at   timestamptz
) with (fillfactor = 70);

create index tasks_correlation_idx on tasks (correlation_id) where correlation_id <> '';
