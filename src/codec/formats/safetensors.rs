//! safetensors: an 8-byte length, a JSON header naming each tensor's dtype, shape and byte range,
//! then the data. The header is JSON written by whoever made the file, so every field is checked
//! (dtype × shape against the byte range, ranges against the file) before it becomes a span.

use super::{Format, FormatError, Layout, Parsed, Span, corrupt};
use crate::codec::DtypeHint;

/// safetensors caps its JSON header at 100 MB; anything larger is not a safetensors file.
const SAFETENSORS_MAX_HEADER_BYTES: u64 = 100_000_000;

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

pub(super) fn parse_safetensors(head: &[u8], file_len: u64) -> Result<Option<Parsed>, FormatError> {
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
        spans.push(tensor_span(name, info, data_start, file_len)?);
    }
    Layout::new(F, file_len, data_start, spans).map(|l| Some(Parsed::Layout(l)))
}

/// The span of one tensor entry of the header, checked: its dtype and shape must fill its byte
/// range exactly, and the range must lie inside the file.
fn tensor_span(
    name: &str,
    info: &serde_json::Value,
    data_start: u64,
    file_len: u64,
) -> Result<Span, FormatError> {
    const F: Format = Format::Safetensors;
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
    Ok(Span {
        start,
        end: stop,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::super::SNIFF_BYTES;
    use super::super::test_support::{layout_of, parse_growing, parse_whole, testdata};
    use super::*;

    fn safetensors_file(json: &str, data_bytes: usize) -> Vec<u8> {
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json.as_bytes());
        file.resize(file.len() + data_bytes, 0xAB);
        file
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
