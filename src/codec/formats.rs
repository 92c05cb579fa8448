//! Weight-file formats: which byte ranges hold which dtype.
//!
//! Sampling a chunk costs little, but the file's own header is free and exact: a safetensors or
//! GGUF header says, per tensor, where its bytes are and what they are, so the cache can skip
//! sampling for quantized tensors (most of a GGUF file) and pick the right plane split for float
//! tensors even where a chunk's sample would be ambiguous (BF16 vs F32 look alike per lane).
//!
//! File bytes are untrusted input: every count and offset is checked against the file length
//! before it is used, so a malformed header is an error, never a panic or a huge allocation.

use super::DtypeHint;
use std::fmt;
use std::path::Path;

/// safetensors caps its JSON header at 100 MB; anything larger is not a safetensors file.
const SAFETENSORS_MAX_HEADER_BYTES: u64 = 100_000_000;
/// Bytes needed to recognize either format.
const SNIFF_BYTES: usize = 16;
/// GGUF value nesting (arrays of arrays) deeper than this is treated as corrupt.
const GGUF_MAX_DEPTH: u32 = 8;
/// GGML tensors have at most 4 dimensions; allow some slack, reject nonsense.
const GGUF_MAX_DIMS: u32 = 8;
const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// Which format a [`Layout`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Gguf,
}

/// One byte range of a file (absolute offsets, `start..end`) and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    pub hint: DtypeHint,
}

/// Tensor byte ranges of a file, sorted by offset and non-overlapping.
#[derive(Clone, Debug)]
pub struct Layout {
    format: Format,
    file_len: u64,
    /// Where tensor data begins (everything before is header).
    data_start: u64,
    spans: Vec<Span>,
}

/// Outcome of [`Layout::parse`] on a recognized format.
#[derive(Clone, Debug)]
pub enum Parsed {
    Layout(Layout),
    /// The header continues past `head`: call again with at least this many leading bytes of the
    /// file (a total, not an increment). For GGUF the total header size is only known once it is
    /// walked, so this may be asked more than once, each time for more.
    NeedMore(usize),
}

/// A recognized header that cannot be right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    pub format: Format,
    pub what: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupt {:?} header: {}", self.format, self.what)
    }
}

impl std::error::Error for FormatError {}

fn corrupt(format: Format, what: impl Into<String>) -> FormatError {
    FormatError {
        format,
        what: what.into(),
    }
}

