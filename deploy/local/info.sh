#!/usr/bin/env bash
# Prints what the local stack runs where, and a few commands to try.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

rel() { echo "${1#"$CONCORD_ROOT"/}"; }
bin="$(rel "$CONCORD_BIN_DIR")"

cat <<TXT

Concord is running locally.

  NATS          $CONCORD_NATS_URL  (JetStream; monitor http://$CONCORD_HOST:$CONCORD_NATS_MONITOR_PORT)
  Postgres      $CONCORD_DATABASE_URL
  logs          $(rel "$CONCORD_STATE_DIR/logs")/

TXT
bash "$here/services.sh" status | sed 's/^/  /' || true
cat <<TXT

Try:
  $bin/concord ping                 # who answers \$SRV.PING
  $bin/concord services             # each service's endpoints
  $bin/concord events tail          # live events (or: nats sub 'concord.events.>')
  $bin/concord dlq list             # dead letters
  psql $CONCORD_DATABASE_URL
  tail -f $(rel "$CONCORD_STATE_DIR/logs")/concord-dispatcher.log
  make stop          # stop services, NATS and Postgres (data is kept)
  make clean-state   # stop and delete all local state

TXT
