//! Property tests of the chunk codec: every codec must give back exactly what it was given, for
//! any sub-range, and a damaged block must fail loudly (an `Err`), never yield wrong bytes.
//!
//! Inputs are generated from (kind, length, seed) rather than as raw byte vectors, so that large
//! inputs stay cheap and shrinking still works on the length and seed.

use nitro_uring::codec::{
    Codec, CodecError, DtypeHint, Scratch, block_len, choose, decode_range, encode_chunk,
    logical_len,
};
use proptest::prelude::*;

const FRAME_SIZES: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];
/// The block layout documented in `codec/mod.rs` (used to aim corruption at known regions).
const HEADER_BYTES: usize = 32;
const ENTRY_BYTES: usize = 16;
const MODE_RAW: u32 = 1 << 31;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Uniform random bytes: incompressible.
    Random,
    Zeros,
    /// A short random pattern repeated.
    Pattern(usize),
    /// BF16-like weights (16-bit, skewed high byte): the 16-bit plane split compresses.
    Bf16,
    /// F32-like weights: the 32-bit plane split compresses.
    F32,
    /// Text-like bytes.
    Text,
    /// Half weights, half random: some frames encoded, some stored raw.
    Mixed,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Roughly Gaussian, like trained weights.
    fn weight(&mut self) -> f32 {
        let s: f32 = (0..4)
            .map(|_| (self.next() % 10_000) as f32 / 10_000.0)
            .sum::<f32>()
            - 2.0;
        s * 0.02
    }
}

fn make_input(kind: Kind, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    match kind {
        Kind::Random => out.extend((0..len).map(|_| rng.next() as u8)),
        Kind::Zeros => out.resize(len, 0),
        Kind::Pattern(period) => {
            let pattern: Vec<u8> = (0..period.max(1)).map(|_| rng.next() as u8).collect();
            out.extend(pattern.iter().cycle().take(len));
        }
        Kind::Bf16 => {
            while out.len() < len {
                out.extend_from_slice(&((rng.weight().to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        Kind::F32 => {
            while out.len() < len {
                out.extend_from_slice(&rng.weight().to_le_bytes());
            }
        }
        Kind::Text => {
            let words = [
                "token",
                "\"vocab\"",
                ": ",
                "weight",
                ",\n",
                "the",
                "Ġmodel",
                "{",
                "}",
                "12",
            ];
            while out.len() < len {
                out.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
            }
        }
        Kind::Mixed => {
            let half = len / 2;
            out = make_input(Kind::Bf16, half, seed);
            out.extend(make_input(Kind::Random, len - half, seed ^ 1));
        }
    }
    out.truncate(len);
    out
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Random),
        Just(Kind::Zeros),
        (1usize..40).prop_map(Kind::Pattern),
        Just(Kind::Bf16),
        Just(Kind::F32),
        Just(Kind::Text),
        Just(Kind::Mixed),
    ]
}

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![
        Just(Codec::Raw),
        Just(Codec::Zstd),
        Just(Codec::Planes16),
        Just(Codec::Planes32)
    ]
}

/// Lengths around the interesting boundaries: tiny, odd, just off a frame, multi-frame, a chunk.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..80,
        (1usize..=17).prop_flat_map(|k| (k * 4096 - 3)..(k * 4096 + 4)),
        (64usize << 10) - 5..(64 << 10) + 6,
        1usize..300_000,
        (1usize << 20) - 3..=(1 << 20),
    ]
}

/// Encode, always producing a block (no minimum saving).
fn encode(src: &[u8], codec: Codec, frame_bytes: usize, scratch: &mut Scratch) -> Vec<u8> {
    let mut block = Vec::new();
    let n = encode_chunk(
        src,
        codec,
        frame_bytes,
        f64::NEG_INFINITY,
        scratch,
        &mut block,
    )
    .expect("NEG_INFINITY min_saving always encodes");
    assert_eq!(n, block.len());
    block
}

fn decode_all(block: &[u8], len: usize, scratch: &mut Scratch) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0xA5; len];
    decode_range(block, 0, &mut out, scratch).map(|()| out)
}

