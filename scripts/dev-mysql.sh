#!/usr/bin/env bash
# A local T-Bird cluster in production shape: three private MariaDB servers (durable settings,
# own datadirs, loopback ports), the nameserver database on the first, a Snowflake daemon and a
# `tbird serve`, all release builds. Both tables get SHARDS ranges, each replicated on two of
# the three hosts (range i on hosts i and i+1, mod 3), created with gizzmo.
#
# Run `scripts/dev-mysql.sh --help` for the commands.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/.dev-mysql"
SHARDS=6
PORT_BASE=23306
DETACH=0
BUILD=1
# Seconds `up` waits for each daemon to answer.
WAIT="${DEV_MYSQL_WAIT:-30}"
# What this invocation of `up` started, as pid files: on failure it stops these and no others.
STARTED=()
COMMAND=up
BIN_DIR=

usage() {
  cat <<EOF
Usage: scripts/dev-mysql.sh [up|stop|status|destroy] [options]

A local T-Bird cluster on private MariaDB servers, built from this checkout.

Commands:
  up        start the cluster (the default). In the foreground it prints the addresses and
            waits; Ctrl-C or SIGTERM stops everything cleanly. With --detach it returns once
            the cluster serves; stop it later with \`stop\`.
  stop      stop a cluster running from DIR (detached or in another terminal)
  status    show which processes of DIR run, and the addresses
  destroy   stop the cluster and delete DIR (every tweet in it)

Options:
  --dir DIR         where datadirs, logs and pid files live [default: ./.dev-mysql]
  --shards N        ranges per table, for a new cluster [default: 6]
  --port-base P     MariaDB servers listen on P, P+1, P+2 [default: 23306]
  --detach          with \`up\`: start in the background and return
  --no-build        use the release binaries already built (target/release)
  --bin-dir DIR     use the tbird, snowflake and gizzmo binaries in DIR (implies --no-build)

Ports: MariaDB P..P+2, Snowflake 7609, tbird 7915, ShardManager 7920, metrics 9990, all on
127.0.0.1, so \`tbird\` and \`gizzmo\` reach it with their default addresses.

\`up\` next to a cluster that already runs from DIR starts only what is missing, and if it
fails or is interrupted it stops only what it started itself. Each wait is bounded by the
wall clock (DEV_MYSQL_WAIT seconds for a daemon, 30 by default; 60 for MariaDB), and every
probe in it has its own deadline, so a paused process cannot stretch one.

Data survives \`stop\`: the next \`up\` on the same DIR keeps the tweets and the topology.
MariaDB runs with innodb_flush_log_at_trx_commit=1 and binary logging off (so sync_binlog does
not apply): a commit is on disk before it is acknowledged.

Needs mariadbd and mariadb-install-db (Debian: apt-get install mariadb-server-core
mariadb-client-core) and cargo.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    up|stop|status|destroy) COMMAND="$1" ;;
    --dir) DIR="$2"; shift ;;
    --dir=*) DIR="${1#--dir=}" ;;
    --shards) SHARDS="$2"; shift ;;
    --shards=*) SHARDS="${1#--shards=}" ;;
    --port-base) PORT_BASE="$2"; shift ;;
    --port-base=*) PORT_BASE="${1#--port-base=}" ;;
    --detach|-d) DETACH=1 ;;
    --no-build) BUILD=0 ;;
    --bin-dir) BIN_DIR="$2"; BUILD=0; shift ;;
    --bin-dir=*) BIN_DIR="${1#--bin-dir=}"; BUILD=0 ;;
    -h|--help|help) usage; exit 0 ;;
    *) echo "dev-mysql: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$SHARDS" in ''|*[!0-9]*) echo "dev-mysql: --shards must be a number" >&2; exit 2 ;; esac
case "$PORT_BASE" in ''|*[!0-9]*) echo "dev-mysql: --port-base must be a number" >&2; exit 2 ;; esac
case "$WAIT" in ''|*[!0-9]*) echo "dev-mysql: DEV_MYSQL_WAIT must be a number" >&2; exit 2 ;; esac
if [ "$COMMAND" = up ]; then
  mkdir -p "$DIR"
elif [ ! -d "$DIR" ]; then
  echo "dev-mysql: no cluster in $DIR" >&2
  exit 3
fi
DIR="$(cd "$DIR" && pwd)"

HOSTS=(a b c)
SNOWFLAKE_ADDR=127.0.0.1:7609
TWEETS_ADDR=127.0.0.1:7915
ADMIN_ADDR=127.0.0.1:7920
METRICS_ADDR=127.0.0.1:9990
TARGET="${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

log() { echo "dev-mysql: $*" >&2; }
die() { log "$*"; exit 1; }

port_of() { echo $((PORT_BASE + $1)); }
url_of() { echo "mysql://root@127.0.0.1:$(port_of "$1")/$2"; }

# Prints the pid in pid file $1 if that process is alive and is the program the file is named
# after (tbird.pid: tbird, mariadbd.pid: mariadbd), so a stale file never names a stranger.
alive_pid() {
  local pid program
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  program="$(basename "$1" .pid)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$program" && echo "$pid"
}

# Sends SIGTERM to the process of pid file $1 and waits up to $2 seconds, then SIGKILL.
stop_pid() {
  local file="$1" wait="$2" pid i
  if pid="$(alive_pid "$file")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$(basename "$file" .pid) did not stop within ${wait}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

# Stops the processes of the pid files given, in the order of stop_all.
stop_these() {
  local file i
  # Clients of the databases first, so nothing is cut off mid-write.
  for file in "$DIR/tbird.pid" "$DIR/snowflake.pid"; do
    if printf '%s\n' "$@" | grep -qxF "$file"; then
      case "$file" in */tbird.pid) stop_pid "$file" 20 ;; *) stop_pid "$file" 10 ;; esac
    fi
  done
  for i in 0 1 2; do
    file="$DIR/mariadb-${HOSTS[$i]}/mariadbd.pid"
    if printf '%s\n' "$@" | grep -qxF "$file"; then stop_pid "$file" 60; fi
  done
}

stop_all() {
  stop_these "$DIR/tbird.pid" "$DIR/snowflake.pid" "$DIR"/mariadb-{a,b,c}/mariadbd.pid
}

# Prints the wall-clock time in milliseconds.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

status() {
  local name file pid running=0
  for name in mariadb-a mariadb-b mariadb-c snowflake tbird; do
    case "$name" in
      mariadb-*) file="$DIR/$name/mariadbd.pid" ;;
      *) file="$DIR/$name.pid" ;;
    esac
    if pid="$(alive_pid "$file")"; then
      printf '  %-10s running (pid %s)\n' "$name" "$pid"
      running=$((running + 1))
    else
      printf '  %-10s stopped\n' "$name"
    fi
  done
  [ "$running" -gt 0 ]
}

print_addresses() {
  cat <<EOF

T-Bird cluster in $DIR
  MariaDB      a 127.0.0.1:$(port_of 0) (also the nameserver, database gizzard)
               b 127.0.0.1:$(port_of 1)   c 127.0.0.1:$(port_of 2)   shard database tbird
  Snowflake    $SNOWFLAKE_ADDR
  tbird        $TWEETS_ADDR   (ShardManager $ADMIN_ADDR, metrics http://$METRICS_ADDR/metrics)
  logs         $DIR/*.log, $DIR/mariadb-*/error.log

Try:
  $TARGET/tbird post --user 1 'hello, production'
  $TARGET/tbird get ID
  $TARGET/tbird timeline --user 1
  $TARGET/gizzmo tree 1
  $TARGET/gizzmo jobs list
  curl -s http://$METRICS_ADDR/metrics | grep ^tbird_
  mariadb -h 127.0.0.1 -P $(port_of 0) -u root gizzard
EOF
}

find_tool() {
  local name="$1" dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for dir in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin /usr/local/mysql/bin; do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
  done
  return 1
}

# Starts MariaDB server $1 (0..2), creating its datadir the first time.
start_mariadb() {
  local i="$1" host="${HOSTS[$1]}" home port mariadbd install user=()
  home="$DIR/mariadb-$host"
  port="$(port_of "$i")"
  if alive_pid "$home/mariadbd.pid" >/dev/null; then
    log "mariadb $host already runs"
    return
  fi
  mariadbd="$(find_tool mariadbd)" || die "mariadbd not found: apt-get install mariadb-server-core"
  [ "$(id -u)" = 0 ] && user=(--user=root)
  if [ ! -f "$home/data/READY" ]; then
    install="$(find_tool mariadb-install-db)" ||
      die "mariadb-install-db not found: apt-get install mariadb-server-core mariadb-client-core"
    log "creating the datadir of mariadb $host"
    rm -rf "$home/data"
    mkdir -p "$home"
    "$install" --no-defaults --datadir="$home/data" --auth-root-authentication-method=normal \
      --skip-test-db --skip-name-resolve "${user[@]}" >"$home/install.log" 2>&1 ||
      die "mariadb-install-db failed; see $home/install.log"
    touch "$home/data/READY"
  fi
  # Durable: every commit reaches the disk before it is acknowledged (flush and sync the redo
  # log, doublewrite on). No binary log, so sync_binlog has nothing to do.
  setsid "$mariadbd" --no-defaults "${user[@]}" \
    --datadir="$home/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$home/mysqld.sock" --pid-file="$home/mariadbd.pid" \
    --log-error="$home/error.log" \
    --skip-name-resolve --skip-log-bin \
    --innodb-flush-log-at-trx-commit=1 --innodb-doublewrite=1 \
    --innodb-buffer-pool-size=128M --max-connections=500 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_bin \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$home/mariadbd.pid"
  STARTED+=("$home/mariadbd.pid")
}

wait_mariadb() {
  local i="$1" host="${HOSTS[$1]}" home deadline
  home="$DIR/mariadb-$host"
  deadline=$(($(now_ms) + 60000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if sql "$i" "SELECT 1" >/dev/null 2>&1; then return; fi
    alive_pid "$home/mariadbd.pid" >/dev/null ||
      die "mariadb $host exited; see $home/error.log"
    sleep 0.1
  done
  die "mariadb $host did not answer within 60s; see $home/error.log"
}

# Runs SQL on server $1 through its socket, giving up after 10 s (a paused server never
# answers).
sql() {
  local client
  client="$(find_tool mariadb || find_tool mysql)" ||
    die "the mariadb client is missing: apt-get install mariadb-client-core"
  timeout -k 1 10 "$client" --no-defaults --connect-timeout=5 -u root \
    --socket="$DIR/mariadb-${HOSTS[$1]}/mysqld.sock" -N -e "$2"
}

start_daemon() {
  local name="$1"; shift
  if alive_pid "$DIR/$name.pid" >/dev/null; then
    log "$name already runs"
    return
  fi
  RUST_LOG="${RUST_LOG:-info}" setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
  STARTED+=("$DIR/$name.pid")
}

# Runs the probe "$@" until it succeeds, for at most WAIT seconds of wall clock; each try
# gets 2 s, so a process that accepts connections but never answers cannot stretch the wait.
wait_for() {
  local what="$1" pidfile="$2" deadline; shift 2
  deadline=$(($(now_ms) + WAIT * 1000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if timeout -k 1 2 "$@" >/dev/null 2>&1; then return; fi
    alive_pid "$pidfile" >/dev/null || die "$what exited; see $DIR/$what.log"
    sleep 0.1
  done
  die "$what did not answer within ${WAIT}s; see $DIR/$what.log"
}

gizzmo() { "$TARGET/gizzmo" --addr "$ADMIN_ADDR" "$@" >/dev/null; }

# Creates both tables with every range on all three hosts, then takes each range off one
# host (range i stays on hosts i and i+1, mod 3): every step is a valid topology, and the
# tables are still empty.
create_topology() {
  local i table class suffix n prefix drop
  for i in 0 1 2; do
    gizzmo add-host "${HOSTS[$i]}" "$(url_of "$i" tbird)"
  done
  for table in 1 2; do
    class=TweetShard suffix=tweets
    [ "$table" = 2 ] && class=TimelineShard suffix=timeline
    gizzmo create-table "$table" --shards "$SHARDS" --replicas a,b,c --class "$class"
    for ((n = 0; n < SHARDS; n++)); do
      prefix="$(printf 't%s_%04d' "$table" "$n")"
      drop=$(((n + 2) % 3))
      gizzmo unlink "localhost/$prefix" "${HOSTS[$drop]}/$prefix"
      gizzmo delete-shard "${HOSTS[$drop]}/$prefix"
      sql "$drop" "DROP TABLE IF EXISTS tbird.${prefix}_$suffix"
    done
  done
  log "created tables 1 and 2: $SHARDS ranges each, every range on 2 of the 3 hosts"
}

up() {
  [ "$SHARDS" -ge 1 ] || die "--shards must be at least 1"
  if [ "$BUILD" = 1 ]; then
    log "building release binaries (cargo build --release)"
    (cd "$ROOT" && cargo build --release --locked -p tbird --bin tbird \
      -p snowflake --bin snowflake -p gizzmo --bin gizzmo) || die "cargo build failed"
  fi
  for bin in tbird snowflake gizzmo; do
    [ -x "$TARGET/$bin" ] || die "$TARGET/$bin is missing: run without --no-build"
  done

  # Whatever ends this script stops what it started, unless it detached on purpose.
  STATE=starting
  trap 'exit 0' INT TERM
  trap 'on_exit' EXIT
  for i in 0 1 2; do start_mariadb "$i"; done
  for i in 0 1 2; do wait_mariadb "$i"; done
  sql 0 "CREATE DATABASE IF NOT EXISTS gizzard"
  for i in 0 1 2; do sql "$i" "CREATE DATABASE IF NOT EXISTS tbird"; done

  start_daemon snowflake "$TARGET/snowflake" serve --listen "$SNOWFLAKE_ADDR" \
    --worker-id 1 --no-metrics
  wait_for snowflake "$DIR/snowflake.pid" "$TARGET/snowflake" get --addr "$SNOWFLAKE_ADDR" \
    --timeout 1s
  start_daemon tbird "$TARGET/tbird" serve --nameserver-url "$(url_of 0 gizzard)" \
    --snowflake-addr "$SNOWFLAKE_ADDR" --listen "$TWEETS_ADDR" --admin-listen "$ADMIN_ADDR" \
    --metrics-listen "$METRICS_ADDR"
  wait_for tbird "$DIR/tbird.pid" "$TARGET/gizzmo" --addr "$ADMIN_ADDR" --timeout 1s hosts
  if ! "$TARGET/gizzmo" --addr "$ADMIN_ADDR" forwardings --table 1 | grep -q localhost/; then
    create_topology
  else
    log "keeping the existing topology"
  fi
  print_addresses

  if [ "$DETACH" = 1 ]; then
    STATE=detached
    log "running in the background; stop with: scripts/dev-mysql.sh stop --dir $DIR"
    return
  fi
  STATE=running
  if [ "${#STARTED[@]}" = 0 ]; then
    log "running (all of it was running already); Ctrl-C leaves it running"
  else
    log "running; Ctrl-C stops what this started"
  fi
  # Wait for a signal, or for a process to die (then stop the rest and say so).
  while status >/dev/null && alive_pid "$DIR/tbird.pid" >/dev/null &&
        alive_pid "$DIR/snowflake.pid" >/dev/null; do
    sleep 1 &
    wait $! || true
  done
  STATE=failed
  log "a process exited; stopping what this started (see $DIR/*.log)"
  exit 1
}

# Stops what this invocation started, and nothing else: a cluster that was already running
# (detached, or from another terminal) is left as it was.
on_exit() {
  case "$STATE" in
    detached) return ;;
    starting) log "start failed; stopping what this started" ;;
    running) log "stopping" ;;
  esac
  if [ "${#STARTED[@]}" = 0 ]; then
    log "started nothing; leaving the running processes alone"
    return
  fi
  stop_these "${STARTED[@]}"
  log "stopped what this started"
}

case "$COMMAND" in
  up) up ;;
  stop) stop_all; log "stopped" ;;
  status)
    if status; then print_addresses; else exit 3; fi
    ;;
  destroy)
    stop_all
    rm -rf "$DIR"
    log "removed $DIR"
    ;;
esac
