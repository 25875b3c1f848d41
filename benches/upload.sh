#!/usr/bin/env bash
# Upload benchmarks for issue #2, whole-program, baselines interleaved in the same run.
#
#   benches/upload.sh [all|big|small|rss|list]   (big includes the duplicate-upload runs)
#
# Environment: BENCH_DIR (scratch folder on the file system under test; default
# target/bench), BIG_MB (size of the large upload, default 1024), ROUNDS (default 6;
# keep it a multiple of 3: the large-upload runs rotate their order), LIST_ROWS (rows
# in the listing index, default 10000000; the seeded index is kept in
# $BENCH_DIR/list-data and reused), BENCH_ENV (prefix for the daemon's command, e.g.
# "env MIMALLOC_PURGE_DELAY=0" to see how much of the peak RSS is allocator retention),
# MEDIA_STORE_BIN and LOADGEN_BIN (binaries to run instead of building this tree).
# Prints one line per measurement and a summary of ratios at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
BENCH_DIR=${BENCH_DIR:-$PWD/target/bench}
BIG_MB=${BIG_MB:-1024}
ROUNDS=${ROUNDS:-6}
LIST_ROWS=${LIST_ROWS:-10000000}
BENCH_ENV=${BENCH_ENV:-}
TOKEN=bench-token
mkdir -p "$BENCH_DIR"
# MEDIA_STORE_BIN / LOADGEN_BIN: run another build (e.g. an older revision, to
# compare before/after in one session) instead of building this tree.
if [ -z "${MEDIA_STORE_BIN:-}" ]; then
    cargo build --release --quiet --bin media-store --example loadgen
fi
BIN=${MEDIA_STORE_BIN:-$PWD/target/release/media-store}
LOADGEN=${LOADGEN_BIN:-$PWD/target/release/examples/loadgen}
summary=()
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }

start_daemon() { # $1 data dir -> sets URL, DPID
    local log=$BENCH_DIR/daemon.$RANDOM.log
    MEDIA_STORE_API_TOKEN=$TOKEN MEDIA_STORE_LOG=warn $BENCH_ENV "$BIN" serve --data-dir "$1" --listen 127.0.0.1:0 >"$log" 2>&1 &
    DPID=$!
    pids+=("$DPID")
    # Up to 5 minutes: the first start on an old seeded index runs its migrations.
    for _ in $(seq 6000); do
        URL=$(sed -n 's/^listening on //p' "$log" 2>/dev/null || true)
        [ -n "$URL" ] && return 0
        sleep 0.05
    done
    echo "daemon did not start"; cat "$log"; exit 1
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; }

# A file that sniffs as MP4: an ftyp box then random bytes.
make_video() { # $1 path, $2 MiB
    { printf '\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2'; head -c $(( $2 * 1048576 - 24 )) /dev/urandom; } >"$1"
}
# Changes a few bytes so the content (and hash) is new, without rewriting the file.
perturb() { head -c 16 /dev/urandom | dd of="$1" bs=1 seek=64 conv=notrunc status=none; }

start_nginx_dav() { # -> sets DAV_URL
    local n=$BENCH_DIR/nginx
    rm -rf "$n"; mkdir -p "$n/dav" "$n/tmp" "$n/logs"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$n/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $n/nginx.pid;
error_log $n/logs/error.log;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $n/tmp;
    proxy_temp_path $n/tmp; fastcgi_temp_path $n/tmp; uwsgi_temp_path $n/tmp; scgi_temp_path $n/tmp;
    server {
        listen 127.0.0.1:$port;
        client_max_body_size 0;
        location / { root $n/dav; dav_methods PUT; create_full_put_path on; }
    }
}
CONF
    nginx -p "$n" -c "$n/nginx.conf" &
    pids+=("$!")
    DAV_URL=http://127.0.0.1:$port
    DAV_ROOT=$n/dav
    sleep 0.5
}

