//! Chunk compression for the RAM cache.
//!
//! Why compress at all: the cache holds model weights in RAM, and every byte saved is a byte of
//! another model (or of the same model at a longer tail) that stays resident. Why this shape:
//!
//! * Weights are not text. LZ-style codecs find no repeats in them (LZ4 on weights: 1.00×). What
//!   they do have is a skewed exponent byte, which entropy-codes well once it is separated from
//!   the mantissa bytes ([`Codec::Planes16`] / [`Codec::Planes32`], after ZipNN). Text, JSON and
//!   tokenizer files are the opposite: repeats plus a skewed byte distribution, so zstd on the
//!   bytes as they are ([`Codec::Zstd`]).
//! * Quantized blocks (Q4_K, Q8_0, …) are already near their entropy: they are kept raw, and the
//!   decision must be nearly free ([`choose`] gives up on a tiny sample), because most bytes of a
//!   GGUF file take that path.
//! * Reads are small (FUSE asks for 4 KiB–128 KiB) and random, while chunks are large (1 MiB), so
//!   a chunk is cut into independent frames (64 KiB by default): a read decodes only the frames
//!   it touches.
//! * A cache must never return wrong bytes. Each frame carries a checksum of its *decoded* bytes,
//!   verified on every decode, so codec bugs, bad RAM or a stray write show up as an error (EIO)
//!   rather than as silently corrupted weights; the header and frame table carry their own check.
//!
//! Block layout (all integers little-endian):
//!
//! ```text
//! 0   magic  "NUc1"
//! 4   u8     format version (2; version 1 had LZ4 as codec 1 and XXH64 checks)
//! 5   u8     codec (0 raw, 1 zstd, 2 split16+zstd, 3 split32+zstd)
//! 6   u16    flags, must be 0
//! 8   u32    frame_bytes (multiple of 4)
//! 12  u32    frame_count = ceil(logical_len / frame_bytes)
//! 16  u64    logical_len
//! 24  u64    header check: xxh3(table, seed = xxh3(bytes 0..24))
//! 32  table  frame_count × { u32 payload_end, u32 mode, u64 xxh3(decoded frame, seed = index) }
//! ..  payload: frame i is payload[end(i-1) .. end(i)]
//! ```
//!
//! Frame `mode`: bit 31 = stored raw. Otherwise for zstd, 1 = one zstd frame; for the plane codecs,
//! bit `p` = plane `p` is zstd-compressed (else stored raw), and the payload is `K` u32 stored
//! plane lengths, the `K` plane segments, then the `len % K` tail bytes raw.

mod block;
mod checksum;
mod choose;
mod planes;

pub mod formats;

pub use block::{block_len, decode_range, encode_chunk, logical_len};
pub use choose::{SampleStats, choose, sample_stats};

use std::fmt;

/// Frame size used by the engine unless configured otherwise: small enough that a 4 KiB read
/// decodes little extra, large enough that zstd's per-frame table overhead stays under 0.5%.
pub const DEFAULT_FRAME_BYTES: usize = 64 << 10;
/// Minimum saving worth the decode cost: below it a chunk is cached raw.
pub const DEFAULT_MIN_SAVING: f64 = 0.10;
/// zstd level of [`Codec::Zstd`] (text). Measured in 64 KiB frames on the Whisper/MiniLM
/// vocabulary lists (README, "Compression"; 2026-11-27, 2-core machine under load): level 1
/// stores 0.53–0.54 of raw at 0.23–0.34 GB/s per core (the hand-written LZ4 HC encoder it
/// replaced: 0.61–0.65 at 0.03–0.08 GB/s), level 2 0.50–0.51 at 0.7–0.87× level 1's speed,
/// level 3 0.50 at ≈0.6×, negative levels 0.67–0.89.
pub const TEXT_ZSTD_LEVEL: i32 = 1;
/// Upper bound on `frame_bytes` (bounds the scratch memory a corrupt header can make us use).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// What the bytes of a chunk are believed to be, from the file's format header or name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeHint {
    Unknown,
    Bf16,
    F16,
    F32,
    Quantized,
    Text,
}

impl DtypeHint {
    /// Stored/raw a chunk of this kind is expected to reach in the compressed tier, before any of
    /// it was compressed: what the store weighs when a loop of files fits the pool only
    /// compressed (`engine::store_fill`). From `nitro-uring bench codec` on the real models
    /// (README, "Compression"), rounded up: BF16 0.672, F32 0.822, FP16 0.837, text 0.32–0.54
    /// (zstd 1). Unknown and quantized bytes are assumed not to compress.
    pub fn expected_ratio(self) -> f64 {
        match self {
            DtypeHint::Bf16 => 0.70,
            DtypeHint::F32 => 0.84,
            DtypeHint::F16 => 0.85,
            DtypeHint::Text => 0.55,
            DtypeHint::Unknown | DtypeHint::Quantized => 1.0,
        }
    }
}

