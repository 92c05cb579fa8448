//! BF16 safetensors test data, shared by the compressed-tier tests.

use std::io::Write;
use std::path::Path;

/// A BF16 safetensors file of normally distributed weights (like a real checkpoint: exponents
/// cluster, mantissas are noise), `tensors` tensors of `elems` elements each.
pub fn write_bf16_safetensors(path: &Path, tensors: usize, elems: usize, seed: u64) -> Vec<u8> {
    let mut header = String::from("{");
    for t in 0..tensors {
        let b = t * elems * 2;
        header += &format!(
            "\"w{t}\":{{\"dtype\":\"BF16\",\"shape\":[{elems}],\"data_offsets\":[{b},{}]}},",
            b + elems * 2
        );
    }
    header.pop();
    header += "}";
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let mut seed = seed | 1;
    let mut uniform = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..tensors * elems / 2 {
        // Box-Muller: two normals, scaled like a weight matrix (std 0.02).
        let (u1, u2) = (uniform().max(1e-12), uniform());
        let r = (-2.0 * u1.ln()).sqrt() * 0.02;
        for z in [
            r * (2.0 * std::f64::consts::PI * u2).cos(),
            r * (2.0 * std::f64::consts::PI * u2).sin(),
        ] {
            let bits = (z as f32).to_bits();
            let bf16 = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
            out.extend_from_slice(&bf16.to_le_bytes());
        }
    }
    let mut f = std::fs::File::create(path).expect("create source file");
    f.write_all(&out).expect("write source file");
    f.sync_all().expect("sync source file");
    out
}
