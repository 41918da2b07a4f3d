#!/usr/bin/env bash
# Stops everything the local stack started: the Concord services, then
# nats-server, then PostgreSQL. Idempotent. With --purge also deletes the
# state dir (data, logs, installed tools) and any /var/tmp cluster fallback.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

purge=0
case "${1:-}" in
  --purge) purge=1 ;;
  "") ;;
  *) concord_die "usage: $0 [--purge]" ;;
esac

state="$CONCORD_STATE_DIR"

bash "$here/services.sh" stop

pidfile="$state/run/nats-server.pid"
if pid="$(concord_live_pid "$pidfile" nats-server)"; then
  concord_log "stopping nats-server (pid $pid)"
  concord_stop_pid "$pid" 15
else
  concord_log "nats-server not running"
fi
rm -f "$pidfile"

pg_root="$(concord_pg_root)"
data="$pg_root/data"
if pid="$(concord_live_pid "$data/postmaster.pid" postgres)"; then
  concord_log "stopping PostgreSQL (pid $pid)"
  bindir="$(concord_pg_bindir)" || bindir=""
  if [ -z "$bindir" ] || ! concord_as_pg "$bindir/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null; then
    concord_log "pg_ctl stop failed; signalling the server directly"
    concord_stop_pid "$pid" 30
  fi
else
  concord_log "PostgreSQL not running"
fi

if [ "$purge" -eq 1 ]; then
  case "$state" in
    / | "$HOME" | "$CONCORD_ROOT") concord_die "refusing to delete CONCORD_STATE_DIR=$state" ;;
  esac
  fallback="$(concord_pg_fallback_root)"
  concord_log "removing $state and $fallback"
  rm -rf "$state" "$fallback"
fi