bench_big() {
    local src=$BENCH_DIR/src.mp4
    rm -rf "$BENCH_DIR/data-big"
    make_video "$src" "$BIG_MB"
    start_daemon "$BENCH_DIR/data-big"
    start_nginx_dav
    local dd_t=() ms_t=() dav_t=()
    run_dd() {
        perturb "$src"; sync
        t=$(now); dd if="$src" of="$BENCH_DIR/dd.out" bs=1M conv=fsync status=none; dd_t+=("$(elapsed "$t")")
    }
    run_ms() {
        perturb "$src"; sync
        t=$(now)
        code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -T "$src" -H "Authorization: Bearer $TOKEN" "$URL/v1/media?uploader_id=1")
        ms_t+=("$(elapsed "$t")")
        [ "$code" = 201 ] || { echo "upload failed: $code"; exit 1; }
    }
    run_dav() {
        perturb "$src"; sync
        t=$(now); curl -sS -o /dev/null -T "$src" "$DAV_URL/f$r.mp4"; sync "$DAV_ROOT/f$r.mp4"; dav_t+=("$(elapsed "$t")")
    }
    # The order rotates each round: this disk slows down after a few GiB of
    # writes, and whoever runs first must not always get the fast disk.
    local orders=("run_dd run_ms run_dav" "run_ms run_dav run_dd" "run_dav run_dd run_ms")
    for r in $(seq "$ROUNDS"); do
        for step in ${orders[$(( (r - 1) % 3 ))]}; do $step; done
        echo "big round $r (${orders[$(( (r - 1) % 3 ))]}): dd ${dd_t[-1]} s, media-store ${ms_t[-1]} s, nginx PUT+fsync ${dav_t[-1]} s"
        rm -f "$BENCH_DIR/dd.out" "$DAV_ROOT/f$r.mp4"
    done
    # Each tool ran in each position equally often (ROUNDS a multiple of 3), so
    # total times compare like with like whatever state the disk was in.
    total() { printf '%s\n' "$@" | paste -sd+ | bc -l; }
    local dd_sum ms_sum dav_sum
    dd_sum=$(total "${dd_t[@]}"); ms_sum=$(total "${ms_t[@]}"); dav_sum=$(total "${dav_t[@]}")
    summary+=("1 GiB-class upload, $ROUNDS rounds, order rotated: throughput media-store/dd = $(echo "$dd_sum/$ms_sum" | bc -l | xargs printf '%.2f') (target >= 0.80), media-store/nginx WebDAV PUT+fsync = $(echo "$dav_sum/$ms_sum" | bc -l | xargs printf '%.2f') (target > 1); per-round seconds: dd ${dd_t[*]}; media-store ${ms_t[*]}; nginx ${dav_t[*]}")
    local dd ms dav
    dd=$(printf '%s\n' "${dd_t[@]}" | sort -g | head -1)
    ms=$(printf '%s\n' "${ms_t[@]}" | sort -g | head -1)
    dav=$(printf '%s\n' "${dav_t[@]}" | sort -g | head -1)
    summary+=("1 GiB-class upload ($BIG_MB MiB), best of $ROUNDS: dd conv=fsync $(echo "$BIG_MB/$dd" | bc -l | xargs printf '%.0f') MiB/s, media-store $(echo "$BIG_MB/$ms" | bc -l | xargs printf '%.0f') MiB/s, nginx WebDAV PUT+fsync $(echo "$BIG_MB/$dav" | bc -l | xargs printf '%.0f') MiB/s; media-store/dd = $(echo "$dd/$ms" | bc -l | xargs printf '%.2f') (target >= 0.80), media-store/nginx = $(echo "$dav/$ms" | bc -l | xargs printf '%.2f') (target > 1)")
    # A duplicate of content already stored: hashing only.
    local dup_t=()
    curl -sS -o /dev/null -X POST -T "$src" -H "Authorization: Bearer $TOKEN" "$URL/v1/media?uploader_id=1"
    for r in $(seq "$ROUNDS"); do
        t=$(now)
        out=$(curl -sS -X POST -T "$src" -H "Authorization: Bearer $TOKEN" "$URL/v1/media?uploader_id=1")
        dup_t+=("$(elapsed "$t")")
        echo "$out" | grep -q '"deduplicated":true' || { echo "not deduplicated: $out"; exit 1; }
    done
    local dup hinted_t=() hash
    dup=$(printf '%s\n' "${dup_t[@]}" | sort -g | head -1)
    hash=$(b3sum --no-names "$src")
    for r in $(seq "$ROUNDS"); do
        t=$(now)
        out=$(curl -sS -X POST -T "$src" -H "Authorization: Bearer $TOKEN" "$URL/v1/media?uploader_id=1&blake3=$hash")
        hinted_t+=("$(elapsed "$t")")
        echo "$out" | grep -q '"deduplicated":true' || { echo "not deduplicated: $out"; exit 1; }
    done
    local hinted
    hinted=$(printf '%s\n' "${hinted_t[@]}" | sort -g | head -1)
    t=$(now); b3sum "$src" >/dev/null; b3=$(elapsed "$t")
    t=$(now); b3sum --num-threads 1 "$src" >/dev/null; b3one=$(elapsed "$t")
    summary+=("duplicate upload ($BIG_MB MiB, already stored): $(echo "$BIG_MB/$hinted" | bc -l | xargs printf '%.0f') MiB/s with ?blake3= (hash only, nothing written), $(echo "$BIG_MB/$dup" | bc -l | xargs printf '%.0f') MiB/s without (staged in page cache, no fsync, unlinked) over HTTP with curl (b3sum of the same file: $(echo "$BIG_MB/$b3" | bc -l | xargs printf '%.0f') MiB/s all cores, $(echo "$BIG_MB/$b3one" | bc -l | xargs printf '%.0f') MiB/s one thread)")
    stop_daemon
    rm -rf "$src" "$BENCH_DIR/data-big"
}

