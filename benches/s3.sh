#!/usr/bin/env bash
# S3 backend benchmark (issue 13), whole-program, baselines interleaved in the
# same run: a real three-node Garage cluster on 127.0.0.1 (replication 3,
# consistent mode, as tests/it/harness/garage.rs runs it), the daemon with
# `store.backend = "s3"` on a bucket of it, and rclone (S3 provider Other, path
# style) on the same bucket as the baseline of a good S3 client:
#
#   big    1 GiB upload: POST /v1/media vs `rclone copyto` of the same file
#          (throughput ratio, target >= 0.80)
#   down   100 MiB signed download, each of the three ways media-store serves
#          an S3 blob (streamed through the daemon; `serve.s3_redirect`, curl
#          following the 302; `serve.nginx_accel` behind nginx/media-store.conf,
#          whose /_s3/ location proxies to Garage) vs a direct GET of the same
#          bytes from Garage (a presigned URL from `rclone link`), all with
#          curl, the order rotating each round (target >= 0.90)
#   small  4 KiB uploads, 32 clients: the daemon's uploads/s (loadgen) vs
#          rclone copying a folder of as many 4 KiB files with 32 transfers
#   rss    peak RSS (VmHWM) of the daemon during 4 concurrent 1 GiB uploads
#          (target < 128 MiB)
#
#   benches/s3.sh [all|big|down|small|rss]
#
# Each round runs both sides, their order alternating (ROUNDS even), each on
# fresh random content (Garage stores each 1 MiB block once: a file changed in
# a few bytes would cost it one block write); the summary gives medians.
# Garage runs with its defaults otherwise (no fsync, zstd level 1 tried).
#
# Environment: BENCH_DIR (scratch folder, holds Garage's data, three copies of
# everything, deleted blocks kept 10 minutes: about (6 x ROUNDS + 16) x BIG_MB
# for `all`, checked before starting; default target/bench-s3), BIG_MB (1024),
# DOWN_MB (100), SMALL_COUNT (3200), ROUNDS (4), CPU_RUNS (8: downloads each
# way after the timed rounds, for the CPU time each process spends), MEDIA_STORE_BIN and
# LOADGEN_BIN (binaries to run instead of building this tree), GARAGE_BIN.
# Needs: garage (`cargo install --locked garage@2.5.0`, as scripts/test does),
# rclone, curl, python3, bc, nginx (for `down`).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/nginx.sh
what=${1:-all}
BENCH_DIR=${BENCH_DIR:-$PWD/target/bench-s3}
BIG_MB=${BIG_MB:-1024}
DOWN_MB=${DOWN_MB:-100}
SMALL_COUNT=${SMALL_COUNT:-3200}
ROUNDS=${ROUNDS:-4}
CPU_RUNS=${CPU_RUNS:-8}
TOKEN=bench-token-0123456789
GARAGE=${GARAGE_BIN:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}
[ -x "$GARAGE" ] || { echo "benches/s3.sh: garage is missing (cargo install --locked garage@2.5.0)" >&2; exit 2; }
for tool in rclone curl python3 bc nginx; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "benches/s3.sh: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done
mkdir -p "$BENCH_DIR"
case $what in
    all) need_mb=$(( (6 * ROUNDS + 16) * BIG_MB )) ;; big) need_mb=$(( (6 * ROUNDS + 1) * BIG_MB )) ;;
    rss) need_mb=$(( 16 * BIG_MB )) ;; *) need_mb=$(( 8 * DOWN_MB + 1024 )) ;;
