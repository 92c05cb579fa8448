//! Codec choice from a sample.
//!
//! Most bytes of a quantized GGUF file are incompressible, and choosing runs on every chunk that
//! is filled, so the incompressible case must cost next to nothing: a 512-byte probe (four byte
//! histograms, one per position mod 4) rejects near-uniform data in ~0.2 µs, under 1% of copying
//! the 1 MiB chunk. Only chunks that look skewed get the full 2 KiB sample and entropy estimates
//! (~2.5 µs), and those are about to be compressed, which costs ~1000 µs per MiB.
//!
//! The estimate is the order-0 entropy of each byte lane (byte `p` of 16/32-bit elements): that is
//! what zstd's Huffman stage reaches on a split plane (the exponent plane has no long repeats),
//! so it predicts the plane codecs' ratio within ~0.01 on real FP16/F32 weights. Plain zstd on
//! the unsplit bytes ([`Codec::Zstd`]) gains from repeats, which order-0 statistics do not see,
//! so it is chosen for the shapes where repeats dominate: text, strings in a binary container
//! (flat lanes, text and zero bytes only) and long runs of one byte value.

use super::{Codec, DtypeHint};
use std::sync::OnceLock;

/// Probe: one window; bytes per window of the full sample.
const WINDOW_BYTES: usize = 512;
/// Windows in the full sample (spread over the chunk).
const WINDOWS: usize = 4;
const SAMPLE_BYTES: usize = WINDOW_BYTES * WINDOWS;
/// Lanes = byte position mod 4.
const LANES: usize = 4;

/// Probe rejection: in 128 draws, a lane of uniform bytes shows ~101 distinct values (σ ≈ 4),
/// int8 quants ~90–95; a float exponent lane shows 10–60. If every lane has at least this many
/// distinct values, nothing here will save 10%.
const PROBE_DISTINCT_RAW: u32 = 80;
/// Predicted stored/raw ratio above which an unhinted chunk is kept raw (the caller's saving
/// threshold is typically 0.90; the margin absorbs sampling noise).
const ACCEPT_RATIO_UNHINTED: f64 = 0.88;
/// Same, when the file's header says the chunk holds floats: trust it a little more.
const ACCEPT_RATIO_HINTED: f64 = 0.93;
/// Planes32 must beat Planes16 by this much to be chosen (two planes decode faster than four).
const PLANES32_MARGIN: f64 = 0.02;
/// One byte value covering this share of the sample means runs: unsplit zstd codes those as long
/// matches, with no plane split/interleave.
const RUN_SHARE: f64 = 0.75;
/// Text: this share of printable ASCII / whitespace / UTF-8 bytes, and no NUL.
const TEXT_SHARE: f64 = 0.97;
/// Strings in a binary container (GGUF vocabularies: text behind zero-padded u64 lengths):
/// this share of text and zero bytes (the rest: length bytes; int8 weights reach ~0.65)...
const STRINGS_SHARE: f64 = 0.9;
/// ...with byte lanes this close in entropy (bits): no element structure for planes to use.
/// Float lanes differ by 2–6 bits (exponent vs mantissa bytes).
const FLAT_LANES_BITS: f64 = 1.0;
/// Bits per byte added to each lane estimate for zstd's tables and frame overhead.
const LANE_OVERHEAD_BITS: f64 = 0.06;

/// Pick a codec for `chunk`.
pub fn choose(chunk: &[u8], hint: DtypeHint) -> Codec {
    match hint {
        DtypeHint::Quantized => return Codec::Raw,
        DtypeHint::Text => return Codec::Zstd,
        DtypeHint::Unknown | DtypeHint::Bf16 | DtypeHint::F16 | DtypeHint::F32 => {}
    }
    if chunk.len() < 64 {
        return Codec::Raw;
    }
    let windows = window_starts(chunk.len());
    // The probe is a middle window: chunk edges are where tensors (and dtypes) change.
    let probe = WINDOWS / 2;
    let mut lanes = [[0u16; 256]; LANES];
    add_to_histograms(&mut lanes, window(chunk, windows[probe]));
    let distinct = distinct_per_lane(&lanes);
    if distinct.iter().all(|&d| d >= PROBE_DISTINCT_RAW) {
        return Codec::Raw;
    }
    let mut sample = Sample::default();
    sample.add_window(&lanes, distinct);
    for (i, &start) in windows.iter().enumerate() {
        if i != probe {
            lanes = [[0u16; 256]; LANES];
            add_to_histograms(&mut lanes, window(chunk, start));
            sample.add_window(&lanes, distinct_per_lane(&lanes));
        }
    }
    decide(&sample.analyze(), hint)
}

