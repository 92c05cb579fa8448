//! Encoded block: header, frame table, frames (layout in the module docs of `codec`).
//!
//! Decode trusts nothing it reads: every size is checked against the block length before it is
//! used, the table is covered by the header check, and every decoded frame by its own check, so
//! a damaged block yields an error and never wrong or partial bytes (`out` is zeroed on error).

use super::checksum::xxh3;
use super::planes::{interleave2, interleave4, split2, split4};
use super::{Codec, CodecError, MAX_FRAME_BYTES, Scratch, TEXT_ZSTD_LEVEL};

const MAGIC: [u8; 4] = *b"NUc1";
const VERSION: u8 = 2;
const HEADER_BYTES: usize = 32;
/// Bytes of the header covered by the header check (everything before the check itself).
const CHECKED_HEADER_BYTES: usize = 24;
const ENTRY_BYTES: usize = 16;

/// Frame mode: stored raw, whatever the codec.
const MODE_RAW: u32 = 1 << 31;
/// Frame mode (zstd codec): one zstd frame.
const MODE_ZSTD: u32 = 1;

/// zstd settings for planes: level 1, tuned for what a plane is. An exponent plane has almost no
/// real repeats, only chance 4–6-byte coincidences; level 1's default search turns those into
/// many short matches, which cost more to decode than they save. Only taking matches of 7+ bytes
/// found through a tiny hash table leaves the plane to the Huffman literal coder: on BF16
/// exponent planes (minilm rounded to BF16, 32 KiB planes) stored size 0.379 → 0.343 of raw and
/// plane decode 1.3 → 2.6 GB/s. Long runs (zero padding) are still found.
fn zstd_plane_params() -> [zstd::zstd_safe::CParameter; 4] {
    use zstd::zstd_safe::CParameter;
    [
        CParameter::CompressionLevel(1),
        CParameter::HashLog(6),
        CParameter::MinMatch(7),
        CParameter::WindowLog(15),
    ]
}

/// zstd settings for text: the level alone. zstd sizes its tables from the known source size
/// (64 KiB frames get the ≤ 128 KiB parameter set), so nothing else needs tuning; the frame
/// checksum and dictionary id are off by default.
fn zstd_text_params() -> [zstd::zstd_safe::CParameter; 1] {
    [zstd::zstd_safe::CParameter::CompressionLevel(
        TEXT_ZSTD_LEVEL,
    )]
}

/// Create a compression context with `params`; `None` if zstd cannot allocate or rejects one.
fn new_cctx(
    params: impl IntoIterator<Item = zstd::zstd_safe::CParameter>,
) -> Option<zstd::zstd_safe::CCtx<'static>> {
    let mut cctx = zstd::zstd_safe::CCtx::try_create()?;
    for param in params {
        cctx.set_parameter(param).ok()?;
    }
    Some(cctx)
}

