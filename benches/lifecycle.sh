#!/usr/bin/env bash
# Lifecycle benchmarks (issue #4): whole program, release build, one run.
#
#   benches/lifecycle.sh [N_BLOBS] [GROUP_MESSAGES]     (defaults 1000000 100000)
#
# 1. DELETE /v1/groups/{id} of GROUP_MESSAGES messages on an index of N_BLOBS
#    blobs (target: < 5 s).
# 2. `media-store gc` over N_BLOBS blobs with 10% garbage (zero count for two
#    days) while 4 clients upload: wall time and peak RSS (/usr/bin/time -v;
#    targets < 60 s, < 200 MiB), and upload latency p99 during GC next to the
#    p99 of the same load just before GC (baseline, same run).
# 3. `media-store scrub` vs `b3sum` over the same blob files, interleaved by
#    hyperfine in the same run, on large files and on many small files
#    (target: scrub speed >= 70% of b3sum).
#
# The data folder is generated directly (tiny files written in parallel, index
# rows inserted by SQL: examples/lifecycle_bench.rs) because uploading 1 M
# blobs over HTTP would take far longer than the measurements themselves.
# Set BENCH_DIR to put the data elsewhere than /tmp (needs ~5 GB and 1.1 M inodes);
# SKIP_SCRUB=1 stops after part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
GROUP=${2:-100000}
cargo build --release --quiet --bin media-store --example lifecycle_bench
BIN=$PWD/target/release/media-store
GEN=$PWD/target/release/examples/lifecycle_bench
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/lifecycle-bench.XXXXXX")
DAEMON=""
cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
TOKEN=bench-token-0123456789
export MEDIA_STORE_API_TOKEN=$TOKEN
DATA=$WORK/data

echo "== generating $N blobs (10% garbage), $GROUP messages in group 1"
"$GEN" gen-gc "$DATA" "$N" 100 "$GROUP"

"$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA" >"$WORK/daemon.out" 2>"$WORK/daemon.err" &
DAEMON=$!
for _ in $(seq 200); do grep -q "listening on" "$WORK/daemon.out" 2>/dev/null && break; sleep 0.05; done
BASE=$(sed -n 's/^listening on //p' "$WORK/daemon.out")
[ -n "$BASE" ] || { cat "$WORK/daemon.err"; exit 2; }

echo "== 1. DELETE /v1/groups/1 ($GROUP messages)"
T0=$(date +%s.%N)
curl -sf -X DELETE -H "authorization: Bearer $TOKEN" "$BASE/v1/groups/1" >"$WORK/group.json"
T1=$(date +%s.%N)
echo "response: $(cat "$WORK/group.json")"
python3 -c "t=$T1-$T0; print(f'group delete: {t:.2f} s for $GROUP messages (target < 5 s): {\"OK\" if t < 5 else \"MISSED\"}')"

echo "== 2. gc over $N blobs with uploads running"
rm -f "$WORK/stop"
"$GEN" load "$BASE" "$TOKEN" "$WORK/stop" 4 >"$WORK/idle.txt" &
LOAD=$!
sleep 10
touch "$WORK/stop"
wait $LOAD
rm -f "$WORK/stop"
"$GEN" load "$BASE" "$TOKEN" "$WORK/stop" 4 >"$WORK/busy.txt" &
LOAD=$!
sleep 1
set +e
/usr/bin/time -v "$BIN" gc --data-dir "$DATA" --json >"$WORK/gc.json" 2>"$WORK/gc.time"
GC_RC=$?
set -e
touch "$WORK/stop"
wait $LOAD
cat "$WORK/idle.txt" "$WORK/busy.txt" >/dev/null
echo "gc exit code: $GC_RC"
python3 - "$WORK" <<'PY'
import json, re, sys
w = sys.argv[1]
gc = json.load(open(f"{w}/gc.json"))
t = open(f"{w}/gc.time").read()
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
parts = [float(p) for p in wall.split(":")]
secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rss_mib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
def load(name):
    return dict(kv.split("=") for kv in open(f"{w}/{name}").read().split())
idle, busy = load("idle.txt"), load("busy.txt")
print(f"gc: {gc['blobs_deleted']} blobs deleted, {gc['bytes_freed']} bytes freed, "
      f"{gc['unknown_files_deleted']} unknown files; wall {secs:.1f} s (target < 60 s), "
      f"peak RSS {rss_mib:.0f} MiB (target < 200 MiB)")
print(f"uploads before gc: {idle['uploads']} ({idle['failed']} failed) p50 {idle['p50_ms']} ms p99 {idle['p99_ms']} ms")
print(f"uploads during gc: {busy['uploads']} ({busy['failed']} failed) p50 {busy['p50_ms']} ms p99 {busy['p99_ms']} ms max {busy['max_ms']} ms")
print(f"p99 ratio during/before: {float(busy['p99_ms']) / float(idle['p99_ms']):.2f}")
PY
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""
rm -rf "$DATA"

[ -n "${SKIP_SCRUB:-}" ] && exit 0
echo "== 3. scrub vs b3sum over the same files"
for spec in "64 16777216 large" "20000 16384 small"; do
    set -- $spec
    S=$WORK/scrub-$3
    "$GEN" gen-scrub "$S" "$1" "$2"
    hyperfine --style basic -w 1 -r 5 --export-json "$WORK/h-$3.json" \
        -n b3sum "find $S/blobs -type f -print0 | xargs -0 b3sum --no-names >/dev/null" \
        -n scrub "$BIN scrub --data-dir $S --json >/dev/null" >/dev/null
    python3 - "$WORK/h-$3.json" "$1" "$2" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
n, size = int(sys.argv[2]), int(sys.argv[3])
gib = n * size / 2**30
print(f"{n} files x {size} B ({gib:.2f} GiB): b3sum {r['b3sum']:.3f} s ({gib / r['b3sum']:.2f} GiB/s), "
      f"scrub {r['scrub']:.3f} s ({gib / r['scrub']:.2f} GiB/s); scrub speed = "
      f"{r['b3sum'] / r['scrub'] * 100:.0f}% of b3sum (target >= 70%)")
PY
    rm -rf "$S"
done
