//! GGUF (llama.cpp): typed metadata key/values, then tensor infos (name, dims, GGML type,
//! offset), then aligned tensor data. Only `general.alignment` is read from the metadata; the rest
//! is skipped. A tensor's byte length follows from its type's block size, so the table of GGML
//! types below decides which spans are quantized (left raw) and which are floats.

use super::gguf_reader::{GgufFail, Reader};
use super::{Format, FormatError, Layout, Parsed, Span, corrupt};
use crate::codec::DtypeHint;

/// GGML tensors have at most 4 dimensions; allow some slack, reject nonsense.
const GGUF_MAX_DIMS: u32 = 8;
const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// (elements per block, bytes per block) of a GGML tensor type, as in llama.cpp's
/// `GGML_QUANT_SIZES`; `None` for types this table does not know.
fn ggml_type_size(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),     // F32
        1 => (1, 2),     // F16
        2 => (32, 18),   // Q4_0
        3 => (32, 20),   // Q4_1
        6 => (32, 22),   // Q5_0
        7 => (32, 24),   // Q5_1
        8 => (32, 34),   // Q8_0
        9 => (32, 36),   // Q8_1
        10 => (256, 84), // Q2_K
        11 => (256, 110),
        12 => (256, 144), // Q4_K
        13 => (256, 176),
        14 => (256, 210), // Q6_K
        15 => (256, 292),
        16 => (256, 66), // IQ2_XXS
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        20 => (32, 18), // IQ4_NL
        21 => (256, 110),
        22 => (256, 82),
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),
        26 => (1, 4),
        27 => (1, 8),
        28 => (1, 8),    // F64
        29 => (256, 56), // IQ1_M
        30 => (1, 2),    // BF16
        34 => (256, 54), // TQ1_0
        35 => (256, 66),
        39 => (32, 17),  // MXFP4
        40 => (64, 36),  // NVFP4
        41 => (128, 18), // Q1_0
        _ => return None,
    })
}

fn ggml_hint(ggml_type: u32) -> DtypeHint {
    match ggml_type {
        0 => DtypeHint::F32,
        1 => DtypeHint::F16,
        30 => DtypeHint::Bf16,
        // Plain integers and F64: not quantized blocks; let sampling decide.
        24..=28 => DtypeHint::Unknown,
        _ => DtypeHint::Quantized,
    }
}

struct GgufTensor {
    ggml_type: u32,
    elems: Option<u64>,
    offset: u64,
}

pub(super) fn parse_gguf(head: &[u8], file_len: u64) -> Result<Option<Parsed>, FormatError> {
    const F: Format = Format::Gguf;
    let mut r = Reader {
        head,
        pos: 4,
        file_len,
    };
    let (data_start, mut tensors) = match walk_header(&mut r) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(GgufFail::Corrupt(what)) => return Err(corrupt(F, what)),
        Err(GgufFail::Short(needed)) => {
            // Ask for at least double, so that a long header is read in a few rounds.
            let wanted = needed.max(2 * head.len() as u64).min(file_len);
            let wanted =
                usize::try_from(wanted).map_err(|_| corrupt(F, "header larger than memory"))?;
            return Ok(Some(Parsed::NeedMore(wanted)));
        }
    };
    tensors.sort_by_key(|t| t.offset);
    let spans = tensor_spans(&tensors, data_start, file_len)?;
    Layout::new(F, file_len, data_start, spans).map(|l| Some(Parsed::Layout(l)))
}

