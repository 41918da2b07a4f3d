-- Cheaper indexes on the append path of the event store.
--
-- Every btree on `events` is paid for on each of the tens of thousands of
-- rows appended per second. Time-range replay gets a BRIN index instead
-- (occurred_at grows with position, so block ranges summarise it well and it
-- costs next to nothing to maintain). Replay filtered by aggregate type pages
-- along the primary key; add an index if a consumer needs a rare type often.
drop index if exists events_aggregate_type_position_idx;
drop index if exists events_occurred_at_idx;
create index events_occurred_at_brin on events using brin (occurred_at);
