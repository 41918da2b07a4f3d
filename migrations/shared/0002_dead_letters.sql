-- Dead letters: messages the platform could not process, kept with their
-- original bytes, headers, reason and history so an operator can inspect and
-- replay them. Re-publishing is done by the caller; the store records it.
create table dead_letters (
    id           uuid        primary key,
    subject      text        not null,
    -- NATS headers of the original message, as a JSON object string -> string.
    headers      jsonb       not null default '{}',
    -- The original message bytes, unmodified.
    payload      bytea       not null,
    -- Stable short code: invalid_input, no_eligible_agent, max_attempts, ...
    reason       text        not null,
    -- Human-readable message for the latest failure.
    error        text        not null,
    attempts     integer     not null default 0,
    -- The service that dead-lettered the message.
    source       text        not null,
    -- JSON array of what happened to the message, oldest first.
    history      jsonb       not null default '[]',
    first_seen   timestamptz not null default now(),
    last_seen    timestamptz not null default now(),
    replayed_at  timestamptz,
    replay_count integer     not null default 0,
    constraint dead_letters_history_is_array check (jsonb_typeof(history) = 'array'),
    constraint dead_letters_headers_is_object check (jsonb_typeof(headers) = 'object')
);

-- Newest first listing, paged by (last_seen, id); purge by age.
create index dead_letters_last_seen_idx on dead_letters (last_seen desc, id desc);

-- Listing filtered by reason.
create index dead_letters_reason_last_seen_idx on dead_letters (reason, last_seen desc, id desc);
