-- The registry's agent directory (owned by concord-registry; no other
-- service reads it: they watch the directory KV bucket instead).
--
-- `record` holds the registration as the canonical JSON of the wire
-- `AgentRecord` (name, capabilities, labels, version, key, timestamps); the
-- columns hold what changes often or is queried. `revision` orders every
-- change (the directory KV keeps the highest); `event_seq` numbers the
-- agent's events in the event store. Deregistration is a soft delete so a
-- re-registration continues both sequences and keeps the public key.
create table registry_agents (
    id                text primary key,
    record            jsonb            not null,
    public_key        text             not null default '',
    liveness          text             not null,
    health            text             not null default 'HEALTHY',
    in_flight         integer          not null default 0,
    last_heartbeat_at timestamptz,
    revision          bigint           not null,
    event_seq         bigint           not null,
    deregistered_at   timestamptz,
    reputation        double precision not null default 0.5,
    successes         bigint           not null default 0,
    failures          bigint           not null default 0
);

-- The liveness sweep: live agents whose last heartbeat is old.
create index registry_agents_sweep_idx on registry_agents (last_heartbeat_at)
    where deregistered_at is null and liveness <> 'UNAVAILABLE';
