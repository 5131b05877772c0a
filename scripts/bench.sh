#!/usr/bin/env bash
# Runs the benchmarks whose figures the issues quote, on this machine:
#   1. Snowflake unary GetId at concurrency 32 over loopback (ids/s, p50/p99/p999);
#   2. Snowflake GetIds batches of 100,000 from one worker (ids/s);
#   3. Gizzard routing lookups with 1, 1,000 and 100,000 forwardings (median ns);
#   4. tbird serve on two MariaDB replicas against the same SQL sent straight to the shards,
#      at concurrency 32: GetTweet, PostTweet and a mix (ops/s, p50/p99/p999, proxy/direct).
#   5. migrations: copy and diff rows/s of a tweet shard (BENCH_ROWS, 1M by default), and the
#      slowest post while a replica moves.
# The daemon runs with one async thread so the load generator keeps the other core.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-10s}

cargo build --release --locked -p snowflake
bin=target/release/snowflake
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --threads 1 --worker-id 1 --listen "127.0.0.1:$port" --no-metrics &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT
for _ in $(seq 50); do "$bin" get --addr "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== snowflake GetId, concurrency 32"
"$bin" bench --addr "127.0.0.1:$port" --concurrency 32 --duration "$duration"
echo
echo "== snowflake GetIds, batches of 100000, concurrency 4"
"$bin" bench --addr "127.0.0.1:$port" --concurrency 4 --duration "$duration" --batch 100000
echo
echo "== gizzard routing lookups"
cargo bench --locked -p gizzard --bench routing
echo
echo "== tbird bench on two MariaDB replicas, against direct SQL"
DURATION=$duration cargo bench --locked -p tests --bench tbird_load
echo
echo "== gizzard migrations: copy and diff of a tweet shard, a move under writes"
BENCH_ROWS=${BENCH_ROWS:-1000000} cargo bench --locked -p tests --bench migrations
echo
echo "== gizzard anti-entropy: a sweep of a replica pair at the default rate cap, its CPU"
cargo bench --locked -p tests --bench anti_entropy
echo
echo "== gizzard with one replica frozen (SIGSTOP) for 15 s under 16 writers"
cargo bench --locked -p tests --bench frozen_replica
