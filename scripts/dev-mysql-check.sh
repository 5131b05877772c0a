#!/usr/bin/env bash
# Checks that `scripts/dev-mysql.sh up`, run next to a cluster that already runs with one
# component paused (SIGSTOP), gives up within its stated wait and leaves every process of that
# cluster running: it stops only what it started itself.
#
# Uses the debug binaries (cargo build, not --release: cheap next to the tests' own builds)
# through --bin-dir, a private --dir and --port-base. The daemons' ports are the defaults
# (7609, 7915, 7920, 9990), as in dev-mysql.sh: they must be free.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
DIR="$(mktemp -d)"
PORT_BASE="${PORT_BASE:-24306}"
WAIT=5
export PATH="$PATH:/usr/sbin"

say() { echo "dev-mysql-check: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
dev() { DEV_MYSQL_WAIT="$WAIT" scripts/dev-mysql.sh "$@" --dir "$DIR" --bin-dir "$BIN" \
  --port-base "$PORT_BASE" --shards 2; }

cleanup() {
  [ -n "${PAUSED:-}" ] && kill -CONT "$PAUSED" 2>/dev/null
  dev stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

cargo build --quiet --locked -p tbird --bin tbird -p snowflake --bin snowflake \
  -p gizzmo --bin gizzmo
dev up --detach >/dev/null 2>"$DIR.up.log" || { cat "$DIR.up.log" >&2; fail "first up failed"; }
rm -f "$DIR.up.log"
pids() { cat "$DIR"/*.pid "$DIR"/mariadb-*/mariadbd.pid | sort | tr '\n' ' '; }
before="$(pids)"
say "cluster running: $before"

# Pause the Snowflake daemon: it accepts connections but answers nothing.
PAUSED="$(cat "$DIR/snowflake.pid")"
kill -STOP "$PAUSED"
started=$(date +%s)
if dev up >"$DIR/second-up.out" 2>&1; then
  fail "up succeeded with Snowflake paused"
fi
took=$(($(date +%s) - started))
cat "$DIR/second-up.out" >&2
# The wait is WAIT seconds of wall clock; each probe has 2 s; a few seconds of slack.
[ "$took" -le $((WAIT + 10)) ] || fail "up took ${took}s, over its ${WAIT}s wait"
grep -q "did not answer within ${WAIT}s" "$DIR/second-up.out" ||
  fail "up did not say which wait ran out"
grep -q "started nothing; leaving the running processes alone" "$DIR/second-up.out" ||
  fail "up did not say it left the cluster alone"

kill -CONT "$PAUSED"
PAUSED=
for pid in $before; do
  kill -0 "$pid" 2>/dev/null || fail "process $pid of the running cluster was stopped"
done
[ "$(pids)" = "$before" ] || fail "pid files changed: $(pids) (was $before)"
"$BIN/snowflake" get --timeout 5s >/dev/null || fail "snowflake no longer answers"
"$BIN/gizzmo" --timeout 5s hosts >/dev/null || fail "tbird no longer answers"
say "ok: up gave up after ${took}s and left all five processes running"
