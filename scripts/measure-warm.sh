#!/usr/bin/env bash
# `nitro-uring warm` against a cold read through the mount (issue 11), side by side in one run:
#   - cold: a fresh mount, page caches dropped, `dd bs=1M` of the file through the mount;
#   - warm: a fresh mount, page caches dropped, `nitro-uring warm FILE` (timed from the command's
#     start to its exit), then page caches dropped again and one full read through the mount,
#     counting what the block device read meanwhile (/sys/block/DEV/stat, any process).
# Each mount uses `--store none`, so every run starts from an empty cache. Then one `stats` screen
# of a mount during a read, for the README.
# Run as root from the repository root after `cargo build --release`:
#   scripts/measure-warm.sh [WORKDIR on a block device] [SIZE_MIB=1024] [RUNS=3]
set -euo pipefail

BIN=${BIN:-$PWD/target/release/nitro-uring}
WORK=${1:-/var/tmp/nitro-warm}
MIB=${2:-1024}
RUNS=${3:-3}
mkdir -p "$WORK/src" "$WORK/mnt"
POOL=$((MIB + MIB / 4 + 256))M
F=w$MIB.bin

dev_of() {
    local majmin d
    majmin=$(mountpoint -d "$(stat -c %m "$1")")
    d=$(basename "$(readlink -f "/sys/dev/block/$majmin")")
    [ -e "/sys/block/$d" ] || d=$(basename "$(dirname "$(readlink -f "/sys/dev/block/$majmin")")")
    echo "$d"
}
sectors() { awk '{print $3}' "/sys/block/$DEV/stat"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
gbps() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.2f", b/s/1e9}'; }
spread() { sort -n | awk '{a[NR]=$1} END{printf "%s / %s / %s", a[1], a[int((NR+1)/2)], a[NR]}'; }

mount_wait() {
    "$BIN" mount "$WORK/src" "$WORK/mnt" --pool "$POOL" --store none "$@" >"$WORK/log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 600); do
        mountpoint -q "$WORK/mnt" && return 0
        sleep 0.1
    done
    cat "$WORK/log"
    exit 1
}
umount_wait() {
    "$BIN" umount "$WORK/mnt" || true
    wait "$DAEMON" 2>/dev/null || true
}

[ -s "$WORK/src/$F" ] || head -c $((MIB << 20)) /dev/urandom >"$WORK/src/$F"
sleep 2.2 # older than the racy window
DEV=$(dev_of "$WORK/src")
BYTES=$((MIB << 20))
echo "== $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; $MIB MiB file on /dev/$DEV; pool $POOL; $RUNS runs"
cold=() warm=() dev=()
for _ in $(seq "$RUNS"); do
    mount_wait
    drop
    t0=$(now)
    dd if="$WORK/mnt/$F" of=/dev/null bs=1M status=none
    cold+=("$(gbps $BYTES "$(echo "$(now) - $t0" | bc)")")
    umount_wait

    mount_wait
    drop
    t0=$(now)
    "$BIN" warm "$WORK/mnt/$F" >/dev/null
    warm+=("$(gbps $BYTES "$(echo "$(now) - $t0" | bc)")")
    drop
    s0=$(sectors)
    cat "$WORK/mnt/$F" >/dev/null
    s1=$(sectors)
    dev+=("$(awk -v s=$((s1 - s0)) -v b=$BYTES 'BEGIN{printf "%.1f", s*512*100/b}')")
    umount_wait
done
echo "cold read through the mount (dd bs=1M), GB/s: $(printf '%s\n' "${cold[@]}" | spread)"
echo "warm (the command, start to exit), GB/s: $(printf '%s\n' "${warm[@]}" | spread)"
echo "full read after warm + dropped caches, % of the file from /dev/$DEV: $(printf '%s\n' "${dev[@]}" | spread)"

# One stats screen while a cold read runs (what `stats --watch` redraws every second).
mount_wait
drop
dd if="$WORK/mnt/$F" of=/dev/null bs=1M status=none &
sleep 0.6
"$BIN" stats "$WORK/mnt"
wait $! || true
umount_wait
