//! `nitro-uring bench codec`: what each codec would buy on real files, and at what speed.
//!
//! The numbers that decide whether compression is worth having in the cache are the stored/raw
//! ratio under the cache's own policy (1 MiB chunks, 64 KiB frames, chunks saving < 10% kept raw),
//! the single-core decode speed (a read pays it on every hit) and what `auto` picks (that is what
//! the engine will do). They are measured here on whole files in memory, single-threaded, so they
//! are per-core numbers, free of I/O.

use anyhow::{Context, anyhow, bail};
use nitro_uring::codec::formats::{self, Format, Layout, Parsed, Span};
use nitro_uring::codec::{
    Codec, CodecError, DEFAULT_FRAME_BYTES, DEFAULT_MIN_SAVING, DtypeHint, Scratch, choose,
    decode_range, encode_chunk,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHUNK_BYTES: usize = 1 << 20;
/// Repeat a timed pass until at least this long has been measured (small files)...
const MIN_TIMED: Duration = Duration::from_millis(300);
/// ...and at least this many times; the fastest pass is reported (least disturbed by the rest of
/// the machine).
const MIN_PASSES: usize = 5;
/// Random 4 KiB reads timed per codec.
const READS_4K: usize = 4096;

#[derive(Serialize)]
struct Row {
    codec: String,
    stored_bytes: u64,
    ratio: f64,
    encode_gbps: f64,
    decode_gbps: f64,
    read_4k_us: f64,
    chunks_encoded: usize,
    chunks: usize,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    bytes: u64,
    format: String,
    /// Speed of a plain copy of every chunk (the "raw fill" the sample is compared with).
    copy_gbps: f64,
    rows: Vec<Row>,
    /// Chunks per codec picked by `auto`.
    auto_picks: BTreeMap<String, usize>,
    /// Time of `choose` (with the header's hints) as a share of copying the chunks.
    auto_sample_share: f64,
    /// Same without hints (every chunk sampled): the cost for files without a known header.
    unhinted_sample_share: f64,
}

/// One file (or derived file) to measure.
struct Subject {
    label: String,
    data: Vec<u8>,
    layout: Option<Layout>,
    /// Hint for files without a layout.
    fallback: DtypeHint,
}

impl Subject {
    fn hint(&self, start: usize, end: usize) -> DtypeHint {
        match &self.layout {
            Some(l) => l.hint_for(start as u64, end as u64),
            None => self.fallback,
        }
    }

    fn format(&self) -> String {
        match self.layout.as_ref().map(Layout::format) {
            Some(Format::Safetensors) => "safetensors".into(),
            Some(Format::Gguf) => "gguf".into(),
            None if self.fallback == DtypeHint::Text => "text".into(),
            None => "unknown".into(),
        }
    }
}

/// Measure every codec on every file; print a table; write JSON to `json` if given.
pub fn run(paths: &[PathBuf], json: Option<&Path>, derive_bf16: bool) -> anyhow::Result<()> {
    if paths.is_empty() {
        bail!("bench codec: no files given");
    }
    let mut reports = Vec::new();
    let mut table = String::new();
    writeln!(
        table,
        "{:<44} {:<13} {:>7} {:>9} {:>9} {:>9} {:>9}  notes",
        "file", "codec", "ratio", "enc GB/s", "dec GB/s", "4k rd µs", "encoded"
    )?;
    for path in paths {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let layout = match parse_layout(&data) {
            Ok(layout) => layout,
            Err(e) => {
                eprintln!("{}: {e}; treating as unknown", path.display());
                None
            }
        };
        let text =
            formats::hint_from_name(path) == Some(DtypeHint::Text) || formats::sniff_text(&data);
        let fallback = if layout.is_none() && text {
            DtypeHint::Text
        } else {
            DtypeHint::Unknown
        };
        let subject = Subject {
            label: path.display().to_string(),
            data,
            layout,
            fallback,
        };
        let derived = if derive_bf16 {
            derive_bf16_subject(&subject)
        } else {
            None
        };
        for s in std::iter::once(&subject).chain(derived.as_ref()) {
            let report = measure(s)?;
            print_report(&mut table, &report)?;
            reports.push(report);
        }
    }
    print!("{table}");
    if let Some(json_path) = json {
        let text = serde_json::to_string_pretty(&reports)?;
        std::fs::write(json_path, text)
            .with_context(|| format!("writing {}", json_path.display()))?;
    }
    Ok(())
}

fn parse_layout(data: &[u8]) -> anyhow::Result<Option<Layout>> {
    let mut head_len = (64 << 10).min(data.len());
    loop {
        match Layout::parse(&data[..head_len], data.len() as u64)? {
            None => return Ok(None),
            Some(Parsed::Layout(layout)) => return Ok(Some(layout)),
            Some(Parsed::NeedMore(n)) if n > head_len && n <= data.len() => head_len = n,
            Some(Parsed::NeedMore(n)) => {
                bail!("header parser asked for {n} bytes with {head_len} given")
            }
        }
    }
}

/// Round an F32 to BF16 with round-to-nearest-even (what `torch.bfloat16` conversion does).
pub fn f32_to_bf16_rne(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        // Keep it a (quiet) NaN even when the payload sits in the dropped bits.
        return ((bits >> 16) as u16) | 0x0040;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The BF16 checkpoint an F32 safetensors file would become: F32 tensors rounded to BF16, other
/// spans copied, header kept as it is (it is only measured, never parsed back).
fn derive_bf16_subject(src: &Subject) -> Option<Subject> {
    let layout = src.layout.as_ref()?;
    if layout.format() != Format::Safetensors
        || !layout.spans().iter().any(|s| s.hint == DtypeHint::F32)
    {
        return None;
    }
    let mut data = Vec::with_capacity(src.data.len() / 2 + 4096);
    let mut spans = Vec::new();
    for span in layout.spans() {
        let bytes = &src.data[span.start as usize..span.end as usize];
        let start = data.len() as u64;
        let hint = if span.hint == DtypeHint::F32 {
            for word in bytes.chunks_exact(4) {
                let value = f32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                data.extend_from_slice(&f32_to_bf16_rne(value).to_le_bytes());
            }
            DtypeHint::Bf16
        } else {
            data.extend_from_slice(bytes);
            span.hint
        };
        spans.push(Span {
            start,
            end: data.len() as u64,
            hint,
        });
    }
    let data_start = spans.get(1).map_or(0, |s| s.start);
    let layout = Layout::new(Format::Safetensors, data.len() as u64, data_start, spans).ok()?;
    Some(Subject {
        label: format!("{} (derived BF16)", src.label),
        data,
        layout: Some(layout),
        fallback: DtypeHint::Unknown,
    })
}

/// Run `pass` until `MIN_PASSES` and `MIN_TIMED` are both reached; return the fastest pass.
fn fastest(mut pass: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    let (mut total, mut passes) = (Duration::ZERO, 0);
    while passes < MIN_PASSES || total < MIN_TIMED {
        let t = Instant::now();
        pass();
        let took = t.elapsed();
        best = best.min(took);
        total += took;
        passes += 1;
    }
    best
}

fn gbps(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-12) / 1e9
}

/// Chunks stored the way the cache would: `Some(block)` when encoding saved enough, else raw.
type Stored = Vec<Option<Vec<u8>>>;

fn measure(s: &Subject) -> anyhow::Result<FileReport> {
    let chunks: Vec<&[u8]> = s.data.chunks(CHUNK_BYTES).collect();
    let mut copy_buf = vec![0u8; CHUNK_BYTES];
    let copy_time = fastest(|| {
        for chunk in &chunks {
            copy_buf[..chunk.len()].copy_from_slice(chunk);
            black_box(&mut copy_buf);
        }
    });
    let copy_gbps = gbps(s.data.len(), copy_time);

    let mut rows = vec![Row {
        codec: Codec::Raw.name().into(),
        stored_bytes: s.data.len() as u64,
        ratio: 1.0,
        encode_gbps: copy_gbps,
        decode_gbps: copy_gbps,
        read_4k_us: 0.0,
        chunks_encoded: 0,
        chunks: chunks.len(),
    }];
    for codec in [Codec::Zstd, Codec::Planes16, Codec::Planes32] {
        rows.push(measure_codec(s, &chunks, codec.name(), |_, _| codec)?);
    }

    // auto = the engine's decision: header hint, then `choose` on the chunk.
    let hints: Vec<DtypeHint> = (0..chunks.len())
        .map(|i| {
            s.hint(
                i * CHUNK_BYTES,
                (i * CHUNK_BYTES + chunks[i].len()).min(s.data.len()),
            )
        })
        .collect();
    let mut picks = vec![Codec::Raw; chunks.len()];
    let hinted_time = fastest(|| {
        for (i, chunk) in chunks.iter().enumerate() {
            picks[i] = choose(black_box(chunk), hints[i]);
        }
    });
    let unhinted_time = fastest(|| {
        for chunk in &chunks {
            black_box(choose(black_box(chunk), DtypeHint::Unknown));
        }
    });
    let mut auto_picks = BTreeMap::new();
    for p in &picks {
        *auto_picks.entry(p.name().to_string()).or_insert(0) += 1;
    }
    rows.push(measure_codec(s, &chunks, "auto", |i, chunk| {
        choose(chunk, hints[i])
    })?);

    Ok(FileReport {
        file: s.label.clone(),
        bytes: s.data.len() as u64,
        format: s.format(),
        copy_gbps,
        rows,
        auto_picks,
        auto_sample_share: hinted_time.as_secs_f64() / copy_time.as_secs_f64(),
        unhinted_sample_share: unhinted_time.as_secs_f64() / copy_time.as_secs_f64(),
    })
}

fn measure_codec(
    s: &Subject,
    chunks: &[&[u8]],
    label: &str,
    pick: impl FnMut(usize, &[u8]) -> Codec,
) -> anyhow::Result<Row> {
    let mut scratch = Scratch::new(DEFAULT_FRAME_BYTES);
    let (stored, encode_time) = encode_all(chunks, pick, &mut scratch);
    // Check every chunk once, outside the timing: a benchmark of a codec that loses bytes is void.
    verify(s, label, chunks, &stored, &mut scratch)?;
    let failed = |(i, e): (usize, CodecError)| anyhow!("{}: {label}: chunk {i}: {e}", s.label);
    let decode_time = time_decode(chunks, &stored, &mut scratch).map_err(failed)?;
    let read_time = time_reads_4k(s.data.len(), chunks, &stored, &mut scratch).map_err(failed)?;
    let stored_bytes: usize = chunks
        .iter()
        .zip(&stored)
        .map(|(c, b)| b.as_ref().map_or(c.len(), Vec::len))
        .sum();
    Ok(Row {
        codec: label.into(),
        stored_bytes: stored_bytes as u64,
        ratio: stored_bytes as f64 / s.data.len().max(1) as f64,
        encode_gbps: gbps(s.data.len(), encode_time),
        decode_gbps: gbps(s.data.len(), decode_time),
        read_4k_us: read_time.as_secs_f64() * 1e6 / READS_4K as f64,
        chunks_encoded: stored.iter().filter(|b| b.is_some()).count(),
        chunks: chunks.len(),
    })
}

/// Encodes every chunk with the codec `pick` gives it (the fastest of the timed passes).
fn encode_all(
    chunks: &[&[u8]],
    mut pick: impl FnMut(usize, &[u8]) -> Codec,
    scratch: &mut Scratch,
) -> (Stored, Duration) {
    let mut stored: Stored = vec![None; chunks.len()];
    let mut block = Vec::with_capacity(2 * CHUNK_BYTES);
    let encode_time = fastest(|| {
        for (i, chunk) in chunks.iter().enumerate() {
            let codec = pick(i, chunk);
            stored[i] = match codec {
                Codec::Raw => None,
                _ => encode_chunk(
                    chunk,
                    codec,
                    DEFAULT_FRAME_BYTES,
                    DEFAULT_MIN_SAVING,
                    scratch,
                    &mut block,
                )
                .map(|_| block.clone()),
            };
        }
    });
    (stored, encode_time)
}

/// Every stored chunk decodes to its original bytes.
fn verify(
    s: &Subject,
    label: &str,
    chunks: &[&[u8]],
    stored: &Stored,
    scratch: &mut Scratch,
) -> anyhow::Result<()> {
    let mut out = vec![0u8; CHUNK_BYTES];
    for (i, (chunk, block)) in chunks.iter().zip(stored).enumerate() {
        if let Some(block) = block {
            decode_range(block, 0, &mut out[..chunk.len()], scratch)
                .with_context(|| format!("{}: {label}: chunk {i} does not decode", s.label))?;
            if out[..chunk.len()] != **chunk {
                bail!("{}: {label}: chunk {i} decodes to different bytes", s.label);
            }
        }
    }
    Ok(())
}

/// Decoding (or copying, for raw chunks) every chunk whole; a failure names the chunk.
fn time_decode(
    chunks: &[&[u8]],
    stored: &Stored,
    scratch: &mut Scratch,
) -> Result<Duration, (usize, CodecError)> {
    let mut out = vec![0u8; CHUNK_BYTES];
    let mut failed = None;
    let decode_time = fastest(|| {
        for (i, (chunk, block)) in chunks.iter().zip(stored).enumerate() {
            let out = &mut out[..chunk.len()];
            match block {
                Some(block) => {
                    if let Err(e) = decode_range(block, 0, out, scratch) {
                        failed = Some((i, e));
                    }
                }
                None => out.copy_from_slice(chunk),
            }
            black_box(out);
        }
    });
    failed.map_or(Ok(decode_time), Err)
}

/// `READS_4K` random 4 KiB reads (xorshift offsets, 4 KiB aligned like page-cache reads) of a file
/// of `len` bytes; zero for a file under 4 KiB.
fn time_reads_4k(
    len: usize,
    chunks: &[&[u8]],
    stored: &Stored,
    scratch: &mut Scratch,
) -> Result<Duration, (usize, CodecError)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut page = [0u8; 4096];
    let pages = len / 4096;
    if pages == 0 {
        return Ok(Duration::ZERO);
    }
    let mut failed = None;
    let read_time = fastest(|| {
        for _ in 0..READS_4K {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % pages as u64) as usize * 4096;
            let (i, within) = (at / CHUNK_BYTES, at % CHUNK_BYTES);
            match &stored[i] {
                Some(block) => {
                    if let Err(e) = decode_range(block, within, &mut page, scratch) {
                        failed = Some((i, e));
                    }
                }
                None => page.copy_from_slice(&chunks[i][within..within + 4096]),
            }
            black_box(&mut page);
        }
    });
    failed.map_or(Ok(read_time), Err)
}