esac
avail_mb=$(( $(df --output=avail -k "$BENCH_DIR" | tail -1) / 1024 ))
[ "$avail_mb" -ge "$need_mb" ] || { echo "benches/s3.sh: needs about $need_mb MiB free in $BENCH_DIR, has $avail_mb" >&2; exit 2; }
# MEDIA_STORE_BIN / LOADGEN_BIN: run another build (e.g. an older revision, to
# compare before/after in one session) instead of building this tree.
if [ -z "${MEDIA_STORE_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    cargo build --release --quiet --bin media-store --example loadgen
fi
BIN=${MEDIA_STORE_BIN:-$PWD/target/release/media-store}
LOADGEN=${LOADGEN_BIN:-$PWD/target/release/examples/loadgen}
summary=()
pids=()
garage_pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$BENCH_DIR/garage"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }
cpu_secs() { # pids -> their CPU time (user + system), seconds
    local p t=0
    for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done
    echo "$t / $(getconf CLK_TCK)" | bc -l
}
median() { printf '%s\n' "$@" | python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.stdin))'; }
free_ports() { python3 -c 'import socket
s=[socket.socket() for _ in range('"$1"')]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'; }

# --- Garage: three nodes, one bucket, one key ---------------------------------
G=$BENCH_DIR/garage
g() { local i=$1; shift; RUST_LOG=warn "$GARAGE" -c "$G/n$i/garage.toml" "$@"; }
start_garage() { # -> sets S3_ENDPOINT, BUCKET, KEY_ID, KEY_SECRET
    rm -rf "$G"
    local secret ports i
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # All nine at once, so that no two are the same.
    read -r -a ports <<<"$(free_ports 9)"
    for i in 0 1 2; do
        mkdir -p "$G/n$i"
        rpc=${ports[3 * i]} s3=${ports[3 * i + 1]} admin=${ports[3 * i + 2]}
        [ "$i" = 0 ] && S3_ENDPOINT=http://127.0.0.1:$s3
        cat >"$G/n$i/garage.toml" <<CONF
metadata_dir = "$G/n$i/meta"
data_dir = "$G/n$i/data"
db_engine = "sqlite"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
[admin]
api_bind_addr = "127.0.0.1:$admin"
CONF
        "$GARAGE" -c "$G/n$i/garage.toml" server >"$G/n$i/log" 2>&1 &
        pids+=("$!")
        garage_pids+=("$!")
    done
    local ids=()
    for i in 0 1 2; do
        for _ in $(seq 300); do
            id=$(g "$i" node id -q 2>/dev/null) && break
            sleep 0.1
        done
        [ -n "${id:-}" ] || { echo "garage node $i did not start"; tail "$G/n$i/log"; exit 1; }
        ids+=("$id")
        id=
    done
    # A node answers `node id` before its RPC port listens: retry a while.
    for id in "${ids[1]}" "${ids[2]}"; do
        for _ in $(seq 100); do g 0 node connect "$id" >/dev/null 2>&1 && break; sleep 0.1; done
        g 0 node connect "$id" >/dev/null
    done
    for id in "${ids[@]}"; do g 0 layout assign -z dc1 -c 1G "${id%@*}" >/dev/null; done
    g 0 layout apply --version 1 >/dev/null
    for _ in $(seq 600); do
        g 0 json-api GetClusterHealth 2>/dev/null | grep '"status": "healthy"' >/dev/null && break
        sleep 0.1
    done
    g 0 json-api GetClusterHealth | grep '"status": "healthy"' >/dev/null ||
        { echo "garage cluster not healthy:"; g 0 json-api GetClusterHealth || true; tail "$G"/n*/log; exit 1; }
    BUCKET=media
    g 0 bucket create "$BUCKET" >/dev/null
    read -r KEY_ID KEY_SECRET <<<"$(g 0 json-api CreateKey '{"name": "bench"}' |
        python3 -c 'import json,sys; k=json.load(sys.stdin); print(k["accessKeyId"], k["secretAccessKey"])')"
    g 0 bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null
    # rclone's remote `garage:`, configured from the environment (and an
    # empty config file of its own, not the user's).
    export RCLONE_CONFIG=$BENCH_DIR/rclone.conf
    : >"$RCLONE_CONFIG"
    export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other \
        RCLONE_CONFIG_GARAGE_ENDPOINT=$S3_ENDPOINT RCLONE_CONFIG_GARAGE_REGION=garage \
        RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true \
        RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$KEY_ID RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$KEY_SECRET
    echo "garage: 3 nodes, S3 at $S3_ENDPOINT, bucket $BUCKET"
}
# rclone as a plain fast S3 client: no bucket probe, and no MD5 pass over a
# large file before its multipart upload (the daemon hashes while it streams).
# Without AWS_CA_BUNDLE: rclone's S3 SDK fails on it ("unable to load custom
# CA bundle"), and plain http on loopback needs no CA.
RCLONE=(env -u AWS_CA_BUNDLE rclone --s3-no-check-bucket --s3-disable-checksum)

