#!/usr/bin/env bash
# Download serving benchmark (issue 3), whole-program, baseline interleaved:
#   * 4 KiB signed downloads, 64 connections: daemon alone, and nginx with
#     X-Accel-Redirect (reaching the daemon over loopback TCP, and over its Unix
#     socket), each against nginx serving the same file statically; keep-alive
#     and `Connection: close`.
#   * 100 MiB download throughput: daemon alone (and via nginx) vs nginx static.
#   * signature verification ns/verify (benches/verify.rs).
# Runs a release build of the daemon and a real nginx from nginx/media-store.conf
# (only its @ values replaced), on 127.0.0.1. Prints figures and ratios.
#
# Usage: benches/serve.sh [SECONDS_PER_RUN] [ROUNDS] [keepalive]   (defaults 5 and 3;
#        `keepalive` runs only the 4 KiB keep-alive comparisons, for tuning)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/nginx.sh
DUR=${1:-5}
ROUNDS=${2:-3}
ONLY=${3:-all}
for bin in wrk nginx curl python3 b3sum; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || { echo "missing $bin (apt-get install $bin)"; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# MEDIA_STORE_BIN: run another build (e.g. an older revision, to compare
# before/after in one session) instead of building this tree.
[ -n "${MEDIA_STORE_BIN:-}" ] || cargo build --release --quiet
BIN=${MEDIA_STORE_BIN:-$PWD/target/release/media-store}
WORK=$(mktemp -d /tmp/ms-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
TOKEN=bench-token-0123456789

start_daemon() { # name accel -> sets ADDR_<name>; the daemon also serves on $WORK/<name>/http.sock
    local name=$1 accel=$2 dir=$WORK/$1
    mkdir -p "$dir"
    printf 'log = "warn"\n[serve]\nnginx_accel = %s\nunix_socket = "%s"\n[signing]\nmax_ttl_secs = 86400\n' \
        "$accel" "$dir/http.sock" >"$dir/config.toml"
    MEDIA_STORE_API_TOKEN=$TOKEN "$BIN" serve --listen 127.0.0.1:0 --data-dir "$dir/data" \
        --config "$dir/config.toml" >"$dir/stdout" 2>"$dir/stderr" &
    PIDS+=($!)
    for _ in $(seq 200); do
        grep -q '^listening on ' "$dir/stdout" 2>/dev/null && break
        sleep 0.05
    done
    local addr
    addr=$(sed -n 's/^listening on http:\/\///p' "$dir/stdout")
    [ -n "$addr" ] || { cat "$dir/stderr"; exit 2; }
    eval "ADDR_$name=$addr"
}

upload() { # addr file -> prints "id hash"
    curl -sf -X POST -H "authorization: Bearer $TOKEN" --data-binary @"$2" \
        "http://$1/v1/media?uploader_id=1" |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["id"], m["blake3"])'
}

sign() { # addr id -> path?query
    curl -sf -X POST -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d '{"ttl_secs": 86400}' "http://$1/v1/media/$2/url" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])'
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Test files: 4 KiB text, 100 MiB "MP4" (a real ftyp box, then random bytes).
python3 - "$WORK" <<'PY'
import os, sys
w = sys.argv[1]
open(f"{w}/small.txt", "wb").write((b"media-store benchmark line\n" * 200)[:4096])
with open(f"{w}/big.mp4", "wb") as f:
    f.write(b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2")
    f.write(os.urandom(100 * 1024 * 1024 - 24))
PY

start_daemon plain false
start_daemon accel true
read -r SMALL_ID SMALL_HASH < <(upload "$ADDR_plain" "$WORK/small.txt")
read -r BIG_ID BIG_HASH < <(upload "$ADDR_plain" "$WORK/big.mp4")
read -r SMALL_ID_A _ < <(upload "$ADDR_accel" "$WORK/small.txt")
read -r BIG_ID_A _ < <(upload "$ADDR_accel" "$WORK/big.mp4")
SMALL_URL=$(sign "$ADDR_plain" "$SMALL_ID")
BIG_URL=$(sign "$ADDR_plain" "$BIG_ID")
SMALL_URL_A=$(sign "$ADDR_accel" "$SMALL_ID_A")
BIG_URL_A=$(sign "$ADDR_accel" "$BIG_ID_A")
shard() { echo "${1:0:2}/${1:2:2}/$1"; }

# nginx: the shipped site (fronting the accel daemon) twice, reaching it over
# loopback TCP and over its Unix socket, plus a static server for the baseline,
# serving the same blob files.
NGX=$WORK/nginx
mkdir -p "$NGX"
PORT_SITE=$(free_port)
PORT_SITE_UNIX=$(free_port)
PORT_STATIC=$(free_port)
site() { # port upstream
    sed -e "s|listen 80; # @listen|listen 127.0.0.1:$1; # @listen|" \
        -e "s|^\( *\)server [^ ]*; # @upstream|\1server $2; # @upstream|" \
        -e "s|alias /var/lib/media-store/blobs/; # @blobs|alias $WORK/accel/data/blobs/; # @blobs|" \
        -e "s|access_log /var/log/nginx/media-store.access.log media_store;|access_log off;|" \
        nginx/media-store.conf
}
site "$PORT_SITE" "$ADDR_accel" >"$NGX/site.conf"
grep -q "server $ADDR_accel; # @upstream" "$NGX/site.conf" || { echo "no @upstream line in nginx/media-store.conf"; exit 2; }
# The second copy: its own upstream name, the log format defined once.
site "$PORT_SITE_UNIX" "unix:$WORK/accel/http.sock" |
    sed -e '/^log_format /,/;$/d' -e 's|upstream media_store {|upstream media_store_unix {|' \
        -e 's|proxy_pass http://media_store;|proxy_pass http://media_store_unix;|' >"$NGX/site-unix.conf"
nginx_conf "$NGX" 2 4096 "  include $NGX/site.conf;
  include $NGX/site-unix.conf;
  server {
    listen 127.0.0.1:$PORT_STATIC;
    access_log off;
    sendfile on; tcp_nopush on;
    # Same file settings as the shipped internal location, for a fair baseline.
    open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;
    location /static/ { alias $WORK/plain/data/blobs/; }
  }"
"$NGINX" -t -q -p "$NGX" -e "$NGX/error.log" -c "$NGX/nginx.conf"
"$NGINX" -p "$NGX" -e "$NGX/error.log" -c "$NGX/nginx.conf" &
PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT_STATIC/" && break; sleep 0.05; done

STATIC_SMALL="http://127.0.0.1:$PORT_STATIC/static/$(shard "$SMALL_HASH")"
STATIC_BIG="http://127.0.0.1:$PORT_STATIC/static/$(shard "$BIG_HASH")"
DAEMON_SMALL="http://$ADDR_plain$SMALL_URL"
DAEMON_BIG="http://$ADDR_plain$BIG_URL"
ACCEL_SMALL="http://127.0.0.1:$PORT_SITE$SMALL_URL_A"
UNIX_SMALL="http://127.0.0.1:$PORT_SITE_UNIX$SMALL_URL_A"
ACCEL_BIG="http://127.0.0.1:$PORT_SITE$BIG_URL_A"

# Every target must answer 200 with the right bytes before we time it.
for u in "$STATIC_SMALL" "$DAEMON_SMALL" "$ACCEL_SMALL" "$UNIX_SMALL"; do
    cmp -s <(curl -sf "$u") "$WORK/small.txt" || { echo "wrong bytes from $u"; exit 2; }
done
for u in "$STATIC_BIG" "$DAEMON_BIG" "$ACCEL_BIG"; do
    [ "$(curl -sf "$u" | b3sum --no-names)" = "$BIG_HASH" ] || { echo "wrong bytes from $u"; exit 2; }
done

# wrk -> requests/s and bytes/s (wrk prints human units; its Lua done() gives raw numbers).
cat >"$WORK/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT %.1f %.1f %d %.3f\n", summary.requests / secs, summary.bytes / secs,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(99) / 1000))
end
LUA
run_wrk() { # conns url [extra args] -> "rps bytes/s errors p99ms"
    local conns=$1 url=$2; shift 2
    wrk -t2 -c"$conns" -d"${DUR}s" -s "$WORK/report.lua" "$@" "$url" | sed -n 's/^RESULT //p'
}

