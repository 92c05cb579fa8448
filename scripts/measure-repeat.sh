#!/usr/bin/env bash
# Repeated reads of a working set larger than the pool (issue 10): how much each pass reads from the
# disk (the block device's sectors-read counter, /sys/dev/block/MAJ:MIN/stat field 3, page caches
# dropped before every pass) and how long it takes.
#
#   scripts/measure-repeat.sh big  SIZE_MIB POOL [PASSES=5] [mount args...]
#       one random file of SIZE_MIB read whole (cat) PASSES times through a pool of POOL; then, on a
#       fresh mount, a file of half the pool read cold once and warm 3 times (the cold disk rate and
#       the warm rate of the 1.15x formula: missed/cold + hit/warm).
#   scripts/measure-repeat.sh bf16 POOL_PERCENT [PASSES=6] [mount args...]
#       4 distinct BF16 shards (MiniLM rounded to BF16 by make-bf16.py, each shard's data rotated
#       by a different amount) read whole PASSES times through a pool of POOL_PERCENT of their size.
#
# BIN (default target/release/nitro-uring) and WORK (default /var/tmp/nitro-repeat, on the real
# disk: not a tmpfs) from the environment. Needs root (drop_caches). One line per pass:
#   pass N: disk MiB, seconds, GB/s
set -euo pipefail
mode=${1:?big|bf16}
shift
bin=${BIN:-target/release/nitro-uring}
work=${WORK:-/var/tmp/nitro-repeat}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work/src" "$work/mnt"

dev_of() { # the block device (MAJ:MIN) of the filesystem holding $1
  local d
  d=$(stat -c '%d' "$1")
  echo "$((d >> 8 & 0xfff)):$((d & 0xff | (d >> 12 & 0xfff00)))"
}
sectors() { awk '{print $3}' "/sys/dev/block/$dev/stat"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

mount_it() { # POOL ARGS...
  local pool=$1
  shift
  "$bin" mount "$work/src" "$work/mnt" --pool "$pool" "$@" 2> "$work/log" &
  daemon=$!
  for _ in $(seq 600); do
    grep -q " $work/mnt " /proc/self/mountinfo && return
    kill -0 "$daemon" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/log" >&2
  echo "mount did not appear" >&2
  exit 1
}
unmount_it() {
  kill -INT "$daemon"
  wait "$daemon" || true
  grep -E "UNMOUNT" "$work/log" || true
}
trap 'umount -l "$work/mnt" 2>/dev/null || true' EXIT

passes_of() { # PASSES FILES...
  local n=$1
  shift
  local bytes
  bytes=$(cat "${@/#/$work/src/}" | wc -c)
  for p in $(seq "$n"); do
    drop
    local s0 t0 t1 s1
    s0=$(sectors)
    t0=$(now)
    cat "${@/#/$work/mnt/}" > /dev/null
    t1=$(now)
    s1=$(sectors)
    awk -v p="$p" -v s="$((s1 - s0))" -v t="$(echo "$t1 - $t0" | bc)" -v b="$bytes" \
      'BEGIN { printf "pass %d: disk %.0f MiB (%.1f%% of the set), %.2f s, %.2f GB/s\n", p, s*512/1048576, s*512*100/b, t, b/t/1e9 }'
  done
}

dev=$(dev_of "$work/src")
echo "source on block device $dev; $(nproc) cores; $(uname -r); $(date -u +%FT%TZ)"
case $mode in
big)
  size=${1:?SIZE_MIB}
  pool=${2:?POOL}
  passes=${3:-5}
  shift 3 || shift $#
  rm -f "$work/src/"*
  head -c "$((size << 20))" /dev/urandom > "$work/src/big.bin"
  half=$(($(numfmt --from=iec "$pool") / 2 >> 20))
  head -c "$((half << 20))" /dev/urandom > "$work/src/warm.bin"
  sleep 3 # past the racy window
  echo "big: ${size} MiB file, pool $pool, $passes passes"
  mount_it "$pool" "$@"
  passes_of "$passes" big.bin
  unmount_it
  echo "rates: ${half} MiB file on a fresh mount (--store off), pass 1 cold, 2-4 warm"
  mount_it "$pool" --store off "$@"
  passes_of 4 warm.bin
  unmount_it
  ;;
bf16)
  percent=${1:?POOL_PERCENT}
  passes=${2:-6}
  shift 2 || shift $#
  data=${NITRO_TESTDATA:-$("$here/../../shared/scripts/fetch-real-models.sh" | tail -1)}
  rm -f "$work/src/"*
  python3 "$here/make-bf16.py" "$data/minilm/model.safetensors" "$work/bf16.tmp"
  python3 - "$work/bf16.tmp" "$work/src" <<'PY'
import struct, sys
src, out = sys.argv[1], sys.argv[2]
blob = open(src, "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
head, data = blob[:8 + n], blob[8 + n:]
for i in range(4):
    r = (i * 7_340_034) % len(data) # even: BF16 elements stay aligned
    open(f"{out}/shard-{i}.safetensors", "wb").write(head + data[r:] + data[:r])
PY
  rm -f "$work/bf16.tmp"
  total=$(cat "$work/src/"shard-* | wc -c)
  pool=$((total * percent / 100 >> 20))M
  sleep 3
  echo "bf16: 4 shards, $((total >> 20)) MiB, pool $pool ($percent%), $passes passes"
  mount_it "$pool" "$@"
  passes_of "$passes" shard-0.safetensors shard-1.safetensors shard-2.safetensors shard-3.safetensors
  unmount_it
  ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