# --- the daemon on that bucket ------------------------------------------------
start_daemon() { # $1 name, $2 more config -> sets URL, DPID
    local d=$BENCH_DIR/$1
    rm -rf "$d"; mkdir -p "$d"
    printf '%s' "$KEY_ID" >"$d/s3-key-id"; printf '%s' "$KEY_SECRET" >"$d/s3-secret"
    chmod 600 "$d/s3-key-id" "$d/s3-secret"
    cat >"$d/config.toml" <<CONF
log = "warn"
[store]
backend = "s3"
[store.s3]
endpoint = "$S3_ENDPOINT"
bucket = "$BUCKET"
region = "garage"
prefix = "$1/"
path_style = true
access_key_id_file = "$d/s3-key-id"
secret_access_key_file = "$d/s3-secret"
${2:-}
CONF
    MEDIA_STORE_API_TOKEN=$TOKEN "$BIN" serve --data-dir "$d/data" --config "$d/config.toml" \
        --listen 127.0.0.1:0 >"$d/log" 2>&1 &
    DPID=$!
    pids+=("$DPID")
    daemon_pids+=("$DPID")
    for _ in $(seq 600); do
        URL=$(sed -n 's/^listening on //p' "$d/log" 2>/dev/null || true)
        [ -n "$URL" ] && return 0
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.05
    done
    echo "daemon did not start"; cat "$d/log"; exit 1
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; }
daemon_pids=()
stop_daemons() {
    local p
    for p in "${daemon_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
    daemon_pids=()
}
signed_url() { # id -> the path and query of a signed download URL, valid a day
    curl -sSf -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d '{"ttl_secs": 86400}' "$URL/v1/media/$1/url" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])'
}

