#!/usr/bin/env bash
# Shard-aware prefetch, the issue's done-means scenario: N shards of SIZE MiB named
# x-0000k-of-0000N.gguf, pool POOL. Open shard 1 and read 1 MiB, wait until the set prefetch is
# done (the daemon's `SET ... done` line), drop caches, then read shards 2..N whole: bytes read from
# the source's block device (/sys/block/DEV/stat, any process) and by the daemon (/proc/PID/io)
# in that window, and the time. Modes: the store (`--store none`: store files of this run only),
# `--store off` (free arena room), and `--prefetch-sets off` (the baseline).
# Run as root from the repository root after `cargo build --release`:
#   scripts/measure-sets.sh [WORKDIR on a block device] [N] [SIZE_MIB] [POOL] [RUNS]
set -euo pipefail

BIN=${BIN:-$PWD/target/release/nitro-uring}
WORK=${1:-/var/tmp/nitro-sets}
N=${2:-4}
SIZE=${3:-256}
POOL=${4:-2G}
RUNS=${5:-3}
mkdir -p "$WORK/src" "$WORK/mnt"

dev_of() { # block device (name in /sys/block) holding $1
    local majmin d
    majmin=$(mountpoint -d "$(stat -c %m "$1")")
    d=$(basename "$(readlink -f "/sys/dev/block/$majmin")")
    [ -e "/sys/block/$d" ] || d=$(basename "$(dirname "$(readlink -f "/sys/dev/block/$majmin")")")
    echo "$d"
}
sectors_read() { awk '{print $3}' "/sys/block/$1/stat"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
spread() { sort -n | awk '{a[NR]=$1} END{printf "%s / %s / %s", a[1], a[int((NR+1)/2)], a[NR]}'; }
now() { date +%s.%N; }
shard() { printf 'x-%05d-of-%05d.gguf' "$1" "$N"; }

mount_wait() { # args...: start the daemon, wait for the mount
    "$BIN" mount "$WORK/src" "$WORK/mnt" --pool "$POOL" "$@" >"$WORK/log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 600); do
        mountpoint -q "$WORK/mnt" && return 0
        sleep 0.1
    done
    cat "$WORK/log"
    return 1
}

umount_wait() {
    "$BIN" umount "$WORK/mnt" || true
    wait "$DAEMON" 2>/dev/null || true
}

wait_set_done() {
    for _ in $(seq 1200); do
        grep -q "SET .* done" "$WORK/log" && return 0
        sleep 0.05
    done
    echo "no SET ... done line:"
    cat "$WORK/log"
    return 1
}

daemon_read() { awk '/^read_bytes/{print $2}' "/proc/$DAEMON/io"; }

DEV=$(dev_of "$WORK/src")
REST=$(((N - 1) * SIZE))
echo "== $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; source on /dev/$DEV; $N x $SIZE MiB, pool $POOL"
for k in $(seq "$N"); do
    f="$WORK/src/$(shard "$k")"
    [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = $((SIZE << 20)) ] || head -c $((SIZE << 20)) /dev/urandom >"$f"
done
sleep 2.2 # older than the racy window, so versions may be shared and stored

one_run() { # label, mount args...
    local label=$1 t0 t1 s0 s1 d0 d1 t2 t3 done_line
    shift
    drop_caches
    mount_wait "$@"
    t0=$(now)
    dd if="$WORK/mnt/$(shard 1)" of=/dev/null bs=1M count=1 status=none
    if [ "$label" = "prefetch-sets off" ]; then
        done_line="(no set prefetch)"
        t1=$(now)
    else
        wait_set_done
        t1=$(now)
        done_line=$(grep -o "SET .* done.*" "$WORK/log")
    fi
    drop_caches
    sleep 1 # other processes fault their pages back in right after a drop
    s0=$(sectors_read "$DEV")
    d0=$(daemon_read)
    t2=$(now)
    for k in $(seq 2 "$N"); do cat "$WORK/mnt/$(shard "$k")" >/dev/null; done
    t3=$(now)
    s1=$(sectors_read "$DEV")
    d1=$(daemon_read)
    local dev_mib=$(((s1 - s0) * 512 >> 20)) daemon_mib=$(((d1 - d0) >> 20))
    local pct read_gbps wait_s
    pct=$(awk -v a="$dev_mib" -v b="$REST" 'BEGIN{printf "%.1f", 100*a/b}')
    read_gbps=$(awk -v b="$REST" -v s="$(echo "$t3 - $t2" | bc)" 'BEGIN{printf "%.2f", b*1048576/s/1e9}')
    wait_s=$(echo "$t1 - $t0" | bc | cut -c1-5)
    echo "$label: open+1 MiB -> prefetch done $wait_s s [$done_line]; shards 2-$N ($REST MiB) read at $read_gbps GB/s; /dev/$DEV read $dev_mib MiB ($pct%), the daemon $daemon_mib MiB"
    echo "$label $pct $read_gbps $wait_s" >>"$WORK/rows"
    umount_wait
}

: >"$WORK/rows"
for _ in $(seq "$RUNS"); do
    one_run "store" --store none
    one_run "store off" --store off
    one_run "prefetch-sets off" --store none --prefetch-sets off
done
echo "-- min / median / max of $RUNS runs"
for label in "store" "store off" "prefetch-sets off"; do
    pct=$(grep "^$label [0-9]" "$WORK/rows" | awk '{print $(NF-2)}' | spread)
    gbps=$(grep "^$label [0-9]" "$WORK/rows" | awk '{print $(NF-1)}' | spread)
    wait=$(grep "^$label [0-9]" "$WORK/rows" | awk '{print $NF}' | spread)
    echo "$label: device bytes of shards 2-$N read $pct %; read $gbps GB/s; open -> prefetch done $wait s"
done