/// Walks the header after the magic: version, counts, metadata (for the alignment) and tensor
/// infos. Returns where the data section starts and the tensors, or `None` for versions not
/// parsed here.
fn walk_header(r: &mut Reader<'_>) -> Result<Option<(u64, Vec<GgufTensor>)>, GgufFail> {
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        // v1 (32-bit counts) or a big-endian file: not parsed here, sampling takes over.
        return Ok(None);
    }
    // A tensor info is ≥ 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a key/value ≥ 13.
    let tensor_count = r.count(24, "tensor")?;
    let kv_count = r.count(13, "metadata")?;
    let mut alignment = GGUF_DEFAULT_ALIGNMENT;
    for _ in 0..kv_count {
        let is_alignment = r.string()? == b"general.alignment";
        let value_type = r.u32()?;
        if is_alignment && value_type == 4 {
            alignment = u64::from(r.u32()?);
            if !alignment.is_power_of_two() {
                return Err(GgufFail::Corrupt(format!(
                    "general.alignment {alignment} is not a power of two"
                )));
            }
        } else {
            r.skip_value(value_type, 0)?;
        }
    }
    let mut tensors = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
    for _ in 0..tensor_count {
        tensors.push(tensor_info(r, alignment)?);
    }
    let data_start = r.pos.div_ceil(alignment).checked_mul(alignment);
    match data_start {
        Some(start) if start <= r.file_len => Ok(Some((start, tensors))),
        _ => Err(GgufFail::Corrupt(
            "data section starts past the end of the file".into(),
        )),
    }
}

/// One tensor info: name (skipped), dimensions, GGML type, offset in the data section.
fn tensor_info(r: &mut Reader<'_>, alignment: u64) -> Result<GgufTensor, GgufFail> {
    r.skip_string()?;
    let n_dims = r.u32()?;
    if n_dims > GGUF_MAX_DIMS {
        return Err(GgufFail::Corrupt(format!(
            "tensor with {n_dims} dimensions"
        )));
    }
    let mut elems = Some(1u64);
    for _ in 0..n_dims {
        let dim = r.u64()?;
        elems = elems.and_then(|e| e.checked_mul(dim));
    }
    let ggml_type = r.u32()?;
    let offset = r.u64()?;
    if offset % alignment != 0 {
        return Err(GgufFail::Corrupt(format!(
            "tensor offset {offset} is not {alignment}-aligned"
        )));
    }
    Ok(GgufTensor {
        ggml_type,
        elems,
        offset,
    })
}

