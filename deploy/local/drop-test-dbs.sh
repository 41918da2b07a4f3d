#!/usr/bin/env bash
# Drops the databases that earlier test runs left behind (concord_test_*),
# so they do not pile up. One still in use (a test running elsewhere) is
# skipped, not forced.
set -euo pipefail
# shellcheck source=deploy/local/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

bindir="$(concord_pg_bindir)" || concord_die "PostgreSQL 15 not found"
psql=("$bindir/psql" "$CONCORD_TEST_DATABASE_URL" -qAtX)
dropped=0
while IFS= read -r db; do
  [ -n "$db" ] || continue
  if "${psql[@]}" -c "DROP DATABASE IF EXISTS \"$db\"" 2>/dev/null; then
    dropped=$((dropped + 1))
  else
    concord_log "skipped $db (in use)"
  fi
done < <("${psql[@]}" -c "SELECT datname FROM pg_database WHERE datname LIKE 'concord\\_test\\_%'")
[ "$dropped" -eq 0 ] || concord_log "dropped $dropped stale test database(s)"
