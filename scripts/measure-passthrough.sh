#!/usr/bin/env bash
# Warm reads through the mount (store + passthrough) against the same reads of the source in the
# page cache, side by side in one run; RAM held by an mmap load; disk bytes read after a restart.
# Run as root from the repository root after `cargo build --release`:
#   scripts/measure-passthrough.sh [WORKDIR on a block device] [SIZES_MIB...]
# Prints one line per measurement (min / median / max of 3 runs, GB/s).
set -euo pipefail

BIN=${BIN:-$PWD/target/release/nitro-uring}
WORK=${1:-/var/tmp/nitro-measure}
shift || true
SIZES=${*:-1024 4096}
RUNS=3
mkdir -p "$WORK/src" "$WORK/mnt"
STORE=/run/nitro-uring/store

dev_of() { # block device (name in /sys/block) holding $1
    local majmin
    majmin=$(mountpoint -d "$(stat -c %m "$1")" 2>/dev/null || true)
    [ -n "$majmin" ] || { echo "?"; return; }
    local d
    d=$(basename "$(readlink -f "/sys/dev/block/$majmin")")
    [ -e "/sys/block/$d" ] || d=$(basename "$(dirname "$(readlink -f "/sys/dev/block/$majmin")")")
    echo "$d"
}
sectors_read() { awk '{print $3}' "/sys/block/$1/stat"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
gbps() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.2f\n", b/s/1e9}'; }
spread() { sort -n | awk '{a[NR]=$1} END{printf "%s / %s / %s", a[1], a[int((NR+1)/2)], a[NR]}'; }

dd_gbps() { # file block-size
    local out
    out=$(dd if="$1" of=/dev/null bs="$2" 2>&1 | tail -1)
    awk '{for(i=1;i<=NF;i++) if($i=="s,") print $(i-1)}' <<<"$out" | {
        read -r secs
        gbps "$(stat -c %s "$1")" "$secs"
    }
}

mmap_gbps() { # file: map it, touch one byte per 4 KiB page (a loader's first pass)
    python3 - "$1" <<'EOF'
import mmap, os, sys, time
f = open(sys.argv[1], 'rb')
n = os.fstat(f.fileno()).st_size
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
t = time.perf_counter()
s = sum(m[i] for i in range(0, n, 4096))
print("%.2f" % (n / (time.perf_counter() - t) / 1e9))
EOF
}

mmap_memfree_drop_mib() { # file: MemFree drop while mapped and touched, MiB
    python3 - "$1" <<'EOF'
import mmap, os, sys
def free():
    for l in open('/proc/meminfo'):
        if l.startswith('MemFree:'):
            return int(l.split()[1]) // 1024
f = open(sys.argv[1], 'rb')
n = os.fstat(f.fileno()).st_size
before = free()
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
s = sum(m[i] for i in range(0, n, 4096))
print(before - free())
EOF
}

row() { # label file
    local label=$1 f=$2 r
    for bs in 1M 128K; do
        r=$(for _ in $(seq $RUNS); do dd_gbps "$f" $bs; done | spread)
        echo "$label dd bs=$bs: $r GB/s"
    done
    r=$(for _ in $(seq $RUNS); do mmap_gbps "$f"; done | spread)
    echo "$label mmap load: $r GB/s"
}

mount_wait() { # args...: start the daemon, wait for the mount
    "$BIN" mount "$WORK/src" "$WORK/mnt" "$@" >"$WORK/log" 2>&1 &
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

wait_stored() { # name
    for _ in $(seq 1200); do
        grep -q "STORED $1" "$WORK/log" && return 0
        sleep 0.1
    done
    echo "not stored: $1"
    return 1
}

DEV=$(dev_of "$WORK/src")
echo "== $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; source on /dev/$DEV; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for mib in $SIZES; do
    f="$WORK/src/w$mib.bin"
    [ -s "$f" ] || head -c $((mib << 20)) /dev/urandom >"$f"
done
sleep 2.2 # older than the racy window, so the version may be stored
rm -rf "$STORE"/src-* 2>/dev/null || true

for mib in $SIZES; do
    name=w$mib.bin
    pool=$((mib + mib / 4 + 256))M
    echo "-- $name ($mib MiB), pool $pool"
    drop_caches
    echo "source cold dd bs=1M: $(dd_gbps "$WORK/src/$name" 1M) GB/s"
    want=$(md5sum <"$WORK/src/$name")
    row "source (page cache)" "$WORK/src/$name"
    drop_caches

    mount_wait --pool "$pool"
    t0=$(date +%s.%N)
    r=$(dd_gbps "$WORK/mnt/$name" 1M)
    wait_stored "$name"
    t2=$(date +%s.%N)
    echo "mount cold dd bs=1M: $r GB/s; whole file stored $(echo "$t2 - $t0" | bc | cut -c1-5) s after the first open"
    row "mount passthrough (store)" "$WORK/mnt/$name"
    echo "mmap load through the mount: MemFree dropped by $(mmap_memfree_drop_mib "$WORK/mnt/$name") MiB for a $mib MiB file"
    umount_wait

    # restart: SIGTERM, then SIGKILL; after each, one full read through a new daemon
    for how in TERM KILL; do
        mount_wait --pool "$pool"
        cat "$WORK/mnt/$name" >/dev/null
        kill -s "$how" "$DAEMON"
        wait "$DAEMON" 2>/dev/null || true
        [ "$how" = KILL ] && umount -l "$WORK/mnt" 2>/dev/null || true
        drop_caches
        s0=$(sectors_read "$DEV")
        mount_wait --pool "$pool"
        [ "$(md5sum <"$WORK/mnt/$name")" = "$want" ] && same=byte-exact || same=DIFFERENT
        s1=$(sectors_read "$DEV")
        daemon_mib=$(( $(awk '/^read_bytes/{print $2}' "/proc/$DAEMON/io") >> 20 ))
        echo "after SIG$how + new mount: first full read $same; the daemon read $daemon_mib MiB from storage (/proc/PID/io), /dev/$DEV $(( (s1 - s0) * 512 >> 20 )) MiB in all, any process ($(grep -o 'adopted [0-9]* file(s), [0-9]* MiB' "$WORK/log"))"
        umount_wait
    done

    for mode in direct keep; do
        mount_wait --pool "$pool" --store off --cache-mode $mode
        cat "$WORK/mnt/$name" >/dev/null
        cat "$WORK/mnt/$name" >/dev/null
        row "mount --store off --cache-mode $mode" "$WORK/mnt/$name"
        umount_wait
    done
done
