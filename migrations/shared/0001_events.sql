-- Event store: every state change of every service, in one global order.
--
-- `position` is the global order (replay pages by it). `event_id` makes an
-- append idempotent: a redelivered event is skipped, never stored twice.
-- `sequence` is the per-aggregate order assigned by the writer; two different
-- events claiming the same (aggregate, sequence) is a concurrency conflict
-- that the store reports by the constraint name below, so keep it stable.
create table events (
    position       bigint generated always as identity primary key,
    event_id       uuid        not null,
    aggregate_type text        not null,
    aggregate_id   text        not null,
    sequence       bigint      not null,
    event_type     text        not null,
    data           jsonb       not null,
    trace_id       text,
    source         text        not null,
    occurred_at    timestamptz not null,
    recorded_at    timestamptz not null default now(),
    constraint events_event_id_key unique (event_id),
    -- Also serves replay of one aggregate in sequence order and last_sequence.
    constraint events_aggregate_sequence_key unique (aggregate_type, aggregate_id, sequence)
);

-- Replay of one aggregate type (a projection rebuilding) paged by position.
create index events_aggregate_type_position_idx on events (aggregate_type, position);

-- Replay by time range.
create index events_occurred_at_idx on events (occurred_at);
