#!/usr/bin/env bash
# Archival throughput (issue #4, "Archive"): `media-store gc` moving every blob
# to the archive root (after_days = 0) against `cp -r` + `sync` of the same
# blob files to another folder on the same disk, in the same run. Both read
# the same (warm) files; the daemon additionally hashes every byte, fsyncs each
# copy and unlinks the primary under SQLite's write lock.
#
#   benches/archive.sh [FILES] [KIB_PER_FILE]     (defaults 2000 256: 500 MiB)
#
# BENCH_DIR puts the data elsewhere than /tmp (/tmp may be tmpfs: use a disk).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-2000}
KIB=${2:-256}
cargo build --release --quiet --bin media-store
BIN=$PWD/target/release/media-store
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/archive-bench.XXXXXX")
DAEMON=""
cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
export MEDIA_STORE_API_TOKEN=bench-token-0123456789
mkdir -p "$WORK/archive"
printf 'log = "warn"\n[archive]\nroot = "%s"\nafter_days = 0\n' "$WORK/archive" >"$WORK/config.toml"

"$BIN" init-archive --data-dir "$WORK/data" --config "$WORK/config.toml" >/dev/null
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" --config "$WORK/config.toml" >"$WORK/stdout" 2>"$WORK/stderr" &
DAEMON=$!
for _ in $(seq 200); do grep -q '^listening on ' "$WORK/stdout" 2>/dev/null && break; sleep 0.05; done
ADDR=$(sed -n 's/^listening on http:\/\///p' "$WORK/stdout")
[ -n "$ADDR" ] || { cat "$WORK/stderr"; exit 2; }

echo "== uploading $FILES files of $KIB KiB"
mkdir -p "$WORK/src"
python3 - "$WORK/src" "$FILES" "$KIB" <<'PY'
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(f"{d}/{i}.bin", "wb") as f:
        f.write(b"%PDF-1.4\n" + os.urandom(kib * 1024 - 9))
PY
ls "$WORK/src" | xargs -P 4 -I{} curl -sf -o /dev/null -X POST \
    -H "authorization: Bearer $MEDIA_STORE_API_TOKEN" --data-binary @"$WORK/src/{}" \
    "http://$ADDR/v1/media?uploader_id=1"
rm -rf "$WORK/src"
BYTES=$(du -sb "$WORK/data/blobs" | cut -f1)
echo "   $(find "$WORK/data/blobs" -type f | wc -l) blobs, $((BYTES / 1048576)) MiB"
cat "$WORK/data/blobs"/*/*/* >/dev/null # warm, for both contenders

echo "== baseline: cp -r + sync of the same files"
start=$(date +%s.%N)
cp -r "$WORK/data/blobs" "$WORK/baseline"
sync -f "$WORK/baseline"
cp_secs=$(python3 -c "import time; print(time.time() - $start)")
rm -rf "$WORK/baseline"
sleep 5 # let the deletes settle before the next writer

echo "== media-store gc (archive phase), daemon running"
start=$(date +%s.%N)
"$BIN" gc --json --no-retention --data-dir "$WORK/data" --config "$WORK/config.toml" >"$WORK/gc.json"
gc_secs=$(python3 -c "import time; print(time.time() - $start)")
python3 - "$WORK/gc.json" "$cp_secs" "$gc_secs" "$BYTES" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
cp, gc, size = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
assert s["blobs_archived"] > 0 and not s["errors"], s
mib = size / 1048576
print(f"   archived {s['blobs_archived']} blobs, {s['bytes_archived'] // 1048576} MiB "
      f"(archive phase {s['phases_ms']['archive']} ms)")
print(f"cp -r + sync:     {cp:6.2f} s  {mib / cp:7.1f} MiB/s")
print(f"media-store gc:   {gc:6.2f} s  {mib / gc:7.1f} MiB/s  ({100 * cp / gc:.0f}% of cp's speed)")
PY
[ -z "$(find "$WORK/data/blobs" -type f)" ] || { echo "primary copies left behind"; exit 1; }
"$BIN" fsck --json --data-dir "$WORK/data" --config "$WORK/config.toml" >"$WORK/fsck.json" ||
    { cat "$WORK/fsck.json"; exit 1; }
echo "fsck after the move: clean"
