#!/usr/bin/env bash
# MySQL mirror benchmark (issue 5): sync throughput, lag p99 at 500 uploads/s,
# reconcile of 1,000,000 rows; each against a baseline measured in the same run
# (see examples/mysql_sync_bench.rs). Starts its own throwaway MariaDB
# (package mariadb-server) in a temp folder and removes it at the end.
#
#   benches/mysql_sync.sh [rows]        # default 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}

for bin in mariadb-install-db mariadbd; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || {
        echo "$bin not found: install the apt package mariadb-server" >&2; exit 2; }
done
PATH="$PATH:/usr/sbin"

cargo build --release --bin media-store --example mysql_sync_bench

work=$(mktemp -d /tmp/ms-mysql-bench.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mariadb-install-db --no-defaults --user=root --datadir="$work/db" \
    --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve >"$work/install.log" 2>&1
# Stock durability (innodb_flush_log_at_trx_commit=1): one log flush per batch commit.
mariadbd --no-defaults --user=root --datadir="$work/db" --socket="$work/mysqld.sock" \
    --skip-networking --pid-file="$work/mysqld.pid" --log-error="$work/mysqld.err" \
    --innodb-buffer-pool-size=1G --max-connections=200 &
pid=$!
for _ in $(seq 1 300); do
    [ -S "$work/mysqld.sock" ] && break
    sleep 0.1
done
[ -S "$work/mysqld.sock" ] || { cat "$work/mysqld.err"; exit 2; }
sleep 0.5

echo "MariaDB $(mariadbd --version | awk '{print $3}'), $(nproc) cores; rows=$rows"
target/release/examples/mysql_sync_bench target/release/media-store \
    "mysql://root@localhost/{db}?socket=$work/mysqld.sock" "$work/run" "$rows"