declare -A SUM_RPS SUM_BPS P99 ERRS LAST LAST_BPS
RATIOS=$WORK/ratios
record() { # key "rps bps errors p99"
    local rps bps err p99
    read -r rps bps err p99 <<<"$2"
    LAST[$1]=$rps
    LAST_BPS[$1]=$bps
    SUM_RPS[$1]=$(python3 -c "print(${SUM_RPS[$1]:-0}+$rps)")
    SUM_BPS[$1]=$(python3 -c "print(${SUM_BPS[$1]:-0}+$bps)")
    ERRS[$1]=$(( ${ERRS[$1]:-0} + err ))
    P99[$1]=$p99
    printf '  %-28s %10.0f req/s %10.1f MiB/s  p99 %7.2f ms  errors %d\n' "$1" "$rps" "$(python3 -c "print($bps/1048576)")" "$p99" "$err"
}

echo "== round-robin runs: ${DUR}s each, $ROUNDS rounds, wrk -t2"
for round in $(seq "$ROUNDS"); do
    echo "round $round"
    record "4k static keepalive" "$(run_wrk 64 "$STATIC_SMALL")"
    record "4k daemon keepalive" "$(run_wrk 64 "$DAEMON_SMALL")"
    # TCP and socket take turns going first.
    if [ $((round % 2)) -eq 1 ]; then
        record "4k accel keepalive" "$(run_wrk 64 "$ACCEL_SMALL")"
        record "4k accel-unix keepalive" "$(run_wrk 64 "$UNIX_SMALL")"
    else
        record "4k accel-unix keepalive" "$(run_wrk 64 "$UNIX_SMALL")"
        record "4k accel keepalive" "$(run_wrk 64 "$ACCEL_SMALL")"
    fi
    # Per-round ratios: the baseline ran seconds before, under the same load.
    echo "daemon_ka ${LAST["4k daemon keepalive"]} ${LAST["4k static keepalive"]}" >>"$RATIOS"
    echo "accel_ka ${LAST["4k accel keepalive"]} ${LAST["4k static keepalive"]}" >>"$RATIOS"
    echo "accel_unix_ka ${LAST["4k accel-unix keepalive"]} ${LAST["4k static keepalive"]}" >>"$RATIOS"
    [ "$ONLY" = keepalive ] && continue
    record "4k static close" "$(run_wrk 64 "$STATIC_SMALL" -H 'Connection: close')"
    record "4k daemon close" "$(run_wrk 64 "$DAEMON_SMALL" -H 'Connection: close')"
    record "4k accel close" "$(run_wrk 64 "$ACCEL_SMALL" -H 'Connection: close')"
    record "4k accel-unix close" "$(run_wrk 64 "$UNIX_SMALL" -H 'Connection: close')"
    record "100M static" "$(run_wrk 4 "$STATIC_BIG")"
    record "100M daemon" "$(run_wrk 4 "$DAEMON_BIG")"
    record "100M accel" "$(run_wrk 4 "$ACCEL_BIG")"
    echo "daemon_close ${LAST["4k daemon close"]} ${LAST["4k static close"]}" >>"$RATIOS"
    echo "accel_close ${LAST["4k accel close"]} ${LAST["4k static close"]}" >>"$RATIOS"
    echo "accel_unix_close ${LAST["4k accel-unix close"]} ${LAST["4k static close"]}" >>"$RATIOS"
    echo "daemon_100m ${LAST_BPS["100M daemon"]} ${LAST_BPS["100M static"]}" >>"$RATIOS"
    echo "accel_100m ${LAST_BPS["100M accel"]} ${LAST_BPS["100M static"]}" >>"$RATIOS"
