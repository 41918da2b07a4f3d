#!/usr/bin/env bash
# Brings up the local infrastructure: nats-server with JetStream and a private
# PostgreSQL 15 cluster, both on 127.0.0.1 only, with state, logs and pid files
# under $CONCORD_STATE_DIR. Installs what is missing first. Idempotent: what
# already runs is left alone.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

bash "$here/install.sh"

state="$CONCORD_STATE_DIR"
mkdir -p "$state/logs" "$state/run" "$state/nats"

port_taken() {
  concord_die "port $1 ($2) is already in use by another process; stop it or choose another port, e.g. $2=$(($1 + 100)) make run"
}

start_nats() {
  local pidfile="$state/run/nats-server.pid" log="$state/logs/nats.log"
  local health="http://$CONCORD_HOST:$CONCORD_NATS_MONITOR_PORT/healthz?js-enabled-only=true"
  local pid launched=""
  if pid="$(concord_live_pid "$pidfile" nats-server)"; then
    if concord_http_ok "$health"; then
      concord_log "nats-server already running (pid $pid, $CONCORD_NATS_URL)"
      return 0
    fi
  else
    rm -f "$pidfile"
    concord_port_in_use "$CONCORD_NATS_PORT" && port_taken "$CONCORD_NATS_PORT" CONCORD_NATS_PORT
    concord_port_in_use "$CONCORD_NATS_MONITOR_PORT" && port_taken "$CONCORD_NATS_MONITOR_PORT" CONCORD_NATS_MONITOR_PORT
    concord_log "starting nats-server on $CONCORD_NATS_URL (log $log)"
    # setsid: keep it out of the caller's process group, so a Ctrl-C in the
    # terminal that ran `make run` does not take the server down with it.
    setsid "$CONCORD_NATS_SERVER_BIN" -js -sd "$state/nats" \
      -a "$CONCORD_HOST" -p "$CONCORD_NATS_PORT" -m "$CONCORD_NATS_MONITOR_PORT" \
      -n concord-local -P "$pidfile" >>"$log" 2>&1 </dev/null &
    launched=$!
  fi
  local i
  for ((i = 0; i < 300; i++)); do
    if concord_http_ok "$health"; then
      concord_log "nats-server ready (pid $(cat "$pidfile" 2>/dev/null), monitor http://$CONCORD_HOST:$CONCORD_NATS_MONITOR_PORT)"
      return 0
    fi
    if [ -n "$launched" ] && ! kill -0 "$launched" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  tail -n 20 "$log" >&2 || true
  concord_die "nats-server did not become healthy (log $log)"
}

# Picks the cluster's home: inside the state dir when the postgres user can
# reach it, else /var/tmp/concord-pg-<hash of the state dir>. Remembered in
# run/postgres.dir so down.sh finds the same one.
choose_pg_root() {
  local recorded="$state/run/postgres.dir" root
  if [ -s "$recorded" ] && [ -d "$(cat "$recorded")" ]; then
    cat "$recorded"
    return 0
  fi
  root="$state/pg"
  if concord_is_root; then
    mkdir -p "$root"
    chown postgres: "$root"
    if ! runuser -u postgres -- test -x "$root" -a -w "$root" 2>/dev/null; then
      rmdir "$root" 2>/dev/null || true
      root="$(concord_pg_fallback_root)"
      concord_log "the postgres user cannot reach $state; keeping the cluster in $root"
      mkdir -p "$root"
      chown postgres: "$root"
      chmod 700 "$root"
    fi
  else
    mkdir -p "$root"
  fi
  echo "$root" >"$recorded"
  echo "$root"
}

start_postgres() {
  local bindir root data sock log="$state/logs/postgres.log" pid
  bindir="$(concord_pg_bindir)" || concord_die "PostgreSQL 15 not found (run deploy/local/install.sh)"
  root="$(choose_pg_root)"
  data="$root/data"
  sock="$root/sock"

  if [ ! -s "$data/PG_VERSION" ]; then
    concord_log "initialising PostgreSQL cluster in $data"
    mkdir -p "$data" "$sock"
    chmod 700 "$data" "$sock"
    concord_is_root && chown postgres: "$data" "$sock"
    # Trust on the unix socket only: its folder is private to the cluster's
    # owner. TCP (127.0.0.1 only) needs a password.
    concord_as_pg "$bindir/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
      --auth-local=trust --auth-host=scram-sha-256 >>"$log" 2>&1 ||
      { tail -n 20 "$log" >&2; concord_die "initdb failed (log $log)"; }
  fi
  mkdir -p "$sock"
  concord_is_root && chown postgres: "$sock"

  if pid="$(concord_live_pid "$data/postmaster.pid" postgres)"; then
    concord_log "PostgreSQL already running (pid $pid, port $CONCORD_PG_PORT)"
  else
    # A server killed moments ago may still be an unreaped zombie, which
    # postgres would take for a live owner of postmaster.pid: let it go.
    local old i
    old="$(head -n1 "$data/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true)"
    for ((i = 0; i < 100; i++)); do
      if [ -z "$old" ] || [ "$(awk '{print $3}' "/proc/$old/stat" 2>/dev/null)" != Z ]; then break; fi
      sleep 0.1
    done
    concord_port_in_use "$CONCORD_PG_PORT" && port_taken "$CONCORD_PG_PORT" CONCORD_PG_PORT
    concord_log "starting PostgreSQL on $CONCORD_HOST:$CONCORD_PG_PORT (data $data, log $log)"
    # No -l: the server inherits this redirection, which works even when
    # the postgres user may not write into the state dir. pg_ctl detaches
    # the server into its own session.
    # max_wal_size: the event store writes about 1 GB of WAL a minute at
    # full load, so the default 1 GB forced a checkpoint every 30 s, each
    # a burst of full-page writes that slows every commit behind it.
    concord_as_pg "$bindir/pg_ctl" start -D "$data" -w -t 60 -o "\
-c listen_addresses=$CONCORD_HOST -p $CONCORD_PG_PORT \
-c unix_socket_directories=$sock -c max_connections=300 \
-c max_wal_size=4GB -c checkpoint_timeout=10min \
-c log_line_prefix='%m [%p] %q%u@%d '" >>"$log" 2>&1 </dev/null ||
      { tail -n 20 "$log" >&2; concord_die "PostgreSQL did not start (log $log)"; }
  fi

  local i
  for ((i = 0; i < 300; i++)); do
    "$bindir/pg_isready" -q -h "$CONCORD_HOST" -p "$CONCORD_PG_PORT" && break
    sleep 0.1
  done
  "$bindir/pg_isready" -q -h "$CONCORD_HOST" -p "$CONCORD_PG_PORT" ||
    { tail -n 20 "$log" >&2; concord_die "PostgreSQL is not accepting connections on port $CONCORD_PG_PORT (log $log)"; }

  # Role and database, created once. SUPERUSER: the tests create and drop a
  # database per test.
  concord_as_pg "$bindir/psql" -h "$sock" -p "$CONCORD_PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -qAtX >/dev/null <<'SQL'
SELECT 'CREATE ROLE concord LOGIN SUPERUSER PASSWORD ''concord'''
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'concord')
\gexec
SELECT 'CREATE DATABASE concord OWNER concord'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'concord')
\gexec
SQL
  concord_log "PostgreSQL ready ($CONCORD_HOST:$CONCORD_PG_PORT, role and database concord)"
}

start_nats
start_postgres
