#!/usr/bin/env bash
# Measures the engine's headline numbers in one run (root needed for drop_caches):
#   cold read through the mount vs cold read of the source, warm arena hits vs libfuse's null
#   example (the FUSE ceiling), page-cache hits vs native, RSS vs pool.
# Usage: scripts/measure-engine.sh [SIZE_MIB=2048] [BIN=target/release/nitro-uring]
set -euo pipefail
size_mib=${1:-2048}
bin=${2:-target/release/nitro-uring}
work=$(mktemp -d /var/tmp/nitro-measure.XXXXXX)
src=$work/src mnt=$work/mnt nullf=$work/nullfile
mkdir -p "$src" "$mnt"; touch "$nullf"
pids=()
cleanup() {
  umount -l "$mnt" 2>/dev/null || true; umount -l "$nullf" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rate() { # dd args... -> GB/s
  dd "$@" of=/dev/null 2>&1 | awk '/copied/ { for (i=1;i<=NF;i++) if ($i=="copied,") { print $(i+3), $(i+4) } }'
}
wait_mounted() { for _ in $(seq 600); do grep -q " $1 " /proc/self/mountinfo && return 0; sleep 0.1; done; echo "mount of $1 did not appear" >&2; exit 1; }

echo "# making a ${size_mib} MiB random file on $(df -T "$work" | awk 'NR==2{print $1" ("$2")"}')"
head -c $((size_mib << 20)) /dev/urandom > "$src/model.bin"; sync

cc=$(dirname "$0")/null.c
gcc -O2 -o "$work/null" "$cc" $(pkg-config fuse3 --cflags --libs)
"$work/null" -f "$nullf" & pids+=($!)
wait_mounted "$nullf"

pool_mib=$(( size_mib + size_mib / 4 ))
"$bin" mount "$src" "$mnt" --pool ${pool_mib}M & pids+=($!); daemon=$!
wait_mounted "$mnt"

drop; echo "source cold            $(rate if="$src/model.bin" bs=1M)"
echo "source page-cache hit  $(rate if="$src/model.bin" bs=1M)"
drop; echo "mount cold (direct)    $(rate if="$mnt/model.bin" bs=1M)"
drop; echo "mount arena hit        $(rate if="$mnt/model.bin" bs=1M)"
echo "mount arena hit 128K   $(rate if="$mnt/model.bin" bs=128K)"
echo "null O_DIRECT 1M       $(rate if="$nullf" bs=1M count=$size_mib iflag=direct)"
echo "null buffered 1M       $(rate if="$nullf" bs=1M count=$size_mib)"
echo "mount O_DIRECT 1M      $(rate if="$mnt/model.bin" bs=1M iflag=direct)"
echo "pool ${pool_mib} MiB, daemon $(grep -E 'VmRSS|VmHWM' /proc/$daemon/status | tr -s ' \n' ' ')"
kill -INT "$daemon"; wait "$daemon" || true
"$bin" mount "$src" "$mnt" --pool ${pool_mib}M --cache-mode keep & pids+=($!); daemon=$!
wait_mounted "$mnt"
drop; echo "mount cold (keep)      $(rate if="$mnt/model.bin" bs=1M)"
echo "mount page-cache hit   $(rate if="$mnt/model.bin" bs=1M)"
echo "keep mode daemon $(grep -E 'VmRSS' /proc/$daemon/status | tr -s ' \n' ' ')"
kill -INT "$daemon"; wait "$daemon" || true