done

per_round() {
    echo "== per-round ratios (each against the baseline run in the same round), median"
    python3 - "$RATIOS" <<'PY'
import collections, statistics, sys
r = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, a, b = line.split()
    r[k].append(100 * float(a) / float(b))
for k, v in r.items():
    print(f"  {k:16s} median {statistics.median(v):4.0f}%   rounds: " + " ".join(f"{x:.0f}%" for x in v))
PY
}

if [ "$ONLY" = keepalive ]; then
    per_round
    python3 -c "print(f'daemon/static {100*${SUM_RPS["4k daemon keepalive"]}/${SUM_RPS["4k static keepalive"]}:.0f}%  accel/static {100*${SUM_RPS["4k accel keepalive"]}/${SUM_RPS["4k static keepalive"]}:.0f}%  accel-unix/static {100*${SUM_RPS["4k accel-unix keepalive"]}/${SUM_RPS["4k static keepalive"]}:.0f}%')"
    exit 0
fi
avg() { python3 -c "print(${SUM_RPS[$1]}/$ROUNDS)"; }
avgb() { python3 -c "print(${SUM_BPS[$1]}/$ROUNDS/1048576)"; }
ratio() { python3 -c "print(f'{100*$1/$2:.0f}%')"; }
echo
echo "== averages over $ROUNDS rounds"
for k in "4k static keepalive" "4k daemon keepalive" "4k accel keepalive" "4k accel-unix keepalive" \
    "4k static close" "4k daemon close" "4k accel close" "4k accel-unix close"; do
    printf '  %-22s %10.0f req/s  (errors %d)\n' "$k" "$(avg "$k")" "${ERRS[$k]}"