impl Layout {
    /// Parse the header at the start of a file of `file_len` bytes from its first bytes `head`.
    ///
    /// `Ok(None)`: not a format this module knows (the caller samples instead). `Err`: the format
    /// is recognized but the header is inconsistent (the caller may treat the file as unknown).
    pub fn parse(head: &[u8], file_len: u64) -> Result<Option<Parsed>, FormatError> {
        let sniff_bytes = usize::try_from(file_len).map_or(SNIFF_BYTES, |len| len.min(SNIFF_BYTES));
        if head.len() < sniff_bytes {
            return Ok(Some(Parsed::NeedMore(sniff_bytes)));
        }
        if head.starts_with(b"GGUF") {
            return parse_gguf(head, file_len);
        }
        parse_safetensors(head, file_len)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// First byte of tensor data (the header is `0..data_start`).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Tensor (and header) spans, sorted by `start`, non-overlapping.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The hint covering most bytes of `[start, end)`. Bytes outside every span (alignment
    /// padding between tensors, or past the last one) do not vote; a range with no span in it
    /// is [`DtypeHint::Unknown`]. Ties go to the hint listed first in `DtypeHint`.
    pub fn hint_for(&self, start: u64, end: u64) -> DtypeHint {
        const HINTS: [DtypeHint; 6] = [
            DtypeHint::Unknown,
            DtypeHint::Bf16,
            DtypeHint::F16,
            DtypeHint::F32,
            DtypeHint::Quantized,
            DtypeHint::Text,
        ];
        let mut bytes = [0u64; HINTS.len()];
        let first = self.spans.partition_point(|s| s.end <= start);
        for span in self.spans[first..].iter().take_while(|s| s.start < end) {
            let overlap = span.end.min(end).saturating_sub(span.start.max(start));
            if let Some(i) = HINTS.iter().position(|&h| h == span.hint) {
                bytes[i] += overlap;
            }
        }
        let best = bytes.iter().copied().max().unwrap_or(0);
        HINTS
            .iter()
            .zip(bytes)
            .find(|&(_, b)| b == best && b > 0)
            .map_or(DtypeHint::Unknown, |(&h, _)| h)
    }

    /// Build from spans (sorted here); fails on overlaps or spans past the end of the file.
    pub(super) fn new(
        format: Format,
        file_len: u64,
        data_start: u64,
        mut spans: Vec<Span>,
    ) -> Result<Layout, FormatError> {
        spans.retain(|s| s.start < s.end);
        spans.sort_by_key(|s| (s.start, s.end));
        for pair in spans.windows(2) {
            if pair[1].start < pair[0].end {
                return Err(corrupt(
                    format,
                    format!(
                        "tensor data overlaps: {}..{} and {}..{}",
                        pair[0].start, pair[0].end, pair[1].start, pair[1].end
                    ),
                ));
            }
        }
        if let Some(last) = spans.last()
            && last.end > file_len
        {
            return Err(corrupt(
                format,
                format!(
                    "tensor data ends at {} past the file end {file_len}",
                    last.end
                ),
            ));
        }
        Ok(Layout {
            format,
            file_len,
            data_start,
            spans,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

fn safetensors_dtype(dtype: &str) -> (DtypeHint, Option<u64>) {
    match dtype {
        "BF16" => (DtypeHint::Bf16, Some(2)),
        "F16" => (DtypeHint::F16, Some(2)),
        "F32" => (DtypeHint::F32, Some(4)),
        "F64" | "I64" | "U64" => (DtypeHint::Unknown, Some(8)),
        "I32" | "U32" => (DtypeHint::Unknown, Some(4)),
        "I16" | "U16" => (DtypeHint::Unknown, Some(2)),
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => (DtypeHint::Unknown, Some(1)),
        // Sub-byte and future dtypes: take the offsets as given.
        _ => (DtypeHint::Unknown, None),
    }
}

fn parse_safetensors(head: &[u8], file_len: u64) -> Result<Option<Parsed>, FormatError> {
    const F: Format = Format::Safetensors;
    if head.len() < 9 {
        return Ok(None); // shorter than a length and a '{': not safetensors
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[..8]);
    let json_bytes = u64::from_le_bytes(len_bytes);
    let plausible = (2..=SAFETENSORS_MAX_HEADER_BYTES).contains(&json_bytes)
        && 8 + json_bytes <= file_len
        && head[8] == b'{';
    if !plausible {
        return Ok(None);
    }
    let data_start = 8 + json_bytes;
    // Bounded by SAFETENSORS_MAX_HEADER_BYTES above, so this fits in usize.
    let header_end = data_start as usize;
    if head.len() < header_end {
        return Ok(Some(Parsed::NeedMore(header_end)));
    }
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&head[8..header_end])
            .map_err(|e| corrupt(F, format!("header JSON: {e}")))?;

    let mut spans = vec![Span {
        start: 0,
        end: data_start,
        hint: DtypeHint::Text,
    }];
    for (name, info) in &json {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| {
            info.get(key)
                .ok_or_else(|| corrupt(F, format!("tensor {name:?} has no {key}")))
        };
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| corrupt(F, format!("tensor {name:?}: dtype is not a string")))?;
        let offsets = field("data_offsets")?
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| {
                corrupt(
                    F,
                    format!("tensor {name:?}: data_offsets is not [begin, end]"),
                )
            })?;
        let shape: Vec<u64> = field("shape")?
            .as_array()
            .and_then(|dims| dims.iter().map(|d| d.as_u64()).collect())
            .ok_or_else(|| corrupt(F, format!("tensor {name:?}: shape is not a list of sizes")))?;
        let (begin, end) = offsets;
        if begin > end {
            return Err(corrupt(
                F,
                format!("tensor {name:?}: data_offsets {begin} > {end}"),
            ));
        }
        let (hint, elem_bytes) = safetensors_dtype(dtype);
        if let Some(elem_bytes) = elem_bytes {
            let expected = shape
                .iter()
                .try_fold(elem_bytes, |acc, &d| acc.checked_mul(d));
            if expected != Some(end - begin) {
                return Err(corrupt(
                    F,
                    format!(
                        "tensor {name:?}: {dtype} {shape:?} does not fit {} data bytes",
                        end - begin
                    ),
                ));
            }
        }
        let (start, stop) = match (data_start.checked_add(begin), data_start.checked_add(end)) {
            (Some(s), Some(e)) if e <= file_len => (s, e),
            _ => {
                return Err(corrupt(
                    F,
                    format!("tensor {name:?} ends past the end of the file"),
                ));
            }
        };
        spans.push(Span {
            start,
            end: stop,
            hint,
        });
    }
    Layout::new(F, file_len, data_start, spans).map(|l| Some(Parsed::Layout(l)))
}

// ---------------------------------------------------------------------------------------------
// GGUF

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

enum GgufFail {
    /// The header needs at least this many bytes of the file.
    Short(u64),
    Corrupt(String),
}

/// A bounds-checked little-endian reader over the head of a GGUF file.
struct Reader<'a> {
    head: &'a [u8],
    pos: u64,
    file_len: u64,
}

impl Reader<'_> {
    fn take(&mut self, bytes: u64) -> Result<&[u8], GgufFail> {
        let end = self
            .pos
            .checked_add(bytes)
            .ok_or_else(|| GgufFail::Corrupt("size overflow".into()))?;
        if end > self.file_len {
            return Err(GgufFail::Corrupt(format!(
                "header runs past the end of the file ({end} > {})",
                self.file_len
            )));
        }
        if end > self.head.len() as u64 {
            return Err(GgufFail::Short(end));
        }
        let start = self.pos as usize;
        self.pos = end;
        Ok(&self.head[start..end as usize])
    }