/// Histograms of the sample, each window's lanes rotated so that its most skewed lane lands in
/// the same slot. Tensors in one chunk need not share an alignment (CTranslate2 packs tensors at
/// odd offsets, so an FP16 exponent byte is sometimes even, sometimes odd), but each frame is
/// split on its own, so what predicts the ratio is each window's skew, wherever it sits.
struct Sample {
    /// Even/odd byte planes (16-bit split); `[1]` is the more skewed one.
    pairs: [[u16; 256]; 2],
    /// Byte `p` of 32-bit elements; `[3]` is the most skewed one.
    lanes: [[u16; 256]; LANES],
    /// All bytes.
    total: [u16; 256],
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            pairs: [[0; 256]; 2],
            lanes: [[0; 256]; LANES],
            total: [0; 256],
        }
    }
}

fn add_lane(acc: &mut [u16; 256], lane: &[u16; 256]) {
    for (a, &c) in acc.iter_mut().zip(lane) {
        *a += c;
    }
}

impl Sample {
    fn add_window(&mut self, w: &[[u16; 256]; LANES], distinct: [u32; LANES]) {
        let odd_skewed = distinct[1] + distinct[3] <= distinct[0] + distinct[2];
        let (flat, skewed) = if odd_skewed {
            ([0, 2], [1, 3])
        } else {
            ([1, 3], [0, 2])
        };
        for p in flat {
            add_lane(&mut self.pairs[0], &w[p]);
        }
        for p in skewed {
            add_lane(&mut self.pairs[1], &w[p]);
        }
        let most_skewed = (0..LANES).min_by_key(|&p| distinct[p]).unwrap_or(LANES - 1);
        let rotate = LANES - 1 - most_skewed;
        for (p, lane) in w.iter().enumerate() {
            add_lane(&mut self.lanes[(p + rotate) % LANES], lane);
            add_lane(&mut self.total, lane);
        }
    }

    fn analyze(&self) -> SampleStats {
        let lane_bits = std::array::from_fn(|p| entropy_bits(&self.lanes[p]));
        let pair_bits = [entropy_bits(&self.pairs[0]), entropy_bits(&self.pairs[1])];
        let sample_bytes: u32 = self.total.iter().map(|&c| u32::from(c)).sum();
        let n = f64::from(sample_bytes.max(1));
        let top = self.total.iter().copied().max().unwrap_or(0);
        let texty: u32 = self
            .total
            .iter()
            .enumerate()
            .filter(|&(b, _)| matches!(b, 0x09 | 0x0A | 0x0D | 0x20..=0x7E | 0x80..=0xFF))
            .map(|(_, &c)| u32::from(c))
            .sum();
        SampleStats {
            lane_bits,
            pair_bits,
            top_share: f64::from(top) / n,
            text_share: f64::from(texty) / n,
            zero_share: f64::from(self.total[0]) / n,
        }
    }
}

/// Start offsets of the sample windows: one in the middle of each quarter, 4-byte aligned so that
/// lane `p` holds byte `p` of every element.
fn window_starts(chunk_len: usize) -> [usize; WINDOWS] {
    let part = chunk_len / WINDOWS;
    std::array::from_fn(|i| {
        let centre = i * part + part / 2;
        centre.saturating_sub(WINDOW_BYTES / 2) & !3
    })
}

fn window(chunk: &[u8], start: usize) -> &[u8] {
    let end = (start + WINDOW_BYTES).min(chunk.len());
    let whole = (end - start) & !3;
    &chunk[start..start + whole]
}

fn add_to_histograms(hist: &mut [[u16; 256]; LANES], bytes: &[u8]) {
    let [h0, h1, h2, h3] = hist;
    for word in bytes.chunks_exact(4) {
        h0[usize::from(word[0])] += 1;
        h1[usize::from(word[1])] += 1;
        h2[usize::from(word[2])] += 1;
        h3[usize::from(word[3])] += 1;
    }
}

fn distinct_per_lane(lanes: &[[u16; 256]; LANES]) -> [u32; LANES] {
    std::array::from_fn(|p| lanes[p].iter().map(|&c| u32::from(c != 0)).sum())
}

/// Sample statistics behind a decision (exposed for the benchmark and tests).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleStats {
    /// Entropy (bits per byte, bias-corrected) of the four byte lanes of 32-bit elements, each
    /// window rotated so that its most skewed lane is `[3]`.
    pub lane_bits: [f64; LANES],
    /// Entropy of the two byte planes of 16-bit elements, the more skewed one as `[1]`.
    pub pair_bits: [f64; 2],
    /// Share of the sample taken by its most frequent byte value.
    pub top_share: f64,
    /// Share of printable ASCII, whitespace and UTF-8 (≥ 0x80) bytes.
    pub text_share: f64,
    /// Share of zero bytes.
    pub zero_share: f64,
}

