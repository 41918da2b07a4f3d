-- Heartbeats rewrite `last_heartbeat_at` of every live agent every second.
-- With that column indexed, no update could be HOT (heap-only), so each one
-- added index entries and a new tuple elsewhere: the table of 10,000 agents
-- grew to ~250 MiB under load. Without the index, and with room left on each
-- page, the updates stay on their page. The liveness sweep scans the table
-- instead (a few thousand narrow rows, twice a second).
drop index if exists registry_agents_sweep_idx;
alter table registry_agents set (fillfactor = 50);
