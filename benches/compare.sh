#!/usr/bin/env bash
# Paired before/after benchmark of the two hot paths that limits, metrics and
# request checks must not slow down (issue #12, "Performance"), for two builds
# in one session, interleaved round by round (the machine is shared and noisy:
# compare the ratios, not the absolute figures):
#   - uploads: 32 clients x 4 KiB, each durable before its 201 (loadgen small);
#   - downloads: one 4 KiB file through its signed URL, 32 keep-alive
#     connections (loadgen download).
#
#   benches/compare.sh BASE [HEAD]
#
# BASE and HEAD are git revisions; HEAD defaults to the working tree. Each is
# built (release) in a worktree under $BENCH_DIR/rev-<sha>, all builds sharing
# one target folder ($BENCH_DIR/target: dependencies are built once), unless
# MEDIA_STORE_BIN_BASE / MEDIA_STORE_BIN_HEAD name binaries to use instead.
# The load generator is this tree's (examples/loadgen.rs), the same for both
# sides. Each round starts a fresh daemon of each build in turn,
# alternating which goes first; every daemon gets a fresh data folder.
#
# Environment: BENCH_DIR (default target/bench-compare), ROUNDS (6), UPLOADS
# (uploads per round, 6400), CONNS (32), DOWNLOAD_SECS (10).
# Prints every measurement and, at the end, the median of each side and the
# ratio HEAD/BASE (above 1.00: HEAD is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,22p' "$0"; exit 2; }
BASE=$1
HEAD=${2:-}
BENCH_DIR=${BENCH_DIR:-$PWD/target/bench-compare}
ROUNDS=${ROUNDS:-6}
UPLOADS=${UPLOADS:-6400}
CONNS=${CONNS:-32}
DOWNLOAD_SECS=${DOWNLOAD_SECS:-10}
TOKEN=bench-token-0123456789
mkdir -p "$BENCH_DIR"

# build REV -> prints the path of its media-store binary
build() {
    local rev=$1 sha dir
    sha=$(git rev-parse --short=12 "$rev^{commit}")
    dir=$BENCH_DIR/rev-$sha
    if [ ! -x "$dir/media-store" ]; then
        rm -rf "$dir/src"
        git worktree add --detach "$dir/src" "$sha" >&2
        (cd "$dir/src" && cargo build --release --quiet --bin media-store >&2)
        cp "$BENCH_DIR/target/release/media-store" "$dir/media-store"
        git worktree remove --force "$dir/src" >&2
    fi
    echo "$dir/media-store"
}

export CARGO_TARGET_DIR=$BENCH_DIR/target
BIN_BASE=${MEDIA_STORE_BIN_BASE:-$(build "$BASE")}
if [ -n "${MEDIA_STORE_BIN_HEAD:-}" ]; then
    BIN_HEAD=$MEDIA_STORE_BIN_HEAD
elif [ -n "$HEAD" ]; then
    BIN_HEAD=$(build "$HEAD")
else
    cargo build --release --quiet --bin media-store
    BIN_HEAD=$BENCH_DIR/working-tree-media-store
    cp "$CARGO_TARGET_DIR/release/media-store" "$BIN_HEAD"
fi
cargo build --release --quiet --example loadgen
LOADGEN=$BENCH_DIR/loadgen
cp "$CARGO_TARGET_DIR/release/examples/loadgen" "$LOADGEN"
echo "base: $BASE ($BIN_BASE)"
echo "head: ${HEAD:-working tree} ($BIN_HEAD)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_daemon() { # bin data -> sets URL, DPID
    local log=$2.log
    rm -rf "$2"
    MEDIA_STORE_API_TOKEN=$TOKEN MEDIA_STORE_LOG=warn "$1" serve --data-dir "$2" --listen 127.0.0.1:0 >"$log" 2>&1 &
    DPID=$!
    pids+=("$DPID")
    for _ in $(seq 600); do
        URL=$(sed -n 's/^listening on //p' "$log" 2>/dev/null || true)
        [ -n "$URL" ] && return 0
        sleep 0.05
    done
    echo "daemon did not start"; cat "$log"; exit 1
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; rm -rf "$1" "$1.log"; }

field() { python3 -c "import json,sys; d=json.load(sys.stdin); assert d['failed']==0, d; print(d['$1'])"; }

declare -A up dl up99 dl99
measure() { # side bin
    local data=$BENCH_DIR/data-$1 out
    start_daemon "$2" "$data"
    out=$("$LOADGEN" small "$URL" "$TOKEN" 32 "$UPLOADS" 4096)
    up[$1]+="$(echo "$out" | field per_sec) "
    up99[$1]+="$(echo "$out" | field p99_ms) "
    echo "  $1 uploads: $out"
    out=$("$LOADGEN" download "$URL" "$TOKEN" "$CONNS" "$DOWNLOAD_SECS" 4096)
    dl[$1]+="$(echo "$out" | field per_sec) "
    dl99[$1]+="$(echo "$out" | field p99_ms) "
    echo "  $1 downloads: $out"
    stop_daemon "$data"
}

for r in $(seq "$ROUNDS"); do
    echo "round $r"
    if [ $((r % 2)) -eq 1 ]; then
        measure base "$BIN_BASE"; measure head "$BIN_HEAD"
    else
        measure head "$BIN_HEAD"; measure base "$BIN_BASE"
    fi
done

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
report() { # what values-base values-head unit
    local b h
    b=$(median "$2"); h=$(median "$3")
    printf '%-34s base %10.1f  head %10.1f  head/base %.2f\n' "$1" "$b" "$h" "$(echo "$h / $b" | bc -l)"
}
echo
echo "medians of $ROUNDS rounds (base $BASE, head ${HEAD:-working tree}):"
report "4 KiB uploads/s, 32 clients" "${up[base]}" "${up[head]}"
report "4 KiB keep-alive downloads/s" "${dl[base]}" "${dl[head]}"
report "upload p99 ms (lower is better)" "${up99[base]}" "${up99[head]}"
report "download p99 ms (lower is better)" "${dl99[base]}" "${dl99[head]}"