impl SampleStats {
    /// Text, or strings in a binary container: repeats that unsplit zstd finds and order-0
    /// statistics miss (GGUF vocabulary chunks, measured with the earlier LZ4 HC text codec:
    /// 0.44–0.48 of raw, split planes + zstd 0.55–0.61).
    pub fn looks_like_strings(&self) -> bool {
        if self.zero_share == 0.0 && self.text_share >= TEXT_SHARE {
            return true;
        }
        let (lo, hi) = self
            .lane_bits
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &b| (lo.min(b), hi.max(b)));
        self.text_share + self.zero_share >= STRINGS_SHARE && hi - lo <= FLAT_LANES_BITS
    }

    /// Predicted stored/raw ratio of [`Codec::Planes16`].
    pub fn planes16_ratio(&self) -> f64 {
        self.pair_bits.iter().map(|&b| plane_cost(b)).sum::<f64>() / 2.0
    }

    /// Predicted stored/raw ratio of [`Codec::Planes32`].
    pub fn planes32_ratio(&self) -> f64 {
        self.lane_bits.iter().map(|&b| plane_cost(b)).sum::<f64>() / 4.0
    }
}

/// Stored/raw ratio of one plane with `bits` of entropy per byte (raw when it would not pay).
fn plane_cost(bits: f64) -> f64 {
    ((bits + LANE_OVERHEAD_BITS) / 8.0).min(1.0)
}

/// Full statistics of `chunk`'s sample, without the early probe exit.
pub fn sample_stats(chunk: &[u8]) -> SampleStats {
    let mut sample = Sample::default();
    for start in window_starts(chunk.len()) {
        let mut lanes = [[0u16; 256]; LANES];
        add_to_histograms(&mut lanes, window(chunk, start));
        sample.add_window(&lanes, distinct_per_lane(&lanes));
    }
    sample.analyze()
}

/// `c · log2(c)` for every count a histogram of the sample can hold (a 16-bit plane sees half
/// the sample).
fn nlog2n_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=SAMPLE_BYTES)
            .map(|c| {
                if c == 0 {
                    0.0
                } else {
                    (c as f64 * (c as f64).log2()) as f32
                }
            })
            .collect()
    })
}

/// Shannon entropy (bits per symbol) of a histogram, with the Miller–Madow correction for the
/// downward bias of small samples (`(distinct − 1) / (2 n ln 2)` bits).
fn entropy_bits(hist: &[u16; 256]) -> f64 {
    let table = nlog2n_table();
    // Eight partial sums: one running sum would serialize on float-add latency.
    let (mut sums, mut n, mut seen) = ([0f32; 8], 0u32, 0u32);
    for bins in hist.chunks_exact(8) {
        for (sum, &c) in sums.iter_mut().zip(bins) {
            *sum += table[usize::from(c).min(table.len() - 1)];
            n += u32::from(c);
            seen += u32::from(c != 0);
        }
    }
    if n == 0 {
        return 8.0;
    }
    let sum: f64 = sums.iter().map(|&s| f64::from(s)).sum();
    let n = f64::from(n);
    let plug_in = n.log2() - sum / n;
    let correction = f64::from(seen.saturating_sub(1)) / (2.0 * n * std::f64::consts::LN_2);
    (plug_in + correction).min(8.0)
}

