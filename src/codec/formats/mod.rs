//! Weight-file formats: which byte ranges hold which dtype.
//!
//! Sampling a chunk costs little, but the file's own header is free and exact: a safetensors or
//! GGUF header says, per tensor, where its bytes are and what they are, so the cache can skip
//! sampling for quantized tensors (most of a GGUF file) and pick the right plane split for float
//! tensors even where a chunk's sample would be ambiguous (BF16 vs F32 look alike per lane).
//!
//! File bytes are untrusted input: every count and offset is checked against the file length
//! before it is used, so a malformed header is an error, never a panic or a huge allocation.

mod gguf;
mod gguf_reader;
mod safetensors;
mod text;

pub use text::{hint_from_name, sniff_text};

use super::DtypeHint;
use gguf::parse_gguf;
use safetensors::parse_safetensors;
use std::fmt;

/// Bytes needed to recognize either format.
const SNIFF_BYTES: usize = 16;

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

    /// Bytes the whole file is expected to take in the compressed tier: each span at its hint's
    /// [`DtypeHint::expected_ratio`], bytes no span covers (and spans of unknown dtype) at
    /// `default`'s (the file's own hint where the layout says nothing).
    pub fn expected_stored_bytes(&self, default: DtypeHint) -> u64 {
        let mut covered = 0u64;
        let mut stored = 0.0f64;
        for span in &self.spans {
            let len = span.end.saturating_sub(span.start);
            covered = covered.saturating_add(len);
            let hint = match span.hint {
                DtypeHint::Unknown => default,
                h => h,
            };
            stored += len as f64 * hint.expected_ratio();
        }
        let rest = self.file_len.saturating_sub(covered);
        (stored + rest as f64 * default.expected_ratio()).ceil() as u64
    }

    /// Build from spans (sorted here); fails on overlaps or spans past the end of the file.
    pub fn new(
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

/// Helpers of the format tests: whole-file parsing, and the real files of `fetch-real-models.sh`.
#[cfg(test)]
mod test_support {
    use super::{FormatError, Layout, Parsed};
    use std::path::Path;

    pub(super) fn parse_whole(file: &[u8]) -> Result<Option<Parsed>, FormatError> {
        Layout::parse(file, file.len() as u64)
    }

    pub(super) fn layout_of(file: &[u8]) -> Layout {
        match parse_whole(file) {
            Ok(Some(Parsed::Layout(l))) => l,
            other => panic!("expected a layout, got {other:?}"),
        }
    }

    /// Real files from `fetch-real-models.sh`, when present.
    pub(super) fn testdata(rel: &str) -> Option<Vec<u8>> {
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

    pub(super) fn parse_growing(file: &[u8]) -> Layout {
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
}

#[cfg(test)]
mod tests {
    use super::test_support::parse_whole;

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

    #[test]
    fn expected_stored_bytes_weighs_each_span_by_its_dtype() {
        use super::{DtypeHint, Format, Layout, Span};
        let span = |start, end, hint| Span { start, end, hint };
        let l = Layout::new(
            Format::Safetensors,
            1000,
            100,
            vec![
                span(100, 500, DtypeHint::Bf16),
                span(500, 900, DtypeHint::Quantized),
                span(900, 950, DtypeHint::Unknown),
            ],
        )
        .expect("a layout");
        // 400 BF16 at 0.70, 400 quantized at 1, and the header, the unknown span and the tail
        // (200 bytes) at the default's ratio.
        assert_eq!(l.expected_stored_bytes(DtypeHint::Unknown), 280 + 400 + 200);
        assert_eq!(l.expected_stored_bytes(DtypeHint::Text), 280 + 400 + 110);
    }
}
