-- Snapshots of a namespace's documents: every live document with its
-- version and value, read by one statement (one consistent point).
CREATE TABLE state_snapshots (
    id         TEXT        PRIMARY KEY,
    namespace  TEXT        NOT NULL,
    taken_at   TIMESTAMPTZ NOT NULL,
    actor      TEXT        NOT NULL,
    count      INTEGER     NOT NULL,
    -- Times it was restored (the sequence of its `snapshot.restored` events).
    restores   INTEGER     NOT NULL DEFAULT 0,
    -- [{"key": ..., "version": ..., "value": ...}] in key order.
    documents  JSONB       NOT NULL
);

CREATE INDEX state_snapshots_namespace ON state_snapshots (namespace, id DESC);
