#!/usr/bin/env bash
# Effective capacity of the compressed tier on a mixed real model directory: the real GGUF (Q4_K_M),
# F32 safetensors (MiniLM), a BF16 safetensors derived from it, FP16 Whisper and their text files,
# mounted with a pool smaller than the directory, read whole N times. Prints the daemon's final
# counters (logical bytes cached per pool byte, compressed bytes, evictions).
# Usage: scripts/measure-capacity.sh [POOL=400M] [PASSES=4] [BIN=target/release/nitro-uring]
set -euo pipefail
pool=${1:-400M} passes=${2:-4} bin=${3:-target/release/nitro-uring}
here=$(cd "$(dirname "$0")" && pwd)
data=$("$here/../../shared/scripts/fetch-real-models.sh" 2>/dev/null | tail -1) || data=$(../shared/scripts/fetch-real-models.sh | tail -1)
work=$(mktemp -d /var/tmp/nitro-capacity.XXXXXX)
trap 'umount -l "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/mnt"
cp "$data/gemma-3-270m-q4_k_m.gguf" "$work/src/"
cp -r "$data/minilm" "$data/whisper-base" "$work/src/"
python3 "$here/make-bf16.py" "$data/minilm/model.safetensors" "$work/src/minilm-bf16.safetensors"
du -sh --apparent-size "$work/src"
"$bin" mount "$work/src" "$work/mnt" --pool "$pool" 2> "$work/log" & daemon=$!
for _ in $(seq 100); do grep -q " $work/mnt " /proc/self/mountinfo && break; sleep 0.1; done
for p in $(seq "$passes"); do
  start=$(date +%s.%N)
  find "$work/mnt" -type f -print0 | sort -z | xargs -0 cat > /dev/null
  echo "pass $p: $(echo "$(date +%s.%N) - $start" | bc) s"
done
kill -INT $daemon; wait $daemon || true
grep -E "COMPRESS|UNMOUNT" "$work/log"