fn print_report(table: &mut String, r: &FileReport) -> std::fmt::Result {
    let name = shorten(&r.file, 44);
    for (i, row) in r.rows.iter().enumerate() {
        let file_col = if i == 0 { name.as_str() } else { "" };
        let note = match row.codec.as_str() {
            "raw" => format!("{} B, {}, plain copy", r.bytes, r.format),
            "auto" => {
                let picks: Vec<String> = r
                    .auto_picks
                    .iter()
                    .map(|(c, n)| format!("{c}×{n}"))
                    .collect();
                format!(
                    "picked {}; sample {:.2}% of copy (unhinted {:.2}%)",
                    picks.join(" "),
                    100.0 * r.auto_sample_share,
                    100.0 * r.unhinted_sample_share
                )
            }
            _ => String::new(),
        };
        writeln!(
            table,
            "{:<44} {:<13} {:>7.3} {:>9.2} {:>9.2} {:>9} {:>9}  {}",
            file_col,
            row.codec,
            row.ratio,
            row.encode_gbps,
            row.decode_gbps,
            // Not measured for raw (a 4 KiB copy).
            if row.codec == "raw" {
                "-".to_string()
            } else {
                format!("{:.1}", row.read_4k_us)
            },
            format!("{}/{}", row.chunks_encoded, row.chunks),
            note
        )?;
    }
    Ok(())
}

/// Keep the end of a long path (the file name is the informative part).
fn shorten(label: &str, width: usize) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= width {
        return label.to_string();
    }
    let tail: String = chars[chars.len() - (width - 1)..].iter().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::f32_to_bf16_rne;

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(f32_to_bf16_rne(1.0), 0x3F80);
        assert_eq!(f32_to_bf16_rne(-2.0), 0xC000);
        // Exactly halfway between 0x3F80 and 0x3F81: ties to even (0x3F80).
        assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3F80_8000)), 0x3F80);
        // Halfway between 0x3F81 and 0x3F82: ties to even (0x3F82).
        assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3F81_8000)), 0x3F82);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16_rne(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16_rne(f32::MAX), 0x7F80, "overflows to infinity");
        let nan = f32_to_bf16_rne(f32::from_bits(0x7F80_0001));
        assert!(
            nan & 0x7F80 == 0x7F80 && nan & 0x007F != 0,
            "NaN stays NaN: {nan:#x}"
        );
    }
}