/// How one chunk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    Raw,
    /// One zstd frame per frame (level [`TEXT_ZSTD_LEVEL`]): text, JSON, tokenizers, runs.
    Zstd,
    /// 16-bit elements split into 2 byte planes, zstd (level 1) on each plane that pays.
    Planes16,
    /// 32-bit elements split into 4 byte planes, zstd (level 1) on each plane that pays.
    Planes32,
}

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::Raw, Codec::Zstd, Codec::Planes16, Codec::Planes32];

    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::Planes16 => "split16+zstd",
            Codec::Planes32 => "split32+zstd",
        }
    }

    /// Bytes per element for the plane codecs (1 for the others).
    pub fn plane_count(self) -> usize {
        match self {
            Codec::Raw | Codec::Zstd => 1,
            Codec::Planes16 => 2,
            Codec::Planes32 => 4,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
            Codec::Planes16 => 2,
            Codec::Planes32 => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.to_byte() == byte)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a block could not be decoded. Any of these means "do not serve these bytes".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The block is shorter than its header or frame table say it is.
    Truncated {
        needed_bytes: usize,
        block_bytes: usize,
    },
    /// Magic, version, codec or size fields are invalid.
    BadHeader(&'static str),
    /// The header or frame table does not match its checksum.
    HeaderChecksum,
    /// The requested range is not inside the block's logical length.
    OutOfRange {
        offset: usize,
        len: usize,
        logical_len: usize,
    },
    /// A frame's payload could not be decoded.
    CorruptFrame { frame: usize, what: &'static str },
    /// A frame decoded, but not to the bytes that were encoded.
    FrameChecksum { frame: usize },
    /// zstd could not allocate its decoding context.
    ZstdContext,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated {
                needed_bytes,
                block_bytes,
            } => {
                write!(
                    f,
                    "encoded block truncated: needs {needed_bytes} bytes, has {block_bytes}"
                )
            }
            CodecError::BadHeader(what) => write!(f, "bad encoded block header: {what}"),
            CodecError::HeaderChecksum => {
                f.write_str("encoded block header/table checksum mismatch")
            }
            CodecError::OutOfRange {
                offset,
                len,
                logical_len,
            } => write!(
                f,
                "range {offset}+{len} is outside the block's {logical_len} logical bytes"
            ),
            CodecError::CorruptFrame { frame, what } => {
                write!(f, "frame {frame} is corrupt: {what}")
            }
            CodecError::FrameChecksum { frame } => {
                write!(f, "frame {frame} decoded to bytes that fail its checksum")
            }
            CodecError::ZstdContext => f.write_str("could not create a zstd context"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Per-thread buffers and codec contexts, so that encode and decode stop allocating once warm.
///
/// Decode needs `frame_bytes` for a partially read frame and `frame_bytes` for decoded planes;
/// encode additionally needs a compressed-plane buffer and a zstd compression context, which are
/// created on first encode only (reader threads never pay for them).
pub struct Scratch {
    /// A whole decoded frame when the caller wants only part of it.
    frame: Vec<u8>,
    /// Planes: split planes (encode) or zstd-decoded planes (decode).
    planes: Vec<u8>,
    /// Encode only: compressed output of one plane.
    packed: Vec<u8>,
    /// zstd contexts used directly (not `zstd::bulk`): their error path returns a code instead
    /// of building an `io::Error`, and "does not fit" is the common, expected outcome for planes
    /// that do not compress.
    /// Encode only: plane context (plane parameters) and text context (text level).
    compressor: Option<zstd::zstd_safe::CCtx<'static>>,
    text_compressor: Option<zstd::zstd_safe::CCtx<'static>>,
    decompressor: Option<zstd::zstd_safe::DCtx<'static>>,
}

impl Scratch {
    pub fn new(frame_bytes: usize) -> Self {
        assert!(
            frame_bytes <= MAX_FRAME_BYTES,
            "frame_bytes {frame_bytes} exceeds MAX_FRAME_BYTES"
        );
        Scratch {
            frame: vec![0; frame_bytes],
            planes: vec![0; frame_bytes],
            packed: Vec::new(),
            compressor: None,
            text_compressor: None,
            decompressor: None,
        }
    }

    /// Grow the decode buffers to hold one `frame_bytes` frame (a no-op once warm).
    fn reserve_decode(&mut self, frame_bytes: usize) {
        if self.frame.len() < frame_bytes {
            self.frame.resize(frame_bytes, 0);
        }
        if self.planes.len() < frame_bytes {
            self.planes.resize(frame_bytes, 0);
        }
    }
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scratch")
            .field("frame_bytes", &self.frame.len())
            .field("packed_bytes", &self.packed.len())
            .field("has_compressor", &self.compressor.is_some())
            .field("has_text_compressor", &self.text_compressor.is_some())
            .field("has_decompressor", &self.decompressor.is_some())
            .finish()
    }
}
