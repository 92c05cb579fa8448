#!/usr/bin/env python3
"""Derive a BF16 safetensors file from an F32 one, as a BF16 checkpoint would be (round to nearest
even on the high 16 bits). Usage: make-bf16.py IN.safetensors OUT.safetensors"""
import json, struct, sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
out_header, parts, pos = {}, [], 0
for name, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                      key=lambda kv: kv[1]["data_offsets"][0]):
    b, e = t["data_offsets"]
    raw = data[b:e]
    if t["dtype"] == "F32":
        words = memoryview(raw).cast("I")
        # round to nearest even on bit 16
        conv = bytearray(len(words) * 2)
        hi = memoryview(conv).cast("H")
        for i, w in enumerate(words):
            hi[i] = ((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF
        raw, dtype = bytes(conv), "BF16"
    else:
        dtype = t["dtype"]
    out_header[name] = {"dtype": dtype, "shape": t["shape"], "data_offsets": [pos, pos + len(raw)]}
    parts.append(raw)
    pos += len(raw)
if "__metadata__" in header:
    out_header["__metadata__"] = header["__metadata__"]
h = json.dumps(out_header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for p in parts:
        f.write(p)