/// A compressed plane or zstd frame must save at least 1/32 of its raw size, or it is stored raw:
/// a 3% saving does not pay for running a decoder on every read.
fn pays(raw_bytes: usize, packed_bytes: usize) -> bool {
    packed_bytes <= raw_bytes - raw_bytes / 32 && packed_bytes < raw_bytes
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn frame_seed(index: usize) -> u64 {
    index as u64
}

/// Encode `src` with `codec` as independent `frame_bytes` frames into `dst` (cleared first).
///
/// Returns the encoded length, or `None` (with `dst` cleared) when the block would not be at
/// least `min_saving` × `src.len()` smaller than `src` — checked as frames are written, so
/// incompressible input stops early. A `min_saving` of `f64::NEG_INFINITY` always produces a
/// block (useful for [`Codec::Raw`], which never saves anything).
///
/// Panics if `frame_bytes` is 0, not a multiple of 4, or above [`MAX_FRAME_BYTES`] (frames must
/// start on element boundaries), if `min_saving` is NaN, or if `src` exceeds 4 GiB.
pub fn encode_chunk(
    src: &[u8],
    codec: Codec,
    frame_bytes: usize,
    min_saving: f64,
    scratch: &mut Scratch,
    dst: &mut Vec<u8>,
) -> Option<usize> {
    assert!(
        frame_bytes > 0 && frame_bytes.is_multiple_of(4) && frame_bytes <= MAX_FRAME_BYTES,
        "frame_bytes must be a non-zero multiple of 4 up to MAX_FRAME_BYTES, got {frame_bytes}"
    );
    assert!(!min_saving.is_nan(), "min_saving is NaN");
    assert!(
        u32::try_from(src.len()).is_ok(),
        "chunk of {} bytes is too large",
        src.len()
    );
    dst.clear();
    let encoded = encode_frames(src, codec, frame_bytes, min_saving, scratch, dst);
    if encoded.is_none() {
        dst.clear();
    }
    encoded
}

fn encode_frames(
    src: &[u8],
    codec: Codec,
    frame_bytes: usize,
    min_saving: f64,
    scratch: &mut Scratch,
    dst: &mut Vec<u8>,
) -> Option<usize> {
    // `as` saturates (saving ≥ 1 → 0); NEG_INFINITY means no limit, even for an empty chunk.
    let keep_share = 1.0 - min_saving;
    let budget_bytes = if keep_share.is_infinite() {
        usize::MAX
    } else {
        (keep_share * src.len() as f64).floor() as usize
    };
    let frame_count = src.len().div_ceil(frame_bytes);
    let payload_start = HEADER_BYTES + frame_count * ENTRY_BYTES;
    if payload_start > budget_bytes {
        return None;
    }
    dst.resize(payload_start, 0);
    if codec != Codec::Raw && scratch.packed.len() < packed_capacity(frame_bytes) {
        scratch.packed.resize(packed_capacity(frame_bytes), 0);
    }
    scratch.reserve_decode(frame_bytes);

    for (index, frame) in src.chunks(frame_bytes).enumerate() {
        let mode = match codec {
            Codec::Raw => store_raw(frame, dst),
            Codec::Zstd => encode_zstd(frame, scratch, dst),
            Codec::Planes16 | Codec::Planes32 => encode_planes(frame, codec, scratch, dst),
        };
        if dst.len() > budget_bytes {
            return None;
        }
        let payload_end = u32::try_from(dst.len() - payload_start).ok()?;
        let entry = HEADER_BYTES + index * ENTRY_BYTES;
        dst[entry..entry + 4].copy_from_slice(&payload_end.to_le_bytes());
        dst[entry + 4..entry + 8].copy_from_slice(&mode.to_le_bytes());
        dst[entry + 8..entry + 16].copy_from_slice(&xxh3(frame, frame_seed(index)).to_le_bytes());
    }

    let frame_bytes_u32 = u32::try_from(frame_bytes).ok()?;
    let frame_count_u32 = u32::try_from(frame_count).ok()?;
    dst[0..4].copy_from_slice(&MAGIC);
    dst[4] = VERSION;
    dst[5] = codec.to_byte();
    dst[6..8].copy_from_slice(&0u16.to_le_bytes());
    dst[8..12].copy_from_slice(&frame_bytes_u32.to_le_bytes());
    dst[12..16].copy_from_slice(&frame_count_u32.to_le_bytes());
    dst[16..24].copy_from_slice(&(src.len() as u64).to_le_bytes());
    let check = header_check(&dst[..payload_start]);
    dst[24..32].copy_from_slice(&check.to_le_bytes());
    Some(dst.len())
}

/// Room for one compressed plane. Output that would not fit cannot pay anyway, so this is the
/// raw size: zstd runs out of room and reports "does not pay".
fn packed_capacity(frame_bytes: usize) -> usize {
    frame_bytes
}

fn header_check(header_and_table: &[u8]) -> u64 {
    let seed = xxh3(&header_and_table[..CHECKED_HEADER_BYTES], 0);
    xxh3(&header_and_table[HEADER_BYTES..], seed)
}

fn store_raw(frame: &[u8], dst: &mut Vec<u8>) -> u32 {
    dst.extend_from_slice(frame);
    MODE_RAW
}

fn encode_zstd(frame: &[u8], scratch: &mut Scratch, dst: &mut Vec<u8>) -> u32 {
    let Scratch {
        packed,
        text_compressor,
        ..
    } = scratch;
    if text_compressor.is_none() {
        *text_compressor = new_cctx(zstd_text_params());
    }
    let Some(zc) = text_compressor.as_mut() else {
        return store_raw(frame, dst);
    };
    // Output that does not fit in `limit` does not pay: zstd stops with dstSize_tooSmall.
    let limit = frame.len() - frame.len() / 32;
    match zc.compress2(&mut packed[..limit], frame) {
        Ok(packed_bytes) if pays(frame.len(), packed_bytes) => {
            dst.extend_from_slice(&packed[..packed_bytes]);
            MODE_ZSTD
        }
        _ => store_raw(frame, dst),
    }
}

fn encode_planes(frame: &[u8], codec: Codec, scratch: &mut Scratch, dst: &mut Vec<u8>) -> u32 {
    let plane_count = codec.plane_count();
    let elems = frame.len() / plane_count;
    if elems == 0 {
        return store_raw(frame, dst);
    }
    let body_bytes = elems * plane_count;
    let (body, tail) = frame.split_at(body_bytes);
    let Scratch {
        planes,
        packed,
        compressor,
        ..
    } = scratch;
    let planes = &mut planes[..body_bytes];
    match plane_count {
        2 => {
            let (p0, p1) = planes.split_at_mut(elems);
            split2(body, p0, p1);
        }
        _ => {
            let (p01, p23) = planes.split_at_mut(2 * elems);
            let (p0, p1) = p01.split_at_mut(elems);
            let (p2, p3) = p23.split_at_mut(elems);
            split4(body, p0, p1, p2, p3);
        }
    }
    if compressor.is_none() {
        *compressor = new_cctx(zstd_plane_params());
    }
    let Some(zc) = compressor.as_mut() else {
        return store_raw(frame, dst);
    };

    let start = dst.len();
    dst.resize(start + 4 * plane_count, 0);
    let mut mode = 0u32;
    for (p, plane) in planes.chunks_exact(elems).enumerate() {
        // Output that does not fit in `limit` does not pay: zstd stops with dstSize_tooSmall.
        let limit = elems - elems / 32;
        let stored = match zc.compress2(&mut packed[..limit], plane) {
            Ok(packed_bytes) if pays(elems, packed_bytes) => {
                mode |= 1 << p;
                dst.extend_from_slice(&packed[..packed_bytes]);
                packed_bytes
            }
            _ => {
                dst.extend_from_slice(plane);
                elems
            }
        };
        let at = start + 4 * p;
        dst[at..at + 4].copy_from_slice(&(stored as u32).to_le_bytes());
    }
    dst.extend_from_slice(tail);
    if mode == 0 || dst.len() - start >= frame.len() {
        dst.truncate(start);
        return store_raw(frame, dst);
    }
    mode
}

/// A validated header.
struct Header {
    codec: Codec,
    frame_bytes: usize,
    frame_count: usize,
    logical_len: usize,
    payload_start: usize,
    payload_bytes: usize,
}

fn parse_header(block: &[u8]) -> Result<Header, CodecError> {
    if block.len() < HEADER_BYTES {
        return Err(CodecError::Truncated {
            needed_bytes: HEADER_BYTES,
            block_bytes: block.len(),
        });
    }
    if block[0..4] != MAGIC {
        return Err(CodecError::BadHeader("magic"));
    }
    if block[4] != VERSION {
        return Err(CodecError::BadHeader("unknown format version"));
    }
    let codec = Codec::from_byte(block[5]).ok_or(CodecError::BadHeader("unknown codec"))?;
    if block[6] != 0 || block[7] != 0 {
        return Err(CodecError::BadHeader("unknown flags"));
    }
    let frame_bytes = le_u32(block, 8) as usize;
    if frame_bytes == 0 || !frame_bytes.is_multiple_of(4) || frame_bytes > MAX_FRAME_BYTES {
        return Err(CodecError::BadHeader("frame_bytes"));
    }
    let frame_count = le_u32(block, 12) as usize;
    let logical_len =
        usize::try_from(le_u64(block, 16)).map_err(|_| CodecError::BadHeader("logical_len"))?;
    if logical_len.div_ceil(frame_bytes) != frame_count {
        return Err(CodecError::BadHeader(
            "frame_count does not match logical_len",
        ));
    }
    let payload_start = HEADER_BYTES + frame_count * ENTRY_BYTES;
    if block.len() < payload_start {
        return Err(CodecError::Truncated {
            needed_bytes: payload_start,
            block_bytes: block.len(),
        });
    }
    if header_check(&block[..payload_start]) != le_u64(block, CHECKED_HEADER_BYTES) {
        return Err(CodecError::HeaderChecksum);
    }
    let payload_bytes = match frame_count {
        0 => 0,
        n => le_u32(block, HEADER_BYTES + (n - 1) * ENTRY_BYTES) as usize,
    };
    let needed_bytes = payload_start + payload_bytes;
    if block.len() < needed_bytes {
        return Err(CodecError::Truncated {
            needed_bytes,
            block_bytes: block.len(),
        });
    }
    Ok(Header {
        codec,
        frame_bytes,
        frame_count,
        logical_len,
        payload_start,
        payload_bytes,
    })
}

/// Logical (decoded) length of an encoded block.
pub fn logical_len(block: &[u8]) -> Result<usize, CodecError> {
    parse_header(block).map(|h| h.logical_len)
}

/// Encoded length of a block (a block may be followed by padding, e.g. in an arena slot).
pub fn block_len(block: &[u8]) -> Result<usize, CodecError> {
    parse_header(block).map(|h| h.payload_start + h.payload_bytes)
}

/// Decode logical bytes `[offset, offset + out.len())` of `block` into `out`.
///
/// Only the frames covering the range are decoded, each is verified against its checksum. A frame
/// the range covers entirely is decoded straight into `out`; a partly covered one goes through
/// `scratch` and the needed part is copied. On any error `out` is zeroed.
pub fn decode_range(
    block: &[u8],
    offset: usize,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<(), CodecError> {
    let result = decode_into(block, offset, out, scratch);
    if result.is_err() {
        out.fill(0);
    }
    result
}

fn decode_into(
    block: &[u8],
    offset: usize,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<(), CodecError> {
    let header = parse_header(block)?;
    let out_of_range = CodecError::OutOfRange {
        offset,
        len: out.len(),
        logical_len: header.logical_len,
    };
    let end = match offset.checked_add(out.len()) {
        Some(end) if end <= header.logical_len => end,
        _ => return Err(out_of_range),
    };
    if out.is_empty() {
        return Ok(());
    }
    scratch.reserve_decode(header.frame_bytes);
    let payload = &block[header.payload_start..header.payload_start + header.payload_bytes];

    let first = offset / header.frame_bytes;
    let last = (end - 1) / header.frame_bytes;
    assert!(
        last < header.frame_count,
        "range end {end} checked against logical_len"
    );
    for index in first..=last {
        let frame_start = index * header.frame_bytes;
        let frame_len = header.frame_bytes.min(header.logical_len - frame_start);
        let frame_end = frame_start + frame_len;
        let entry = HEADER_BYTES + index * ENTRY_BYTES;
        let payload_begin = match index {
            0 => 0,
            _ => le_u32(block, entry - ENTRY_BYTES) as usize,
        };
        let payload_end = le_u32(block, entry) as usize;
        if payload_begin > payload_end || payload_end > payload.len() {
            return Err(CodecError::CorruptFrame {
                frame: index,
                what: "payload offsets",
            });
        }
        let frame = Frame {
            index,
            mode: le_u32(block, entry + 4),
            check: le_u64(block, entry + 8),
            payload: &payload[payload_begin..payload_end],
        };

        let (lo, hi) = (offset.max(frame_start), end.min(frame_end));
        let part = &mut out[lo - offset..hi - offset];
        if lo == frame_start && hi == frame_end {
            decode_frame(header.codec, &frame, part, scratch)?;
        } else {
            let mut whole = std::mem::take(&mut scratch.frame);
            let decoded = decode_frame(header.codec, &frame, &mut whole[..frame_len], scratch);
            if decoded.is_ok() {
                part.copy_from_slice(&whole[lo - frame_start..hi - frame_start]);
            }
            scratch.frame = whole;
            decoded?;
        }
    }
    Ok(())
}

struct Frame<'a> {
    index: usize,
    mode: u32,
    check: u64,
    payload: &'a [u8],
}

/// Decode one frame into `dst` (exactly the frame's logical length) and verify it.
fn decode_frame(
    codec: Codec,
    frame: &Frame<'_>,
    dst: &mut [u8],
    scratch: &mut Scratch,
) -> Result<(), CodecError> {
    let corrupt = |what| CodecError::CorruptFrame {
        frame: frame.index,
        what,
    };
    if frame.mode == MODE_RAW {
        if frame.payload.len() != dst.len() {
            return Err(corrupt("raw frame length"));
        }
        dst.copy_from_slice(frame.payload);
    } else {
        match codec {
            Codec::Raw => return Err(corrupt("mode")),
            Codec::Zstd => {
                if frame.mode != MODE_ZSTD {
                    return Err(corrupt("mode"));
                }
                let zd = decompressor(&mut scratch.decompressor)?;
                match zd.decompress(dst, frame.payload) {
                    Ok(n) if n == dst.len() => {}
                    Ok(_) => return Err(corrupt("zstd length")),
                    Err(_) => return Err(corrupt("zstd data")),
                }
            }
            Codec::Planes16 | Codec::Planes32 => decode_planes(codec, frame, dst, scratch)?,
        }
    }
    if xxh3(dst, frame_seed(frame.index)) != frame.check {
        return Err(CodecError::FrameChecksum { frame: frame.index });
    }
    Ok(())
}

/// The scratch's decompression context, created on first use.
fn decompressor<'a>(
    slot: &'a mut Option<zstd::zstd_safe::DCtx<'static>>,
) -> Result<&'a mut zstd::zstd_safe::DCtx<'static>, CodecError> {
    if slot.is_none() {
        *slot = Some(zstd::zstd_safe::DCtx::try_create().ok_or(CodecError::ZstdContext)?);
    }
    slot.as_mut().ok_or(CodecError::ZstdContext)
}

fn decode_planes(
    codec: Codec,
    frame: &Frame<'_>,
    dst: &mut [u8],
    scratch: &mut Scratch,
) -> Result<(), CodecError> {
    let corrupt = |what| CodecError::CorruptFrame {
        frame: frame.index,
        what,
    };
    let plane_count = codec.plane_count();
    let elems = dst.len() / plane_count;
    if frame.mode >= 1 << plane_count || frame.mode == 0 || elems == 0 {
        return Err(corrupt("mode"));
    }
    let prefix_bytes = 4 * plane_count;
    if frame.payload.len() < prefix_bytes {
        return Err(corrupt("plane table"));
    }
    let (lengths, mut rest) = frame.payload.split_at(prefix_bytes);
    let Scratch {
        planes,
        decompressor: decompressor_slot,
        ..
    } = scratch;

    // Decode the compressed planes into scratch; raw planes are read from the payload in place.
    let mut segments: [&[u8]; 4] = [&[]; 4];
    for (p, segment) in segments.iter_mut().enumerate().take(plane_count) {
        let stored = le_u32(lengths, 4 * p) as usize;
        if stored > rest.len() {
            return Err(corrupt("plane length"));
        }
        let (data, after) = rest.split_at(stored);
        rest = after;
        if frame.mode & (1 << p) == 0 && stored != elems {
            return Err(corrupt("raw plane length"));
        }
        *segment = data;
    }
    let tail = rest;
    if tail.len() != dst.len() - elems * plane_count {
        return Err(corrupt("tail length"));
    }
    let zd = decompressor(decompressor_slot)?;
    let planes = &mut planes[..elems * plane_count];
    for (p, plane) in planes.chunks_exact_mut(elems).enumerate() {
        if frame.mode & (1 << p) != 0 {
            match zd.decompress(plane, segments[p]) {
                Ok(n) if n == elems => {}
                Ok(_) => return Err(corrupt("zstd plane length")),
                Err(_) => return Err(corrupt("zstd data")),
            }
        }
    }
    let planes: &[u8] = planes;
    let source = |p: usize| -> &[u8] {
        if frame.mode & (1 << p) != 0 {
            &planes[p * elems..(p + 1) * elems]
        } else {
            segments[p]
        }
    };
    let (body, dst_tail) = dst.split_at_mut(elems * plane_count);
    match plane_count {
        2 => interleave2(source(0), source(1), body),
        _ => interleave4(source(0), source(1), source(2), source(3), body),
    }
    dst_tail.copy_from_slice(tail);
    Ok(())
}