fn decide(stats: &SampleStats, hint: DtypeHint) -> Codec {
    if stats.top_share >= RUN_SHARE {
        return Codec::Zstd;
    }
    let r16 = stats.planes16_ratio();
    let r32 = stats.planes32_ratio();
    match hint {
        DtypeHint::Bf16 | DtypeHint::F16 => {
            if r16 <= ACCEPT_RATIO_HINTED {
                Codec::Planes16
            } else {
                Codec::Raw
            }
        }
        DtypeHint::F32 => {
            if r32 <= ACCEPT_RATIO_HINTED {
                Codec::Planes32
            } else {
                Codec::Raw
            }
        }
        DtypeHint::Unknown | DtypeHint::Quantized | DtypeHint::Text => {
            if stats.looks_like_strings() {
                Codec::Zstd
            } else if r32 + PLANES32_MARGIN < r16 && r32 <= ACCEPT_RATIO_UNHINTED {
                Codec::Planes32
            } else if r16 <= ACCEPT_RATIO_UNHINTED {
                Codec::Planes16
            } else {
                Codec::Raw
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), good enough to look incompressible.
    fn noise(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// Gaussian-ish floats from the sum of uniforms.
    fn weights(count: usize, seed: u64) -> Vec<f32> {
        let raw = noise(count * 4, seed);
        raw.chunks_exact(4)
            .map(|b| {
                let s: f32 = b.iter().map(|&x| f32::from(x) / 255.0).sum::<f32>() - 2.0;
                s * 0.05
            })
            .collect()
    }

    #[test]
    fn noise_is_raw_text_is_zstd_zeros_are_zstd() {
        assert_eq!(choose(&noise(1 << 20, 1), DtypeHint::Unknown), Codec::Raw);
        let text = "{\"model\": \"tokenizer\", \"vocab\": [\"hello\", \"world\"]}\n".repeat(30_000);
        assert_eq!(choose(text.as_bytes(), DtypeHint::Unknown), Codec::Zstd);
        assert_eq!(choose(&vec![0u8; 1 << 20], DtypeHint::Unknown), Codec::Zstd);
    }

    #[test]
    fn strings_behind_lengths_are_zstd_int8_is_not() {
        // GGUF vocabulary layout: u64 length, then the token's bytes. Tokens are made of common
        // pieces, as BPE vocabularies are, so they share substrings.
        let pieces = [
            "Ġ", "the", "ing", "er", "Ġst", "ation", "▁", "on", "al", "re", "ment", "s",
        ];
        let picks = noise(1 << 20, 4);
        let mut vocab = Vec::new();
        for pick in picks.chunks_exact(3) {
            if vocab.len() >= 1 << 20 {
                break;
            }
            let token: String = pick[..1 + usize::from(pick[0] % 3)]
                .iter()
                .map(|&p| pieces[usize::from(p) % pieces.len()])
                .collect();
            vocab.extend_from_slice(&(token.len() as u64).to_le_bytes());
            vocab.extend_from_slice(token.as_bytes());
        }
        vocab.truncate(1 << 20);
        assert_eq!(choose(&vocab, DtypeHint::Unknown), Codec::Zstd);
        let mut scratch = crate::codec::Scratch::new(64 << 10);
        let mut block = Vec::new();
        let mut stored = |codec| {
            crate::codec::encode_chunk(
                &vocab,
                codec,
                64 << 10,
                f64::NEG_INFINITY,
                &mut scratch,
                &mut block,
            )
        };
        let (text, planes) = (stored(Codec::Zstd), stored(Codec::Planes16));
        assert!(
            text < planes,
            "the choice must be the better codec: zstd {text:?}, planes {planes:?}"
        );
        // int8 weights (roughly Gaussian, σ ≈ 30): no repeats for unsplit zstd.
        let int8: Vec<u8> = noise(4 << 20, 9)
            .chunks_exact(4)
            .map(|b| (b.iter().map(|&x| i32::from(x)).sum::<i32>() - 510) as i8 as u8)
            .collect();
        assert_ne!(choose(&int8, DtypeHint::Unknown), Codec::Zstd);
    }

    #[test]
    fn floats_pick_their_planes() {
        let w = weights(1 << 18, 7);
        let f32_bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = w
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        assert_eq!(choose(&f32_bytes, DtypeHint::Unknown), Codec::Planes32);
        assert_eq!(choose(&bf16_bytes, DtypeHint::Unknown), Codec::Planes16);
        assert_eq!(choose(&bf16_bytes, DtypeHint::Bf16), Codec::Planes16);
        assert_eq!(choose(&f32_bytes, DtypeHint::F32), Codec::Planes32);
        assert_eq!(choose(&noise(1 << 20, 3), DtypeHint::F32), Codec::Raw);
    }

    #[test]
    fn hints_short_circuit() {
        assert_eq!(choose(&vec![0u8; 4096], DtypeHint::Quantized), Codec::Raw);
        assert_eq!(choose(&noise(4096, 5), DtypeHint::Text), Codec::Zstd);
        assert_eq!(choose(&[], DtypeHint::Unknown), Codec::Raw);
    }

    #[test]
    fn entropy_estimates_are_sane() {
        let uniform = entropy_bits(&[8u16; 256]);
        assert!((uniform - 8.0).abs() < 1e-6, "{uniform}");
        let mut one_value = [0u16; 256];
        one_value[7] = 1024;
        assert!(entropy_bits(&one_value).abs() < 1e-6);
        let mut two_values = [0u16; 256];
        two_values[0] = 512;
        two_values[255] = 512;
        let bits = entropy_bits(&two_values);
        assert!((bits - 1.0).abs() < 0.01, "{bits}");
        // 16 equally likely values, sampled: the bias correction brings it close to 4 bits.
        let mut sixteen = [0u16; 256];
        for (i, c) in sixteen.iter_mut().enumerate().take(16) {
            *c = 28 + (i as u16 % 3) * 4; // uneven, as real samples are
        }
        let bits = entropy_bits(&sixteen);
        assert!((bits - 4.0).abs() < 0.05, "{bits}");
    }

    #[test]
    fn small_and_odd_chunks_do_not_panic() {
        for len in [0, 1, 3, 63, 64, 65, 511, 513, 2047, 2049, 4097] {
            let data = noise(len, len as u64 + 1);
            let _ = choose(&data, DtypeHint::Unknown);
            let _ = choose(&data, DtypeHint::F16);
            let _ = sample_stats(&data);
        }
    }
}
