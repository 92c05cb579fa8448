//! Text sniffing, for files with no weight header: tokenizers, vocabularies and configs are the
//! one kind of file plain zstd shrinks well, and their name or first bytes give them away.

use crate::codec::DtypeHint;
use std::path::Path;

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
}