    fn skip(&mut self, bytes: u64) -> Result<(), GgufFail> {
        let end = self
            .pos
            .checked_add(bytes)
            .ok_or_else(|| GgufFail::Corrupt("size overflow".into()))?;
        if end > self.file_len {
            return Err(GgufFail::Corrupt(format!(
                "header runs past the end of the file ({end} > {})",
                self.file_len
            )));
        }
        self.pos = end;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, GgufFail> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, GgufFail> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A count of items that each take at least `min_item_bytes`: reject counts that could not fit
    /// in the rest of the file before looping over them.
    fn count(&mut self, min_item_bytes: u64, what: &str) -> Result<u64, GgufFail> {
        let n = self.u64()?;
        let room = self.file_len.saturating_sub(self.pos);
        if n.checked_mul(min_item_bytes).is_none_or(|b| b > room) {
            return Err(GgufFail::Corrupt(format!(
                "{what} count {n} cannot fit in the file"
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<&[u8], GgufFail> {
        let len = self.count(1, "string byte")?;
        self.take(len)
    }

    fn skip_string(&mut self) -> Result<(), GgufFail> {
        let len = self.count(1, "string byte")?;
        self.skip(len)
    }

    /// Skip one metadata value of `value_type`.
    fn skip_value(&mut self, value_type: u32, depth: u32) -> Result<(), GgufFail> {
        if let Some(bytes) = gguf_scalar_bytes(value_type) {
            return self.skip(bytes);
        }
        match value_type {
            8 => self.skip_string(),
            9 => {
                if depth >= GGUF_MAX_DEPTH {
                    return Err(GgufFail::Corrupt("arrays nested too deep".into()));
                }
                let elem_type = self.u32()?;
                if let Some(bytes) = gguf_scalar_bytes(elem_type) {
                    let n = self.count(bytes, "array element")?;
                    return self.skip(n * bytes);
                }
                // Strings take ≥ 8 bytes (their length), arrays ≥ 12 (type + count).
                let min_bytes = if elem_type == 8 { 8 } else { 12 };
                let n = self.count(min_bytes, "array element")?;
                for _ in 0..n {
                    self.skip_value(elem_type, depth + 1)?;
                }
                Ok(())
            }
            other => Err(GgufFail::Corrupt(format!(
                "unknown metadata value type {other}"
            ))),
        }
    }
}

fn gguf_scalar_bytes(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),
        4..=6 => Some(4),   // u32, i32, f32
        10..=12 => Some(8), // u64, i64, f64
        _ => None,
    }
}

struct GgufTensor {
    ggml_type: u32,
    elems: Option<u64>,
    offset: u64,
}

fn parse_gguf(head: &[u8], file_len: u64) -> Result<Option<Parsed>, FormatError> {
    const F: Format = Format::Gguf;
    let mut r = Reader {
        head,
        pos: 4,
        file_len,
    };
    let walk = |r: &mut Reader<'_>| -> Result<Option<(u64, Vec<GgufTensor>)>, GgufFail> {
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
            tensors.push(GgufTensor {
                ggml_type,
                elems,
                offset,
            });
        }
        let data_start = r.pos.div_ceil(alignment).checked_mul(alignment);
        match data_start {
            Some(start) if start <= r.file_len => Ok(Some((start, tensors))),
            _ => Err(GgufFail::Corrupt(
                "data section starts past the end of the file".into(),
            )),
        }
    };
    let (data_start, mut tensors) = match walk(&mut r) {
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
    Layout::new(F, file_len, data_start, spans).map(|l| Some(Parsed::Layout(l)))
}

// ---------------------------------------------------------------------------------------------
// text

/// Does `head` look like text (UTF-8 without control bytes other than whitespace)? Used for
/// files without a weight header: tokenizers, vocabularies, configs, which zstd level 1 stores
/// at 0.32–0.54 of raw.
pub fn sniff_text(head: &[u8]) -> bool {
    let head = &head[..head.len().min(4096)];
    if head.is_empty() {
        return false;
    }
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut off by the end of `head` is fine.
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    valid
        && head
            .iter()
            .all(|&b| b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r' | 0x0C))
}

/// A hint from the file name alone, for extensions that are always text.
pub fn hint_from_name(path: &Path) -> Option<DtypeHint> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "json" | "txt" | "md" | "py" | "jinja" | "yaml" | "yml" | "csv" | "tsv" | "merges"
    )
    .then_some(DtypeHint::Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors_file(json: &str, data_bytes: usize) -> Vec<u8> {
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json.as_bytes());
        file.resize(file.len() + data_bytes, 0xAB);
        file
    }

    fn parse_whole(file: &[u8]) -> Result<Option<Parsed>, FormatError> {
        Layout::parse(file, file.len() as u64)
    }

    fn layout_of(file: &[u8]) -> Layout {
        match parse_whole(file) {
            Ok(Some(Parsed::Layout(l))) => l,
            other => panic!("expected a layout, got {other:?}"),
        }
    }

    #[test]
    fn safetensors_ranges_and_hints() {
        let json = r#"{"__metadata__":{"format":"pt"},
            "a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},
            "b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]},
            "c":{"dtype":"I64","shape":[1],"data_offsets":[28,36]}}   "#;
        let file = safetensors_file(json, 36);
        let layout = layout_of(&file);
        let d = 8 + json.len() as u64;
        assert_eq!(layout.format(), Format::Safetensors);
        assert_eq!(layout.data_start(), d);
        let spans: Vec<_> = layout
            .spans()
            .iter()
            .map(|s| (s.start, s.end, s.hint))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, d, DtypeHint::Text),
                (d, d + 12, DtypeHint::Bf16),
                (d + 12, d + 28, DtypeHint::F32),
                (d + 28, d + 36, DtypeHint::Unknown),
            ]
        );
        assert_eq!(layout.hint_for(d, d + 12), DtypeHint::Bf16);
        assert_eq!(layout.hint_for(d + 10, d + 28), DtypeHint::F32); // 2 B of BF16, 16 B of F32
        assert_eq!(layout.hint_for(0, 4), DtypeHint::Text);
        assert_eq!(layout.hint_for(d + 36, d + 100), DtypeHint::Unknown);
    }

    #[test]
    fn safetensors_needs_more_then_parses() {
        let json = r#"{"w":{"dtype":"F16","shape":[8],"data_offsets":[0,16]}}"#;
        let file = safetensors_file(json, 16);
        match Layout::parse(&file[..20], file.len() as u64) {
            Ok(Some(Parsed::NeedMore(n))) => assert_eq!(n, 8 + json.len()),
            other => panic!("{other:?}"),
        }
        match Layout::parse(&file[..4], file.len() as u64) {
            Ok(Some(Parsed::NeedMore(n))) => assert_eq!(n, SNIFF_BYTES),
            other => panic!("{other:?}"),
        }
        assert_eq!(layout_of(&file).spans().len(), 2);
    }

    #[test]
    fn safetensors_corrupt_headers_are_errors() {
        let cases = [
            r#"{"w":{"dtype":"F16","shape":[8],"data_offsets":[0,15]}}"#, // size mismatch
            r#"{"w":{"dtype":"F16","shape":[8],"data_offsets":[16,0]}}"#, // reversed
            r#"{"w":{"dtype":"F16","shape":[8],"data_offsets":[0,99999]}}"#, // past EOF
            r#"{"w":{"dtype":"F16","shape":[8]}}"#,                       // no offsets
            r#"{"w":{"dtype":"F16","shape":[8],"data_offsets":[0,16]},"v":{"dtype":"F16","shape":[8],"data_offsets":[8,24]}}"#, // overlap
            r#"{"w":{"dtype":"F16","shape":[8],"data_offsets":[0,16]}"#, // bad JSON
            r#"{"w":{"dtype":"F16","shape":[18446744073709551615,4],"data_offsets":[0,16]}}"#, // overflow
        ];
        for json in cases {
            let file = safetensors_file(json, 32);
            assert!(parse_whole(&file).is_err(), "accepted {json}");
        }
    }

    #[test]
    fn unknown_formats_are_none() {
        assert!(matches!(
            parse_whole(b"hello world, this is plain text"),
            Ok(None)
        ));
        assert!(matches!(parse_whole(&[0xFFu8; 64]), Ok(None)));
        assert!(matches!(parse_whole(b"tiny"), Ok(None)));
        // Huge claimed JSON length: not safetensors.
        let mut file = u64::MAX.to_le_bytes().to_vec();
        file.extend_from_slice(b"{}");
        assert!(matches!(parse_whole(&file), Ok(None)));
    }

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
    fn text_sniffing() {
        assert!(sniff_text(b"{\"vocab\": {\"hello\": 1}}\n"));
        assert!(sniff_text("naïve café\tüber\n".as_bytes()));
        let cut = "ab€".as_bytes();
        assert!(
            sniff_text(&cut[..cut.len() - 1]),
            "a character cut at the end of head"
        );
        assert!(!sniff_text(b"GGUF\x03\x00\x00\x00"));
        assert!(!sniff_text(&[0xC3, 0x28, b'a', b'b', b'c', b'd', b'e']));
        assert!(!sniff_text(b""));
        assert_eq!(
            hint_from_name(Path::new("x/tokenizer.json")),
            Some(DtypeHint::Text)
        );
        assert_eq!(hint_from_name(Path::new("model.safetensors")), None);
    }

    /// Real files from `fetch-real-models.sh`, when present.
    fn testdata(rel: &str) -> Option<Vec<u8>> {
        let dir = std::env::var_os("NITRO_TESTDATA")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/nitro-testdata"))
            })?;
        let path = dir.join(rel);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("skipping: {} not available ({e})", path.display());
                None
            }
        }
    }

    fn parse_growing(file: &[u8]) -> Layout {
        let mut head_len = 64 << 10;
        loop {
            let head = &file[..head_len.min(file.len())];
            match Layout::parse(head, file.len() as u64) {
                Ok(Some(Parsed::Layout(l))) => return l,
                Ok(Some(Parsed::NeedMore(n))) => {
                    assert!(n > head.len(), "no progress");
                    head_len = n;
                }
                other => panic!("{other:?}"),
            }
        }
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

    #[test]
    fn real_safetensors_parses() {
        let Some(file) = testdata("minilm/model.safetensors") else {
            return;
        };
        let layout = parse_growing(&file);
        let tensors = &layout.spans()[1..];
        let f32_bytes: u64 = tensors
            .iter()
            .filter(|s| s.hint == DtypeHint::F32)
            .map(|s| s.end - s.start)
            .sum();
        assert!(f32_bytes > 90_000_000, "{f32_bytes}");
        assert_eq!(
            tensors
                .iter()
                .filter(|s| s.hint == DtypeHint::Unknown)
                .count(),
            1,
            "one I64 tensor"
        );
        assert_eq!(
            layout.hint_for(layout.data_start(), file.len() as u64),
            DtypeHint::F32
        );
        assert_eq!(tensors.last().map(|s| s.end), Some(file.len() as u64));
    }
}
