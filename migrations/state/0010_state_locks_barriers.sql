-- Locks and barriers of the state service. Each row holds the pure rule
-- object (services/state/src/lock.rs, barrier.rs) as JSON; a request locks
-- the row, applies the rules and writes it back in one transaction, so two
-- replicas never grant one lock twice or release one barrier twice.
CREATE TABLE state_locks (
    resource         TEXT        PRIMARY KEY,
    -- Holders, waiters (with where to answer them) and the last token.
    lock             JSONB       NOT NULL,
    -- Sequence of the resource's `state.lock` events.
    seq              BIGINT      NOT NULL DEFAULT 0,
    -- Who holds or waits: freed when their agent goes away.
    owners           TEXT[]      NOT NULL DEFAULT '{}',
    -- Unix ms when a lease or a wait next runs out (NULL: nothing can).
    next_deadline_ms BIGINT,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX state_locks_due ON state_locks (next_deadline_ms)
    WHERE next_deadline_ms IS NOT NULL;
CREATE INDEX state_locks_owners ON state_locks USING GIN (owners);

CREATE TABLE state_barriers (
    id           TEXT        PRIMARY KEY,
    barrier      JSONB       NOT NULL,
    -- Where waiting arrivals are answered at the release or the timeout.
    replies      JSONB       NOT NULL DEFAULT '[]',
    -- Sequence of the barrier's `state.barrier` events.
    seq          BIGINT      NOT NULL DEFAULT 0,
    status       TEXT        NOT NULL,
    deadline_ms  BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX state_barriers_due ON state_barriers (deadline_ms)
    WHERE status = 'WAITING';