/// The frames of a block as (payload range in the block, mode), from the documented layout.
fn frames(block: &[u8]) -> Vec<(std::ops::Range<usize>, u32)> {
    let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().unwrap());
    let count = u32_at(12) as usize;
    let payload_start = HEADER_BYTES + count * ENTRY_BYTES;
    let mut begin = 0;
    (0..count)
        .map(|i| {
            let entry = HEADER_BYTES + i * ENTRY_BYTES;
            let end = u32_at(entry) as usize;
            let frame = (
                payload_start + begin..payload_start + end,
                u32_at(entry + 4),
            );
            begin = end;
            frame
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whole-block and sub-range round trips, for every codec and frame size.
    #[test]
    fn round_trip_and_sub_ranges(
        kind in kind(),
        len in length(),
        seed in any::<u64>(),
        codec in codec(),
        frame_pick in 0usize..3,
        ranges in proptest::collection::vec((any::<u32>(), 0usize..200_000), 1..8),
    ) {
        let frame_bytes = FRAME_SIZES[frame_pick];
        let src = make_input(kind, len, seed);
        let mut scratch = Scratch::new(frame_bytes);
        let block = encode(&src, codec, frame_bytes, &mut scratch);
        prop_assert_eq!(logical_len(&block), Ok(len));
        prop_assert_eq!(block_len(&block), Ok(block.len()));
        let whole = decode_all(&block, len, &mut scratch);
        prop_assert!(whole.as_deref() == Ok(&src[..]), "whole-block decode differs: {:?}", whole.err());

        // Padding after the block (e.g. an arena slot) is allowed.
        let mut padded = block.clone();
        padded.extend_from_slice(&[0xEE; 37]);
        prop_assert!(decode_all(&padded, len, &mut scratch).as_deref() == Ok(&src[..]));

        for (start, want) in ranges {
            let offset = if len == 0 { 0 } else { start as usize % (len + 1) };
            let take = want.min(len - offset);
            let mut out = vec![0x5A; take];
            decode_range(&block, offset, &mut out, &mut scratch)
                .map_err(|e| TestCaseError::fail(format!("range {offset}+{take}: {e}")))?;
            prop_assert!(out == src[offset..offset + take], "range {}+{} differs", offset, take);
        }
    }

    /// Any single damaged byte of a block (header, table, checksums or payload) must make the
    /// decode of the whole range fail or, where the codec ignores that byte, still give back exactly
    /// the original bytes. Never wrong bytes, never a panic. Damage outside compressed payload (the
    /// header, the frame table with its checksums, raw frames) must always be an error.
    #[test]
    fn damage_is_detected(
        kind in kind(),
        len in 1usize..200_000,
        seed in any::<u64>(),
        codec in codec(),
        frame_pick in 0usize..2,
        flips in proptest::collection::vec((any::<u32>(), 1u8..=255), 1..6),
    ) {
        let frame_bytes = FRAME_SIZES[frame_pick];
        let src = make_input(kind, len, seed);
        let mut scratch = Scratch::new(frame_bytes);
        let block = encode(&src, codec, frame_bytes, &mut scratch);
        let frames = frames(&block);
        for (pos, xor) in flips {
            let pos = pos as usize % block.len();
            let mut bad = block.clone();
            bad[pos] ^= xor;
            let in_compressed_payload =
                frames.iter().any(|(range, mode)| range.contains(&pos) && *mode != MODE_RAW);
            match decode_all(&bad, len, &mut scratch) {
                Err(_) => {}
                Ok(out) => {
                    prop_assert!(out == src, "byte {} ^ {:#x}: decoded to WRONG bytes", pos, xor);
                    prop_assert!(
                        in_compressed_payload,
                        "byte {} ^ {:#x} outside compressed payload went unnoticed", pos, xor
                    );
                }
            }
            // A range that does not touch the damaged frame may still be served, correctly.
            let mut out = vec![0u8; len.min(4096)];
            if decode_range(&bad, 0, &mut out, &mut scratch).is_ok() {
                prop_assert!(out[..] == src[..out.len()]);
            }
        }
    }

    /// Every truncation of a block is an error (or, for the full length, the right bytes).
    #[test]
    fn truncation_is_an_error(
        kind in kind(),
        len in 0usize..100_000,
        seed in any::<u64>(),
        codec in codec(),
        cuts in proptest::collection::vec(any::<u32>(), 1..16),
    ) {
        let src = make_input(kind, len, seed);
        let mut scratch = Scratch::new(4096);
        let block = encode(&src, codec, 4096, &mut scratch);
        for cut in cuts {
            let cut = cut as usize % block.len();
            let result = decode_all(&block[..cut], len, &mut scratch);
            prop_assert!(result.is_err(), "block cut to {} of {} bytes decoded", cut, block.len());
        }
    }

    /// `choose` then `encode_chunk` with the engine's policy never loses data, and a `None` means
    /// the saving was really not there.
    #[test]
    fn auto_policy_round_trips(kind in kind(), len in length(), seed in any::<u64>()) {
        let src = make_input(kind, len, seed);
        let mut scratch = Scratch::new(64 << 10);
        let mut block = Vec::new();
        for hint in [DtypeHint::Unknown, DtypeHint::Bf16, DtypeHint::F32, DtypeHint::Text] {
            let codec = choose(&src, hint);
            match encode_chunk(&src, codec, 64 << 10, 0.10, &mut scratch, &mut block) {
                Some(n) => {
                    prop_assert_eq!(n, block.len());
                    prop_assert!(n as f64 <= 0.9 * len as f64);
                    prop_assert!(decode_all(&block, len, &mut scratch).as_deref() == Ok(&src[..]));
                }
                None => prop_assert!(block.is_empty(), "dst must be cleared on None"),
            }
        }
    }
}

#[test]
fn incompressible_input_is_refused_and_compressible_accepted() {
    let mut scratch = Scratch::new(64 << 10);
    let mut block = vec![1, 2, 3];
    let noise = make_input(Kind::Random, 1 << 20, 7);
    for codec in [Codec::Raw, Codec::Zstd, Codec::Planes16, Codec::Planes32] {
        assert_eq!(
            encode_chunk(&noise, codec, 64 << 10, 0.10, &mut scratch, &mut block),
            None
        );
        assert!(block.is_empty());
    }
    // Raw never saves: refused at any saving >= 0, stored with a negative one.
    let zeros = vec![0u8; 1 << 20];
    assert_eq!(
        encode_chunk(&zeros, Codec::Raw, 64 << 10, 0.0, &mut scratch, &mut block),
        None
    );
    assert!(
        encode_chunk(
            &zeros,
            Codec::Raw,
            64 << 10,
            -0.01,
            &mut scratch,
            &mut block
        )
        .is_some()
    );
    let n = encode_chunk(
        &zeros,
        Codec::Zstd,
        64 << 10,
        0.10,
        &mut scratch,
        &mut block,
    )
    .unwrap();
    assert!(n < 16 << 10, "zeros: {n} bytes");
    let bf16 = make_input(Kind::Bf16, 1 << 20, 3);
    let n = encode_chunk(
        &bf16,
        Codec::Planes16,
        64 << 10,
        0.10,
        &mut scratch,
        &mut block,
    )
    .unwrap();
    assert!(n < (1 << 20) * 8 / 10, "bf16-like: {n} bytes");
}

#[test]
fn out_of_range_and_garbage_are_errors_and_zero_the_output() {
    let src = make_input(Kind::F32, 100_000, 9);
    let mut scratch = Scratch::new(4096);
    let block = encode(&src, Codec::Planes32, 4096, &mut scratch);
    let mut out = vec![0xFFu8; 10];
    assert!(matches!(
        decode_range(&block, 99_995, &mut out, &mut scratch),
        Err(CodecError::OutOfRange { .. })
    ));
    assert!(out.iter().all(|&b| b == 0), "output is zeroed on error");
    assert!(decode_range(&block, usize::MAX, &mut out, &mut scratch).is_err());
    let mut empty = [0u8; 0];
    assert!(decode_range(&block, 100_000, &mut empty, &mut scratch).is_ok());
    assert!(decode_range(&block, 100_001, &mut empty, &mut scratch).is_err());
    for garbage in [
        &[][..],
        &[0u8; 31][..],
        &[0xFF; 64][..],
        b"NUc1 but not really a block header",
    ] {
        assert!(logical_len(garbage).is_err());
        assert!(decode_range(garbage, 0, &mut out, &mut scratch).is_err());
    }
}

#[test]
fn one_scratch_serves_blocks_of_any_frame_size_and_codec() {
    let mut small = Scratch::new(4096);
    let src = make_input(Kind::Bf16, 3 << 20, 11);
    for frame_bytes in [4096, 1 << 20, 64 << 10, 4 << 20, 4096] {
        for codec in [Codec::Planes16, Codec::Zstd, Codec::Planes32, Codec::Raw] {
            let block = encode(&src, codec, frame_bytes, &mut small);
            assert_eq!(
                decode_all(&block, src.len(), &mut small).as_deref(),
                Ok(&src[..])
            );
        }
    }
}

#[test]
fn exhaustive_single_byte_damage_on_small_blocks() {
    // Every byte of a few small blocks, three different flips each: the statistics behind the
    // proptest above, without relying on random positions.
    let mut scratch = Scratch::new(1024);
    let mut benign = 0usize;
    let mut total = 0usize;
    for (kind, codec) in [
        (Kind::Bf16, Codec::Planes16),
        (Kind::F32, Codec::Planes32),
        (Kind::Text, Codec::Zstd),
        (Kind::Pattern(7), Codec::Zstd),
        (Kind::Zeros, Codec::Planes16),
        (Kind::Random, Codec::Raw),
    ] {
        let src = make_input(kind, 3000, 5);
        let block = encode(&src, codec, 1024, &mut scratch);
        for pos in 0..block.len() {
            for xor in [0x01u8, 0x80, 0xFF] {
                let mut bad = block.clone();
                bad[pos] ^= xor;
                total += 1;
                if let Ok(out) = decode_all(&bad, src.len(), &mut scratch) {
                    assert_eq!(
                        out, src,
                        "{kind:?}/{codec:?}: byte {pos} ^ {xor:#x} gave wrong bytes"
                    );
                    benign += 1;
                }
            }
        }
    }
    eprintln!(
        "single-byte damage: {benign} of {total} decoded to the original bytes, the rest were errors"
    );
    assert!(
        benign * 100 < total,
        "{benign} of {total} flips went unnoticed"
    );
}

#[test]
fn scratch_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Scratch>();
}