done
for k in "100M static" "100M daemon" "100M accel"; do
    printf '  %-22s %10.1f MiB/s  (errors %d)\n' "$k" "$(avgb "$k")" "${ERRS[$k]}"
done
echo
echo "== ratios (target)"
echo "  4 KiB daemon / nginx static, keep-alive:   $(ratio "$(avg "4k daemon keepalive")" "$(avg "4k static keepalive")")  (>= 60%)"
echo "  4 KiB accel  / nginx static, keep-alive:   $(ratio "$(avg "4k accel keepalive")" "$(avg "4k static keepalive")")  (>= 50%; TCP to the daemon)"
echo "  4 KiB accel  / nginx static, keep-alive:   $(ratio "$(avg "4k accel-unix keepalive")" "$(avg "4k static keepalive")")  (>= 50%; Unix socket to the daemon)"
echo "  4 KiB daemon / nginx static, close:        $(ratio "$(avg "4k daemon close")" "$(avg "4k static close")")"
echo "  4 KiB accel  / nginx static, close:        $(ratio "$(avg "4k accel close")" "$(avg "4k static close")")  (TCP)"
echo "  4 KiB accel  / nginx static, close:        $(ratio "$(avg "4k accel-unix close")" "$(avg "4k static close")")  (Unix socket)"
echo "  100 MiB daemon / nginx static throughput:  $(ratio "$(avgb "100M daemon")" "$(avgb "100M static")")  (>= 90%)"
echo "  100 MiB accel  / nginx static throughput:  $(ratio "$(avgb "100M accel")" "$(avgb "100M static")")"
echo "  keep-alive stall check: daemon keep-alive p99 ${P99["4k daemon keepalive"]} ms (a Nagle stall shows as >= 40 ms)"
echo
per_round
echo
echo "== signature verification"
cargo bench --quiet --bench verify 2>/dev/null | grep 'ns/verify'
