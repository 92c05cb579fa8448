#!/bin/bash
# Metadata and read cost of a nitro-uring binary: 10,000 small files listed and stat-ed three
# times, 2,000 opened and read, a 1 GiB file read three times (caches dropped before each).
# Usage: scripts/measure-identity.sh BIN LABEL [DIR]  (root; DIR must not be tmpfs to mean "cold")
BIN=${1:?usage: measure-identity.sh BIN LABEL [DIR]}; L=${2:-run}; R=${3:-/tmp/nitro-meas}
mkdir -p $R/src/many $R/mnt
if [ ! -f $R/src/big.bin ]; then
  head -c 1G /dev/urandom > $R/src/big.bin
  for i in $(seq 1 10000); do echo $i > $R/src/many/f$i; done
  sleep 3
fi
$BIN mount $R/src $R/mnt --pool 1536M -q & P=$!
for i in $(seq 1 600); do mountpoint -q $R/mnt && break; sleep 0.1; done
sleep 1
sync; echo 3 > /proc/sys/vm/drop_caches
python3 - "$R/mnt" "$L" <<'PY'
import os,sys,time
m=sys.argv[1]; L=sys.argv[2]
d=os.path.join(m,'many')
for rnd in range(3):
    t=time.perf_counter(); n=0
    for e in os.scandir(d):
        os.stat(e.path); n+=1
    dt=time.perf_counter()-t
    print(f"{L} list+stat {n} files pass {rnd}: {dt*1000:.0f} ms ({dt/n*1e6:.1f} us/file)")
t=time.perf_counter()
for i in range(1,2001):
    with open(os.path.join(d,f'f{i}'),'rb') as f: f.read()
dt=time.perf_counter()-t
print(f"{L} open+read+close 2000 small files: {dt*1000:.0f} ms ({dt/2000*1e6:.1f} us/file)")
PY
for i in 1 2 3; do
  sync; echo 3 > /proc/sys/vm/drop_caches
  dd if=$R/mnt/big.bin of=/dev/null bs=1M 2>&1 | tail -1 | sed "s/^/$L pass $i (1st cold then warm arena) dd 1M: /"
done
kill $P; wait $P 2>/dev/null
