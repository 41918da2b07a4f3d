-- Cancellations asked for tasks no dispatcher holds yet: their submissions
-- still wait in the intake stream. When one is taken from the stream, the
-- dispatcher finds the cancellation, records the task as submitted and
-- cancelled, and publishes its result instead of running it.
create table task_cancellations (
    task_id      text        primary key,
    reason       text        not null,
    requested_at timestamptz not null default now()
);
