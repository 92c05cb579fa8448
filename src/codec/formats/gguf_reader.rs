//! A bounds-checked reader over the head of a GGUF file. GGUF counts and lengths are 64-bit and
//! come from the file: every one is checked against the bytes the rest of the file could hold
//! before anything loops over it or slices by it, so a lying header fails instead of allocating
//! or running past the buffer.

/// Arrays of arrays nested deeper than this are treated as corrupt.
const GGUF_MAX_DEPTH: u32 = 8;

pub(super) enum GgufFail {
    /// The header needs at least this many bytes of the file.
    Short(u64),
    Corrupt(String),
}

/// A bounds-checked little-endian reader over the head of a GGUF file.
pub(super) struct Reader<'a> {
    pub(super) head: &'a [u8],
    pub(super) pos: u64,
    pub(super) file_len: u64,
}

impl Reader<'_> {
    pub(super) fn take(&mut self, bytes: u64) -> Result<&[u8], GgufFail> {
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

    pub(super) fn skip(&mut self, bytes: u64) -> Result<(), GgufFail> {
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

    pub(super) fn u32(&mut self) -> Result<u32, GgufFail> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    pub(super) fn u64(&mut self) -> Result<u64, GgufFail> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A count of items that each take at least `min_item_bytes`: reject counts that could not fit
    /// in the rest of the file before looping over them.
    pub(super) fn count(&mut self, min_item_bytes: u64, what: &str) -> Result<u64, GgufFail> {
        let n = self.u64()?;
        let room = self.file_len.saturating_sub(self.pos);
        if n.checked_mul(min_item_bytes).is_none_or(|b| b > room) {
            return Err(GgufFail::Corrupt(format!(
                "{what} count {n} cannot fit in the file"
            )));
        }
        Ok(n)
    }

    pub(super) fn string(&mut self) -> Result<&[u8], GgufFail> {
        let len = self.count(1, "string byte")?;
        self.take(len)
    }

    pub(super) fn skip_string(&mut self) -> Result<(), GgufFail> {
        let len = self.count(1, "string byte")?;
        self.skip(len)
    }

    /// Skip one metadata value of `value_type`.
    pub(super) fn skip_value(&mut self, value_type: u32, depth: u32) -> Result<(), GgufFail> {
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