# --- nginx: the shipped site, its @ values replaced (as benches/serve.sh and
# tests/it/harness/nginx.rs do), /_s3/ proxying to node 0 -----------------------
start_nginx() { # $1 the daemon's host:port -> sets NGINX_PORT
    local n=$BENCH_DIR/nginx nginx_bin s3_host=${S3_ENDPOINT#http://}
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    rm -rf "$n"; mkdir -p "$n/blobs"
    NGINX_PORT=$(free_ports 1)
    sed -e "s|listen 80; # @listen|listen 127.0.0.1:$NGINX_PORT; # @listen|" \
        -e "s|^\( *\)server [^ ]*; # @upstream|\1server $1; # @upstream|" \
        -e "s|alias /var/lib/media-store/blobs/; # @blobs|alias $n/blobs/; # @blobs|" \
        -e "s|access_log /var/log/nginx/media-store.access.log media_store;|access_log off;|" \
        -e "s|proxy_pass http://127.0.0.1:3900; # @s3|proxy_pass http://$s3_host; # @s3|" \
        -e "s|proxy_set_header Host 127.0.0.1:3900; # @s3_host|proxy_set_header Host $s3_host; # @s3_host|" \
        nginx/media-store.conf >"$n/site.conf"
    for marker in "server $1; # @upstream" "proxy_pass http://$s3_host; # @s3" "Host $s3_host; # @s3_host"; do
        grep -qF "$marker" "$n/site.conf" || { echo "nginx/media-store.conf: no line for '$marker'"; exit 2; }
    done
    nginx_conf "$n" 1 1024 "  include $n/site.conf;"
    "$nginx_bin" -t -q -p "$n" -e "$n/error.log" -c "$n/nginx.conf"
    "$nginx_bin" -p "$n" -e "$n/error.log" -c "$n/nginx.conf" &
    NGINX_PID=$!
    pids+=("$NGINX_PID")
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && return 0; sleep 0.05; done
    echo "nginx did not start"; cat "$n/error.log"; exit 1
}
stop_nginx() { kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; }

upload() { # file -> prints "id"; fails unless 201
    curl -sS --fail-with-body -X POST -T "$1" -H "Authorization: Bearer $TOKEN" "$URL/v1/media?uploader_id=1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# A file that sniffs as MP4: an ftyp box then random bytes.
make_video() { # $1 path, $2 MiB
    { printf '\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2'; head -c $(( $2 * 1048576 - 24 )) /dev/urandom; } >"$1"
}
ratio() { echo "$1/$2" | bc -l | xargs printf '%.2f'; }

bench_big() {
    local src=$BENCH_DIR/big.mp4 ms_t=() rc_t=() ratios=()
    start_daemon big
    run_ms() {
        make_video "$src" "$BIG_MB"; sync
        local t; t=$(now)
        upload "$src" >/dev/null || { echo "upload failed"; exit 1; }
        ms_t+=("$(elapsed "$t")")
    }
    run_rc() {
        make_video "$src" "$BIG_MB"; sync
        local t; t=$(now)
        "${RCLONE[@]}" copyto "$src" "garage:$BUCKET/rclone/big-$r"
        rc_t+=("$(elapsed "$t")")
        "${RCLONE[@]}" deletefile "garage:$BUCKET/rclone/big-$r"
    }
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then run_ms; run_rc; else run_rc; run_ms; fi
        ratios+=("$(echo "${rc_t[-1]}/${ms_t[-1]}" | bc -l)")
        echo "big round $r: media-store ${ms_t[-1]} s, rclone ${rc_t[-1]} s"
    done
    stop_daemon
    rm -f "$src"
    local ms rc
    ms=$(median "${ms_t[@]}"); rc=$(median "${rc_t[@]}")
    summary+=("$BIG_MB MiB upload to Garage, median of $ROUNDS rounds (order alternating): media-store $(echo "$BIG_MB/$ms" | bc -l | xargs printf '%.0f') MiB/s, rclone copyto $(echo "$BIG_MB/$rc" | bc -l | xargs printf '%.0f') MiB/s; media-store/rclone throughput = $(median "${ratios[@]}" | xargs printf '%.2f') (median of per-round ratios; target >= 0.80)")
}

bench_down() {
    local src=$BENCH_DIR/down.mp4 ratios_stream=() ratios_redirect=() ratios_nginx=()
    local t_direct=() t_stream=() t_redirect=() t_nginx=()
    make_video "$src" "$DOWN_MB"
    # One daemon per serving mode, each on its own prefix of the bucket (a
    # prefix is one store), each holding the same file.
    local stream_url redirect_url accel_url accel_addr direct
    start_daemon down-stream
    stream_url=$URL$(signed_url "$(upload "$src")")
    start_daemon down-redirect "[serve]
s3_redirect = true
s3_redirect_ttl_secs = 86400"
    redirect_url=$URL$(signed_url "$(upload "$src")")
    start_daemon down-accel "[serve]
nginx_accel = true"
    accel_addr=${URL#http://}
    accel_url=$(signed_url "$(upload "$src")")
    start_nginx "$accel_addr"
    accel_url=http://127.0.0.1:$NGINX_PORT$accel_url
    # The same bytes as an object of their own, read straight from Garage.
    "${RCLONE[@]}" copyto "$src" "garage:$BUCKET/rclone/down"
    direct=$("${RCLONE[@]}" link --expire 1d "garage:$BUCKET/rclone/down")
    for u in "$stream_url" "$redirect_url" "$accel_url" "$direct"; do
        cmp -s <(curl -sSfL "$u") "$src" || { echo "wrong bytes from $u"; exit 1; }
    done
    # curl -L: the redirect mode's 302 and the presigned GET it leads to.
    get() { local t; t=$(now); curl -sSfL -o /dev/null "$1"; elapsed "$t"; }
    local ways=(direct stream redirect nginx) order i w
    for r in $(seq "$ROUNDS"); do
        # Rotate who goes first: each way takes each position in turn.
        order=()
        for i in 0 1 2 3; do order+=("${ways[$(( (i + r) % 4 ))]}"); done
        for w in "${order[@]}"; do
            case $w in
                direct) t_direct+=("$(get "$direct")") ;;
                stream) t_stream+=("$(get "$stream_url")") ;;
                redirect) t_redirect+=("$(get "$redirect_url")") ;;
                nginx) t_nginx+=("$(get "$accel_url")") ;;
            esac
        done
        ratios_stream+=("$(echo "${t_direct[-1]}/${t_stream[-1]}" | bc -l)")
        ratios_redirect+=("$(echo "${t_direct[-1]}/${t_redirect[-1]}" | bc -l)")
        ratios_nginx+=("$(echo "${t_direct[-1]}/${t_nginx[-1]}" | bc -l)")
        echo "down round $r (${order[*]}): direct ${t_direct[-1]} s, streamed ${t_stream[-1]} s, redirect ${t_redirect[-1]} s, nginx ${t_nginx[-1]} s"
    done
    # Where the CPU goes: the processes' CPU time over CPU_RUNS more
    # downloads each way (garage: all three nodes; the daemon; nginx's master
    # and worker; curl).
    local cpu_lines=() stream_pid=${daemon_pids[0]} accel_pid=${daemon_pids[2]}
    for w in direct stream redirect nginx; do
        local u before_g before_d before_n after_g after_d after_n curl_s d_pid
        case $w in
            direct) u=$direct d_pid=$stream_pid ;; stream) u=$stream_url d_pid=$stream_pid ;;
            redirect) u=$redirect_url d_pid=${daemon_pids[1]} ;; nginx) u=$accel_url d_pid=$accel_pid ;;
        esac
        before_g=$(cpu_secs "${garage_pids[@]}"); before_d=$(cpu_secs "$d_pid"); before_n=$(cpu_secs "$NGINX_PID" $(pgrep -P "$NGINX_PID"))
        curl_s=$(python3 -c 'import resource,subprocess,sys
for _ in range(int(sys.argv[1])):
    subprocess.run(["curl", "-sSfL", "-o", "/dev/null", sys.argv[2]], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$CPU_RUNS" "$u")
        after_g=$(cpu_secs "${garage_pids[@]}"); after_d=$(cpu_secs "$d_pid"); after_n=$(cpu_secs "$NGINX_PID" $(pgrep -P "$NGINX_PID"))
        per() { echo "($1) * 1000 / $CPU_RUNS" | bc -l | xargs printf '%.0f'; }
        cpu_lines+=("  CPU ms per download, $w: garage $(per "$after_g - $before_g"), media-store $(per "$after_d - $before_d"), nginx $(per "$after_n - $before_n"), curl $(per "$curl_s")")
    done
    stop_nginx
    stop_daemons
    "${RCLONE[@]}" deletefile "garage:$BUCKET/rclone/down"
    rm -f "$src"
    rate() { echo "$DOWN_MB/$(median "$@")" | bc -l | xargs printf '%.0f'; }
    summary+=("$DOWN_MB MiB signed download, curl, median of $ROUNDS rounds (order rotating): presigned GET straight from Garage $(rate "${t_direct[@]}") MiB/s;"
        "  streamed through media-store (whole downloads hashed once per object version) $(rate "${t_stream[@]}") MiB/s, ratio $(median "${ratios_stream[@]}" | xargs printf '%.2f');"
        "  serve.s3_redirect (302, then the presigned GET) $(rate "${t_redirect[@]}") MiB/s, ratio $(median "${ratios_redirect[@]}" | xargs printf '%.2f');"
        "  serve.nginx_accel (nginx/media-store.conf proxying /_s3/ to Garage) $(rate "${t_nginx[@]}") MiB/s, ratio $(median "${ratios_nginx[@]}" | xargs printf '%.2f')"
        "  (ratios: medians of per-round direct/way time ratios; target >= 0.90)"
        "${cpu_lines[@]}")
}

bench_small() {
    local ms_r=() rc_r=() ratios=() dir=$BENCH_DIR/small-files
    start_daemon small
    # Fresh random files for each rclone round (as loadgen's are unique).
    make_files() {
        rm -rf "$dir"; mkdir -p "$dir"
        python3 - "$dir" "$SMALL_COUNT" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/{i:06}.bin", "wb") as f:
        f.write(os.urandom(4096))
PY
    }
    run_ms() {
        local out
        out=$("$LOADGEN" small "$URL" "$TOKEN" 32 "$SMALL_COUNT" 4096)
        ms_r+=("$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"]==0, d; print(d["per_sec"])')")
    }
    run_rc() {
        make_files; sync
        local t s
        t=$(now)
        "${RCLONE[@]}" copy --transfers 32 --checkers 32 --no-check-dest "$dir" "garage:$BUCKET/rclone/small-$r"
        s=$(elapsed "$t")
        rc_r+=("$(echo "$SMALL_COUNT/$s" | bc -l)")
        "${RCLONE[@]}" purge "garage:$BUCKET/rclone/small-$r"
    }
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then run_ms; run_rc; else run_rc; run_ms; fi
        ratios+=("$(echo "${ms_r[-1]}/${rc_r[-1]}" | bc -l)")
        echo "small round $r: media-store ${ms_r[-1]}/s, rclone ${rc_r[-1]}/s"
    done
    stop_daemon
    rm -rf "$dir"
    summary+=("4 KiB uploads, 32 at a time, $SMALL_COUNT per round, median of $ROUNDS rounds: media-store $(median "${ms_r[@]}" | xargs printf '%.0f')/s (durable in Garage before 201), rclone copy --transfers 32 $(median "${rc_r[@]}" | xargs printf '%.0f')/s; media-store/rclone = $(median "${ratios[@]}" | xargs printf '%.2f')")
}

bench_rss() {
    local i
    for i in 0 1 2 3; do make_video "$BENCH_DIR/rss$i.mp4" "$BIG_MB"; done
    sync
    start_daemon rss
    local jobs=()
    for i in 0 1 2 3; do
        upload "$BENCH_DIR/rss$i.mp4" >/dev/null &
        jobs+=("$!")
    done
    for j in "${jobs[@]}"; do wait "$j" || { echo "an upload failed"; exit 1; }; done
    local hwm
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
    stop_daemon
    rm -f "$BENCH_DIR"/rss*.mp4
    summary+=("peak RSS with 4 concurrent $BIG_MB MiB uploads to S3: $((hwm / 1024)) MiB (VmHWM; target < 128 MiB)")
}

start_garage
case $what in
    all) bench_big; bench_down; bench_small; bench_rss ;;
    big) bench_big ;; down) bench_down ;; small) bench_small ;; rss) bench_rss ;;
    *) echo "usage: $0 [all|big|down|small|rss]"; exit 2 ;;
esac
echo
echo "== summary =="
printf '%s\n' "${summary[@]}"
