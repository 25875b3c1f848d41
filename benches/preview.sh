#!/usr/bin/env bash
# Whole-program benchmark of the preview engine against vipsthumbnail, both
# single-threaded, side by side in one run with the order swapped every round,
# reporting medians over the rounds:
#
#   1. one 12-megapixel JPEG -> `thumb` (within 320x320, WebP q80), and the
#      same as JPEG;
#   2. a mixed corpus (JPEG, PNG, GIF, WebP, TIFF, HEIC, AVIF of many sizes)
#      -> thumbnails per second, one process for the whole corpus.
#
# Wall time per process in ms, and peak RSS from /usr/bin/time.
# Needs: cargo, vips and vipsthumbnail (Debian libvips-tools), /usr/bin/time.
#
#   benches/preview.sh            # ROUNDS=15 by default
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-15}
for tool in vips vipsthumbnail /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "benches/preview.sh: $tool is missing (apt-get install libvips-tools time)" >&2; exit 2; }
done

cargo build --release --quiet -p media-preview --example thumb
ours=$PWD/target/release/examples/thumb
data=$PWD/crates/media-preview/tests/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- inputs, generated reproducibly from real photos in the test data -------
# A 4000x3000 (12 MP) camera-like JPEG: the 1800x1200 photo cropped to 4:3,
# enlarged, with fixed-seed sensor-like noise so that it has a real photo's
# entropy (an enlarged photo alone decodes unrealistically fast), 4:2:0 Q90.
vips crop "$data/exif-orientation/Landscape_1.jpg" "$tmp/crop.v" 0 0 1600 1200
vips resize "$tmp/crop.v" "$tmp/up.v" 2.5
vips gaussnoise "$tmp/noise.v" 4000 3000 --sigma 6 --mean 0 --seed 42
vips add "$tmp/up.v" "$tmp/noise.v" "$tmp/sum.v"
vips cast "$tmp/sum.v" "$tmp/photo12mp.jpg[Q=90,subsample_mode=on,strip]" uchar
mkdir -p "$tmp/corpus"
cp "$tmp/photo12mp.jpg" "$tmp/corpus/"
vips resize "$tmp/photo12mp.jpg" "$tmp/corpus/photo3mp.jpg[Q=85]" 0.5
vips resize "$tmp/photo12mp.jpg" "$tmp/corpus/photo1mp.png" 0.29
vips resize "$tmp/photo12mp.jpg" "$tmp/corpus/photo2mp.webp[Q=80]" 0.4
for f in exif-orientation/Landscape_6.jpg jpeg/progressive.jpg jpeg/cmyk_adobe_ycck.jpg \
         png/rgba8.png png/rgb16.png png/palette8.png gif/animated.gif webp/lossy.webp \
         tiff/rgb_lzw.tif heic/image.heic avif/yuv420_8bit.avif; do
    cp "$data/$f" "$tmp/corpus/"
done
corpus=("$tmp"/corpus/*)

export VIPS_CONCURRENCY=1 RAYON_NUM_THREADS=1

# run NAME EXPECT CMD...: one timed run that must write EXPECT files;
# appends "ms rss_kb" to $tmp/NAME.
run() {
    local name=$1 expect=$2; shift 2
    local out="$tmp/out-$name"
    rm -rf "$out"; mkdir -p "$out"
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$tmp/rss" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    t1=$(date +%s%N)
    # Every input must have given a picture (vipsthumbnail exits 0 even when
    # one file of several fails).
    local made
    made=$(find "$out" -type f | wc -l)
    [ "$made" -eq "$expect" ] || { echo "$name made $made files, not $expect" >&2; cat "$tmp/err" >&2; exit 1; }
    echo "$(( (t1 - t0) / 1000000 )) $(cat "$tmp/rss")" >>"$tmp/$name"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A cmd
cmd[ours_webp]="$ours --out-dir OUT $tmp/photo12mp.jpg"
cmd[vips_webp]="vipsthumbnail $tmp/photo12mp.jpg -s 320 -o OUT/%s.webp[Q=80,strip]"
cmd[ours_jpeg]="$ours --jpeg --out-dir OUT $tmp/photo12mp.jpg"
cmd[vips_jpeg]="vipsthumbnail $tmp/photo12mp.jpg -s 320 -o OUT/%s.jpg[Q=80,strip]"
cmd[ours_corpus]="$ours --out-dir OUT ${corpus[*]}"
cmd[vips_corpus]="vipsthumbnail ${corpus[*]} -s 320 -o OUT/%s.webp[Q=80,strip]"

pairs=(webp jpeg corpus)
for ((r = 1; r <= ROUNDS; r++)); do
    for p in "${pairs[@]}"; do
        if (( r % 2 )); then order=(ours vips); else order=(vips ours); fi
        for who in "${order[@]}"; do
            name=${who}_$p
            # shellcheck disable=SC2086 # the commands are word lists on purpose
            expect=1; [ "$p" = corpus ] && expect=${#corpus[@]}
            run "$name" "$expect" ${cmd[$name]//OUT/$tmp/out-$name}
        done
    done
done

ms() { cut -d' ' -f1 "$tmp/$1" | median; }
rss() { cut -d' ' -f2 "$tmp/$1" | median; }
n=${#corpus[@]}
echo "rounds: $ROUNDS (medians), single-threaded, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "input: photo12mp.jpg $(vipsheader "$tmp/photo12mp.jpg" | cut -d: -f2-) ($(stat -c %s "$tmp/photo12mp.jpg") bytes); corpus: $n files"
printf '%-28s %10s %10s %8s %14s %14s\n' case ours_ms vips_ms ratio ours_rss_MiB vips_rss_MiB
for p in "${pairs[@]}"; do
    o=$(ms "ours_$p"); v=$(ms "vips_$p")
    printf '%-28s %10s %10s %8s %14s %14s\n' "12MP JPEG -> thumb ($p)" "$o" "$v" \
        "$(awk -v o="$o" -v v="$v" 'BEGIN {printf "%.2f", o / v}')" \
        "$(awk -v k="$(rss "ours_$p")" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$(awk -v k="$(rss "vips_$p")" 'BEGIN {printf "%.1f", k / 1024}')" | sed "s/12MP JPEG -> thumb (corpus)/corpus ($n files) -> thumb/"
done
o=$(ms ours_corpus); v=$(ms vips_corpus)
echo "corpus thumbnails/s: ours $(awk -v n="$n" -v t="$o" 'BEGIN {printf "%.1f", n * 1000 / t}'), vipsthumbnail $(awk -v n="$n" -v t="$v" 'BEGIN {printf "%.1f", n * 1000 / t}')"
