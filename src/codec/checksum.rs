//! Frame checksums.
//!
//! Every decoded frame is verified before its bytes reach a reader, so the hash sits on the hot
//! decode path: it has to run well above the codec's own speed (≥ 10 GB/s) while still catching
//! every random corruption. XXH64 fits: four independent 64-bit multiply–rotate lanes (the
//! compiler keeps them in registers, no SIMD needed), full 64-bit avalanche at the end, a
//! well-studied distribution (SMHasher clean), and a published reference to test against. It is
//! written out here (~60 lines) rather than pulled in as a dependency.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn merge(acc: u64, lane: u64) -> u64 {
    (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

#[inline(always)]
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

#[inline(always)]
fn read_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

/// XXH64 of `data` with `seed` (bit-exact with the reference implementation).
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len_bytes = data.len() as u64;
    let stripes = data.chunks_exact(32);
    let tail = stripes.remainder();
    let mut hash = if data.len() >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        for stripe in stripes {
            v1 = round(v1, read_u64(&stripe[0..8]));
            v2 = round(v2, read_u64(&stripe[8..16]));
            v3 = round(v3, read_u64(&stripe[16..24]));
            v4 = round(v4, read_u64(&stripe[24..32]));
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = merge(h, v1);
        h = merge(h, v2);
        h = merge(h, v3);
        merge(h, v4)
    } else {
        seed.wrapping_add(P5)
    };
    hash = hash.wrapping_add(len_bytes);

    let mut words = tail.chunks_exact(8);
    for word in &mut words {
        hash ^= round(0, read_u64(word));
        hash = hash.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    let mut rest = words.remainder();
    if rest.len() >= 4 {
        hash ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        hash = hash.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(P5);
        hash = hash.rotate_left(11).wrapping_mul(P1);
    }

    hash ^= hash >> 33;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(P3);
    hash ^ (hash >> 32)
}

#[cfg(test)]
mod tests {
    use super::xxh64;

    #[test]
    fn matches_reference_vectors() {
        // Expected values come from the C reference implementation (as pinned by twox-hash's tests).
        let hundred: Vec<u8> = (0..100u8).collect();
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(xxh64(&[42], 0), 0x0a9e_dece_beb0_3ae4);
        assert_eq!(xxh64(b"Hello, world!\0", 0), 0x7b06_c531_ea43_e89f);
        assert_eq!(xxh64(&hundred, 0), 0x6ac1_e580_3216_6597);
        assert_eq!(xxh64(b"", 0xae05_4331_1b70_2d91), 0x4b6a_04fc_df7a_4672);
        assert_eq!(
            xxh64(&hundred, 0xae05_4331_1b70_2d91),
            0x567e_355e_0682_e1f1
        );
        assert_eq!(
            xxh64(b"x", u64::MAX - 0x27D4_EB2F_1656_67C5),
            0xf953_d52c_12a9_f5fb
        );
    }

    #[test]
    fn every_single_bit_flip_changes_the_hash() {
        let data: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let base = xxh64(&data, 7);
        let mut copy = data.clone();
        for i in 0..copy.len() {
            for bit in 0..8 {
                copy[i] ^= 1 << bit;
                assert_ne!(
                    xxh64(&copy, 7),
                    base,
                    "flip at byte {i} bit {bit} went unseen"
                );
                copy[i] ^= 1 << bit;
            }
        }
    }
}