bench_small() {
    local seq_r=() ms_r=() p99=()
    rm -rf "$BENCH_DIR/data-small" "$BENCH_DIR"/seq*
    start_daemon "$BENCH_DIR/data-small"
    for r in $(seq "$ROUNDS"); do
        out=$("$LOADGEN" durable-seq "$BENCH_DIR/seq$r" 3000 4096)
        seq_r+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["per_sec"])')")
        out=$("$LOADGEN" small "$URL" "$TOKEN" 32 6400 4096)
        echo "small round $r: $out"
        ms_r+=("$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"]==0, d; print(d["per_sec"])')")
        p99+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_ms"])')")
        echo "small round $r: durable sequence ${seq_r[-1]}/s, media-store ${ms_r[-1]}/s"
    done
    stop_daemon
    local s m
    s=$(printf '%s\n' "${seq_r[@]}" | sort -g | tail -1)
    m=$(printf '%s\n' "${ms_r[@]}" | sort -g | tail -1)
    rm -rf "$BENCH_DIR/data-small" "$BENCH_DIR"/seq*
    summary+=("4 KiB uploads, 32 clients, durable before 201, best of $ROUNDS: media-store $(printf '%.0f' "$m")/s vs per-file durable sequence $(printf '%.0f' "$s")/s = $(echo "$m/$s" | bc -l | xargs printf '%.2f')x (target >= 1.3x); p99 latencies ms: ${p99[*]}")
}

bench_rss() {
    local srcs=()
    make_video "$BENCH_DIR/rss0.mp4" "$BIG_MB"
    for i in 1 2 3; do cp "$BENCH_DIR/rss0.mp4" "$BENCH_DIR/rss$i.mp4"; perturb "$BENCH_DIR/rss$i.mp4"; done
    rm -rf "$BENCH_DIR/data-rss"
    start_daemon "$BENCH_DIR/data-rss"
    for i in 0 1 2 3; do
        curl -sS -o /dev/null -w '%{http_code}\n' -X POST -T "$BENCH_DIR/rss$i.mp4" -H "Authorization: Bearer $TOKEN" "$URL/v1/media?uploader_id=1" &
    done
    wait $(jobs -p | grep -v "$DPID" || true) 2>/dev/null || true
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
    summary+=("peak RSS with 4 concurrent $BIG_MB MiB uploads: $((hwm / 1024)) MiB (VmHWM; target < 64 MiB)")
    stop_daemon
    rm -rf "$BENCH_DIR"/rss*.mp4 "$BENCH_DIR/data-rss"
}

bench_list() {
    local d=$BENCH_DIR/list-data
    # Reseed when the schema changed since (the marker names the migration count).
    local marker=$d/.seeded-$LIST_ROWS-$(ls migrations/sqlite | wc -l)
    if [ ! -f "$marker" ]; then
        rm -rf "$d"
        "$LOADGEN" seed-index "$d" "$LIST_ROWS"
        touch "$marker"
    fi
    # Warm: the index file in the page cache, as on a server that has been up a
    # while (2.6 GB at 10 M rows); then a short warm-up of each query shape.
    cat "$d"/index.sqlite3* >/dev/null
    start_daemon "$d"
    "$LOADGEN" list "$URL" "$TOKEN" 200 >/dev/null
    out=$("$LOADGEN" list "$URL" "$TOKEN" 1000)
    echo "$out"
    summary+=("list queries at $LIST_ROWS rows, end to end over HTTP (p50/p99 ms per shape; target p99 < 5 ms): $out")
    stop_daemon
}

case $what in
    all) bench_big; bench_small; bench_rss; bench_list ;;
    big) bench_big ;; small) bench_small ;; rss) bench_rss ;; list) bench_list ;;
    *) echo "usage: $0 [all|big|small|rss|list]"; exit 2 ;;
esac
echo
echo "== summary =="
printf '%s\n' "${summary[@]}"
