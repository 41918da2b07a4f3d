#!/usr/bin/env bash
# Starts, stops and reports the Concord service binaries built in
# $CONCORD_BIN_DIR (target/release), each in the background with its log in
# $CONCORD_STATE_DIR/logs/<binary>.log and its pid in $CONCORD_STATE_DIR/run/.
#
# `start` leaves a running service alone, unless its binary is newer than
# its pid file (cargo rebuilt it): then that one service is restarted, so
# `make run` after a code change runs the new code.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

run_dir="$CONCORD_STATE_DIR/run"
log_dir="$CONCORD_STATE_DIR/logs"
ping_wait="${CONCORD_PING_WAIT:-60}"
# A service drains for up to CONCORD_SHUTDOWN_GRACE seconds on SIGTERM.
stop_wait=$((${CONCORD_SHUTDOWN_GRACE:-10} + 5))

usage() { concord_die "usage: $0 start|stop|status"; }

# Names to manage: the six services, then the extras that have been built.
names() {
  local n
  for n in "${CONCORD_SERVICES[@]}"; do echo "$n"; done
  for n in "${CONCORD_EXTRAS[@]}"; do
    [ -x "$CONCORD_BIN_DIR/concord-$n" ] && echo "$n"
  done
  return 0
}

pidfile_of() { echo "$run_dir/concord-$1.pid"; }

start_one() {
  local name="$1" bin="$CONCORD_BIN_DIR/concord-$1" pidfile log pid port
  pidfile="$(pidfile_of "$name")"
  log="$log_dir/concord-$name.log"
  port="$(concord_metrics_port "$name")"
  if pid="$(concord_live_pid "$pidfile" "concord-$name")"; then
    if [ "$bin" -nt "$pidfile" ]; then
      concord_log "concord-$name: binary rebuilt, restarting (pid $pid)"
      concord_stop_pid "$pid" "$stop_wait"
    else
      concord_log "concord-$name already running (pid $pid)"
      return 0
    fi
  fi
  printf '\n==== %s start %s\n' "$(date -u +%FT%TZ)" "concord-$name" >>"$log"
  # setsid: detached from the terminal's process group (Ctrl-C on make).
  # In a non-interactive shell the job is not a group leader, so setsid
  # does not fork and $! is the service's own pid.
  CONCORD_METRICS_ADDR="$CONCORD_HOST:$port" setsid "$bin" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  concord_log "started concord-$name (pid $!, metrics http://$CONCORD_HOST:$port/metrics, log $log)"
}

show_failures() {
  local name pidfile log any=0
  for name in $(names); do
    pidfile="$(pidfile_of "$name")"
    log="$log_dir/concord-$name.log"
    if ! concord_live_pid "$pidfile" "concord-$name" >/dev/null; then
      any=1
      concord_log "concord-$name is not running; last lines of $log:"
      tail -n 30 "$log" >&2 || true
    fi
  done
  if [ "$any" -eq 0 ]; then
    for name in $(names); do
      concord_log "last lines of $log_dir/concord-$name.log:"
      tail -n 10 "$log_dir/concord-$name.log" >&2 || true
    done
  fi
}

cmd_start() {
  local name missing=()
  for name in "${CONCORD_SERVICES[@]}"; do
    [ -x "$CONCORD_BIN_DIR/concord-$name" ] || missing+=("concord-$name")
  done
  [ "${#missing[@]}" -eq 0 ] ||
    concord_die "not built in $CONCORD_BIN_DIR: ${missing[*]} (run: cargo build --release --workspace --bins)"
  mkdir -p "$run_dir" "$log_dir"
  for name in $(names); do start_one "$name"; done

  local cli="$CONCORD_BIN_DIR/concord" expect=() i
  if [ -x "$cli" ]; then
    for name in "${CONCORD_SERVICES[@]}"; do expect+=(--expect "concord-$name"); done
    concord_log "waiting up to ${ping_wait}s for the services to answer \$SRV.PING"
    if ! "$cli" ping --wait "$ping_wait" "${expect[@]}"; then
      show_failures
      concord_die "services did not all answer \$SRV.PING (logs in $log_dir)"
    fi
  else
    concord_log "warning: $cli not built; checking only that the processes stay up"
    sleep 3
  fi
  for name in $(names); do
    if ! concord_live_pid "$(pidfile_of "$name")" "concord-$name" >/dev/null; then
      show_failures
      concord_die "concord-$name exited (log $log_dir/concord-$name.log)"
    fi
  done
  concord_log "all services up"
}

cmd_stop() {
  local f name pid i order=() files=()
  # Agents first, then the services in reverse start order, then any other
  # pid file left in run/ by an older layout.
  for name in "${CONCORD_EXTRAS[@]}"; do order+=("concord-$name"); done
  for ((i = ${#CONCORD_SERVICES[@]} - 1; i >= 0; i--)); do order+=("concord-${CONCORD_SERVICES[i]}"); done
  for name in "${order[@]}"; do
    [ -e "$run_dir/$name.pid" ] && files+=("$run_dir/$name.pid")
  done
  shopt -s nullglob
  for f in "$run_dir"/concord-*.pid; do
    case " ${files[*]} " in *" $f "*) ;; *) files+=("$f") ;; esac
  done
  if [ "${#files[@]}" -eq 0 ]; then
    concord_log "no Concord services running"
    return 0
  fi
  for f in "${files[@]}"; do
    name="$(basename "$f" .pid)"
    if pid="$(concord_live_pid "$f" "$name")"; then
      concord_log "stopping $name (pid $pid)"
      concord_stop_pid "$pid" "$stop_wait"
    fi
    rm -f "$f"
  done
}

cmd_status() {
  local name pid port down=0
  printf '%-22s %-8s %-8s %s\n' SERVICE STATE PID METRICS
  for name in $(names); do
    port="$(concord_metrics_port "$name")"
    if pid="$(concord_live_pid "$(pidfile_of "$name")" "concord-$name")"; then
      printf '%-22s %-8s %-8s %s\n' "concord-$name" running "$pid" "http://$CONCORD_HOST:$port/metrics"
    else
      printf '%-22s %-8s %-8s %s\n' "concord-$name" stopped - "http://$CONCORD_HOST:$port/metrics"
      down=1
    fi
  done
  return "$down"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