/// The header span and one span per tensor (`tensors` sorted by offset).
fn tensor_spans(
    tensors: &[GgufTensor],
    data_start: u64,
    file_len: u64,
) -> Result<Vec<Span>, FormatError> {
    const F: Format = Format::Gguf;
    let mut spans = vec![Span {
        start: 0,
        end: data_start,
        hint: DtypeHint::Unknown,
    }];
    for (i, t) in tensors.iter().enumerate() {
        let start = data_start
            .checked_add(t.offset)
            .filter(|&s| s <= file_len)
            .ok_or_else(|| {
                corrupt(
                    F,
                    format!("tensor offset {} is past the end of the file", t.offset),
                )
            })?;
        let next_start = tensors
            .get(i + 1)
            .map_or(file_len, |n| data_start.saturating_add(n.offset));
        let end = match (ggml_type_size(t.ggml_type), t.elems) {
            (Some((block_elems, block_bytes)), Some(elems)) => {
                if elems % block_elems != 0 {
                    return Err(corrupt(
                        F,
                        format!(
                            "{elems} elements is not whole blocks of type {}",
                            t.ggml_type
                        ),
                    ));
                }
                (elems / block_elems)
                    .checked_mul(block_bytes)
                    .and_then(|bytes| start.checked_add(bytes))
                    .ok_or_else(|| corrupt(F, "tensor size overflows"))?
            }
            // Unknown type: the tensor runs to the next one (or the end of the file).
            _ => next_start.max(start),
        };
        spans.push(Span {
            start,
            end,
            hint: ggml_hint(t.ggml_type),
        });
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{layout_of, parse_growing, parse_whole, testdata};
    use super::*;

    /// Builds a GGUF v3 file: a few metadata values of every kind, then tensor infos and data.
    struct GgufBuilder {
        kv: Vec<u8>,
        kv_count: u64,
        infos: Vec<u8>,
        tensor_count: u64,
        alignment: u64,
    }

    impl GgufBuilder {
        fn new() -> Self {
            GgufBuilder {
                kv: Vec::new(),
                kv_count: 0,
                infos: Vec::new(),
                tensor_count: 0,
                alignment: 32,
            }
        }
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn kv(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
            Self::string(&mut self.kv, key);
            self.kv.extend_from_slice(&value_type.to_le_bytes());
            self.kv.extend_from_slice(value);
            self.kv_count += 1;
            self
        }
        fn alignment(self, alignment: u32) -> Self {
            let mut b = self.kv("general.alignment", 4, &alignment.to_le_bytes());
            b.alignment = u64::from(alignment);
            b
        }
        fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
            Self::string(&mut self.infos, name);
            self.infos
                .extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend_from_slice(&d.to_le_bytes());
            }
            self.infos.extend_from_slice(&ggml_type.to_le_bytes());
            self.infos.extend_from_slice(&offset.to_le_bytes());
            self.tensor_count += 1;
            self
        }
        /// Returns the file and where its data section starts.
        fn build(self, data_bytes: usize) -> (Vec<u8>, u64) {
            let mut f = b"GGUF".to_vec();
            f.extend_from_slice(&3u32.to_le_bytes());
            f.extend_from_slice(&self.tensor_count.to_le_bytes());
            f.extend_from_slice(&self.kv_count.to_le_bytes());
            f.extend_from_slice(&self.kv);
            f.extend_from_slice(&self.infos);
            let data_start = (f.len() as u64).div_ceil(self.alignment) * self.alignment;
            f.resize(data_start as usize + data_bytes, 0);
            (f, data_start)
        }
    }

    fn metadata_of_every_type() -> GgufBuilder {
        let mut strings = 8u32.to_le_bytes().to_vec(); // array of strings
        strings.extend_from_slice(&2u64.to_le_bytes());
        GgufBuilder::string(&mut strings, "hello");
        GgufBuilder::string(&mut strings, "wörld");
        let mut nested = 9u32.to_le_bytes().to_vec(); // array of arrays of u16
        nested.extend_from_slice(&2u64.to_le_bytes());
        for n in [1u64, 3] {
            nested.extend_from_slice(&2u32.to_le_bytes());
            nested.extend_from_slice(&n.to_le_bytes());
            nested.extend(std::iter::repeat_n(7u8, 2 * n as usize));
        }
        let mut floats = 6u32.to_le_bytes().to_vec();
        floats.extend_from_slice(&3u64.to_le_bytes());
        floats.extend_from_slice(&[0u8; 12]);
        let mut name = Vec::new();
        GgufBuilder::string(&mut name, "tiny-model");
        GgufBuilder::new()
            .kv("general.architecture", 8, &name)
            .kv("u8", 0, &[1])
            .kv("i8", 1, &[2])
            .kv("u16", 2, &[3, 0])
            .kv("i16", 3, &[4, 0])
            .kv("u32", 4, &5u32.to_le_bytes())
            .kv("i32", 5, &6i32.to_le_bytes())
            .kv("f32", 6, &1.5f32.to_le_bytes())
            .kv("bool", 7, &[1])
            .kv("u64", 10, &7u64.to_le_bytes())
            .kv("i64", 11, &8i64.to_le_bytes())
            .kv("f64", 12, &2.5f64.to_le_bytes())
            .kv("tokens", 9, &strings)
            .kv("nested", 9, &nested)
            .kv("scores", 9, &floats)
    }

    #[test]
    fn gguf_ranges_and_hints() {
        let (file, d) = metadata_of_every_type()
            .alignment(64)
            .tensor("tok_embd", &[256, 4], 12, 0) // Q4_K: 4 blocks × 144 = 576 B
            .tensor("norm", &[8], 0, 576) // F32: 32 B (576 is 64-aligned)
            .tensor("bf", &[16], 30, 640) // BF16: 32 B
            .tensor("h", &[2, 2], 1, 704) // F16: 8 B
            .build(768);
        assert_eq!(d % 64, 0);
        let layout = layout_of(&file);
        assert_eq!(layout.format(), Format::Gguf);
        assert_eq!(layout.data_start(), d);
        let spans: Vec<_> = layout
            .spans()
            .iter()
            .map(|s| (s.start, s.end, s.hint))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, d, DtypeHint::Unknown),
                (d, d + 576, DtypeHint::Quantized),
                (d + 576, d + 608, DtypeHint::F32),
                (d + 640, d + 672, DtypeHint::Bf16),
                (d + 704, d + 712, DtypeHint::F16),
            ]
        );
        assert_eq!(layout.hint_for(d, d + 640), DtypeHint::Quantized);
        assert_eq!(layout.hint_for(d + 600, d + 700), DtypeHint::Bf16); // 8 F32 B, 32 BF16 B, padding
        assert_eq!(layout.hint_for(d + 610, d + 630), DtypeHint::Unknown); // padding only
        assert_eq!(layout.hint_for(d + 5, d + 5), DtypeHint::Unknown); // empty range
        assert_eq!(layout.hint_for(d + 700, d + 712), DtypeHint::F16);
    }

    #[test]
    fn gguf_default_alignment_and_need_more() {
        let (file, d) = metadata_of_every_type().tensor("w", &[32], 8, 0).build(64);
        assert_eq!(d % 32, 0);
        let mut head_len = 16;
        let layout = loop {
            match Layout::parse(&file[..head_len], file.len() as u64) {
                Ok(Some(Parsed::NeedMore(n))) => {
                    assert!(
                        n > head_len && n <= file.len(),
                        "NeedMore({n}) with head {head_len}"
                    );
                    head_len = n;
                }
                Ok(Some(Parsed::Layout(l))) => break l,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            layout.spans()[1],
            Span {
                start: d,
                end: d + 34,
                hint: DtypeHint::Quantized
            }
        );
    }

    #[test]
    fn gguf_corrupt_headers_are_errors_not_panics() {
        let (good, _) = metadata_of_every_type().tensor("w", &[32], 8, 0).build(64);
        // Every truncation and every single-byte corruption must parse, fail cleanly or ask for more.
        for cut in 0..good.len() {
            let _ = Layout::parse(&good[..cut], cut as u64);
            let _ = Layout::parse(&good[..cut], good.len() as u64);
        }
        for i in 4..good.len().min(600) {
            for v in [0x00, 0xFF, 0x80, 0x7F] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = parse_whole(&bad);
            }
        }
        // Specific lies.
        let (file, _) = GgufBuilder::new().tensor("w", &[32], 8, 1 << 40).build(64);
        assert!(parse_whole(&file).is_err(), "tensor past EOF");
        let (file, _) = GgufBuilder::new()
            .tensor("w", &[32], 8, 0)
            .tensor("v", &[32], 8, 32)
            .build(128);
        assert!(
            parse_whole(&file).is_err(),
            "overlapping tensors (34 B at 0, next at 32)"
        );
        let (file, _) = GgufBuilder::new().tensor("w", &[31], 8, 0).build(64);
        assert!(parse_whole(&file).is_err(), "partial quant block");
        let (file, _) = GgufBuilder::new().alignment(48).build(0);
        assert!(parse_whole(&file).is_err(), "alignment not a power of two");
        let mut file = b"GGUF".to_vec();
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&u64::MAX.to_le_bytes());
        file.extend_from_slice(&0u64.to_le_bytes());
        assert!(parse_whole(&file).is_err(), "absurd tensor count");
        let mut v1 = b"GGUF".to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.resize(64, 0);
        assert!(
            matches!(parse_whole(&v1), Ok(None)),
            "GGUF v1 is left to sampling"
        );
    }

    #[test]
    fn real_gguf_parses() {
        let Some(file) = testdata("gemma-3-270m-q4_k_m.gguf") else {
            return;
        };
        let layout = parse_growing(&file);
        let tensors = &layout.spans()[1..];
        assert!(tensors.len() > 100, "{} tensors", tensors.len());
        let bytes = |h| {
            tensors
                .iter()
                .filter(|s| s.hint == h)
                .map(|s| s.end - s.start)
                .sum::<u64>()
        };
        let quantized = bytes(DtypeHint::Quantized);
        let total: u64 = tensors.iter().map(|s| s.end - s.start).sum();
        assert!(
            quantized * 10 > total * 9,
            "quantized {quantized} of {total}"
        );
        assert!(bytes(DtypeHint::F32) > 0, "norms are F32");
        // Tensors tile the data section up to alignment padding.
        assert!(file.len() as u64 - tensors.last().map_or(0, |s| s.end) < 64);
        assert!(total + 64 * tensors.len() as u64 >= file.len() as u64 - layout.data_start());
    }
}
