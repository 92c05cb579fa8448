//! Human byte sizes for flags: `8G`, `512M`, `1.5GiB`, `64KiB`, `4096B`.
//!
//! What a bare number means depends on the flag: `--pool` keeps the bare float of the tool this
//! replaces, which meant gigabytes (`--pool 8.0`); `--chunk` and `--readahead` take a bare number as
//! bytes (`--chunk 1048576`, `--readahead 4096`), because reading those as GiB turned them into
//! petabytes.

/// A size where a bare number means GiB (`--pool 8.0`); K/M/G/T and KiB/MiB/GiB/TiB are binary
/// multiples.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse(text, 1 << 30, false)
}

/// A size where a bare number means bytes (`--chunk 1048576`); units as for `parse_size`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse(text, 1, false)
}

/// As `parse_bytes`, and zero is allowed (`--readahead 0` disables prefetch).
pub fn parse_bytes_or_zero(text: &str) -> Result<u64, String> {
    parse(text, 1, true)
}

/// A byte count for people: `512 B`, `3.2 MiB`, `1.50 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{bytes} B"),
        _ if v >= 100.0 => format!("{v:.0} {}", UNITS[u]),
        _ => format!("{v:.1} {}", UNITS[u]),
    }
}

fn parse(text: &str, bare: u64, zero_ok: bool) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (try 8G, 512M, 1.5GiB)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" => bare,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit '{unit}' (use K, M, G, T)"
            ));
        }
    };
    if zero_ok && value == 0.0 {
        return Ok(0);
    }
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("'{text}' is out of range"));
    }
    if mult == 1 && bytes.fract() != 0.0 {
        return Err(format!("'{text}' is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, parse_bytes_or_zero, parse_size};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("8.0"), Ok(8 << 30));
        assert_eq!(parse_size("8"), Ok(8 << 30));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn bare_numbers_are_bytes_for_chunk_and_readahead() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes(" 65536 "), Ok(65536));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert_eq!(parse_bytes("1.5K"), Ok(1536));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1.5").is_err(), "fractional bytes");
        assert!(parse_bytes("0.5B").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5X").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn readahead_zero_disables() {
        assert_eq!(parse_bytes_or_zero("0"), Ok(0));
        assert_eq!(parse_bytes_or_zero("0K"), Ok(0));
        assert_eq!(parse_bytes_or_zero("0MiB"), Ok(0));
        assert_eq!(parse_bytes_or_zero("4096"), Ok(4096));
        assert_eq!(parse_bytes_or_zero("16MiB"), Ok(16 << 20));
        assert!(parse_bytes_or_zero("0X").is_err());
        assert!(parse_bytes_or_zero("x").is_err());
    }
}
