#!/usr/bin/env bash
# Whole-program benchmark of renditions in the daemon (issue #11), with
# `preview.workers = 2`:
#
#   1. thumbnails/s: a mixed corpus (12/3/1 MP JPEG, PNG, WebP, and the engine's
#      JPEG/PNG/GIF/WebP/TIFF/HEIC/AVIF samples, plus unique copies of the
#      photos) uploaded to a fresh daemon, then every `thumb` asked for by 8
#      clients at once (each a first request: rendered, stored, served);
#   2. upload p99: 32 clients x 4 KiB durable uploads, alone and while 8
#      clients ask for `preview` renditions of 12 MP photos (rounds
#      alternate which goes first);
#   3. the probe's cost per upload (width/height/ThumbHash, in the background),
#      from the daemon's own histogram.
#
# Needs: cargo, vips (Debian libvips-tools), python3, curl.
#   benches/renditions.sh            # ROUNDS=3 by default
# MEDIA_STORE_BIN / LOADGEN_BIN: run another build instead of building this tree.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
TOKEN=bench-token-0123456789
command -v vips >/dev/null || { echo "benches/renditions.sh: vips is missing (apt-get install libvips-tools)" >&2; exit 2; }
if [ -z "${MEDIA_STORE_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    cargo build --release --quiet --bin media-store --example loadgen
fi
BIN=${MEDIA_STORE_BIN:-$PWD/target/release/media-store}
LOADGEN=${LOADGEN_BIN:-$PWD/target/release/examples/loadgen}
data=$PWD/crates/media-preview/tests/data
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

start_daemon() { # $1 data dir -> sets URL, DPID
    local log=$tmp/daemon.$RANDOM.log
    MEDIA_STORE_API_TOKEN=$TOKEN MEDIA_STORE_LOG=warn MEDIA_STORE_PREVIEW_WORKERS=2 \
        "$BIN" serve --data-dir "$1" --listen 127.0.0.1:0 >"$log" 2>&1 &
    DPID=$!
    pids+=("$DPID")
    for _ in $(seq 600); do
        URL=$(sed -n 's/^listening on //p' "$log" 2>/dev/null || true)
        [ -n "$URL" ] && return 0
        sleep 0.05
    done
    echo "daemon did not start"; cat "$log"; exit 1
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; }
metric() { curl -sS "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# Waits until the background probes of $1 uploads are done.
wait_probes() {
    for _ in $(seq 1200); do
        [ "$(metric media_store_media_probed_total || echo 0)" = "$1" ] && return 0
        sleep 0.05
    done
    echo "probes did not finish" >&2; exit 1
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); assert d.get('failed',0)==0, d; print(d['$1'])"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# --- inputs (as benches/preview.sh makes them) ------------------------------
vips crop "$data/exif-orientation/Landscape_1.jpg" "$tmp/crop.v" 0 0 1600 1200
vips resize "$tmp/crop.v" "$tmp/up.v" 2.5
vips gaussnoise "$tmp/noise.v" 4000 3000 --sigma 6 --mean 0 --seed 42
vips add "$tmp/up.v" "$tmp/noise.v" "$tmp/sum.v"
vips cast "$tmp/sum.v" "$tmp/photo12mp.jpg[Q=90,subsample_mode=on,strip]" uchar
mkdir -p "$tmp/corpus" "$tmp/photos"
cp "$tmp/photo12mp.jpg" "$tmp/corpus/"
vips resize "$tmp/photo12mp.jpg" "$tmp/corpus/photo3mp.jpg[Q=85]" 0.5
vips resize "$tmp/photo12mp.jpg" "$tmp/corpus/photo1mp.png" 0.29
vips resize "$tmp/photo12mp.jpg" "$tmp/corpus/photo2mp.webp[Q=80]" 0.4
for f in exif-orientation/Landscape_6.jpg jpeg/progressive.jpg jpeg/cmyk_adobe_ycck.jpg \
         png/rgba8.png png/rgb16.png png/palette8.png gif/animated.gif webp/lossy.webp \
         tiff/rgb_lzw.tif heic/image.heic avif/yuv420_8bit.avif; do
    cp "$data/$f" "$tmp/corpus/"
done
# Unique copies (bytes after the end marker change the hash, not the picture).
for i in 1 2 3; do
    for f in photo3mp.jpg Landscape_6.jpg progressive.jpg photo1mp.png; do
        { cat "$tmp/corpus/$f"; printf 'copy%s' "$i"; } >"$tmp/corpus/c$i-$f"
    done
done
for i in $(seq 24); do
    { cat "$tmp/photo12mp.jpg"; printf 'photo%s' "$i"; } >"$tmp/photos/p$i.jpg"
done
corpus=("$tmp"/corpus/*)
photos=("$tmp"/photos/*)
ncorpus=${#corpus[@]}

rate=() alone=() busy=() probe_ms=() render_during=()
for r in $(seq "$ROUNDS"); do
    # 1. thumbnails/s over the corpus, every request a first one.
    rm -rf "$tmp/d1"; start_daemon "$tmp/d1"
    ids=$("$LOADGEN" upload-files "$URL" "$TOKEN" "${corpus[@]}" | tr ',[]' '   ')
    wait_probes "$ncorpus"
    psum=$(metric media_store_media_probe_seconds_sum); pcount=$(metric media_store_media_probe_seconds_count)
    probe_ms+=("$(echo "1000*$psum/$pcount" | bc -l)")
    out=$("$LOADGEN" variant "$URL" "$TOKEN" 8 thumb $ids)
    echo "round $r thumbs: $out"
    rate+=("$(echo "$out" | field per_sec)")
    stop_daemon

    # 2. upload p99 alone and while previews render (order alternates).
    rm -rf "$tmp/d2"; start_daemon "$tmp/d2"
    ids=$("$LOADGEN" upload-files "$URL" "$TOKEN" "${photos[@]}" | tr ',[]' '   ')
    wait_probes "${#photos[@]}"
    run_alone() { out=$("$LOADGEN" small "$URL" "$TOKEN" 32 3200 4096); echo "round $r alone: $out"; alone+=("$(echo "$out" | field p99_ms)"); }
    run_busy() {
        "$LOADGEN" variant "$URL" "$TOKEN" 8 preview $ids >"$tmp/render.json" &
        local rp=$!
        sleep 0.3   # the renders are under way
        out=$("$LOADGEN" small "$URL" "$TOKEN" 32 3200 4096)
        echo "round $r while rendering: $out"
        busy+=("$(echo "$out" | field p99_ms)")
        wait "$rp"
        echo "round $r renders: $(cat "$tmp/render.json")"
        render_during+=("$(field secs <"$tmp/render.json")")
    }
    if [ $((r % 2)) -eq 1 ]; then run_alone; run_busy; else run_busy; run_alone; fi
    stop_daemon
done

printf '\nrenditions, preview.workers = 2, %s rounds (medians), %s cores, %s\n' "$ROUNDS" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf 'thumbnails/s over a %s-file mixed corpus (first requests, 8 clients): %.1f  (rounds: %s)\n' \
    "$ncorpus" "$(printf '%s\n' "${rate[@]}" | median)" "$(printf '%.1f ' "${rate[@]}")"
printf 'upload p99 (32 clients x 4 KiB, durable), ms: alone %.1f, while previews of 12 MP photos render %.1f  (alone: %s; rendering: %s)\n' \
    "$(printf '%s\n' "${alone[@]}" | median)" "$(printf '%s\n' "${busy[@]}" | median)" \
    "$(printf '%.1f ' "${alone[@]}")" "$(printf '%.1f ' "${busy[@]}")"
printf 'probe per upload (background), mean ms over the corpus: %.1f\n' "$(printf '%s\n' "${probe_ms[@]}" | median)"
