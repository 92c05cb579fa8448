//! Byte-plane split and interleave.
//!
//! Floating-point weights are near-random in their mantissa bytes but very skewed in the byte
//! that holds sign and exponent (weights cluster around a few binades). Mixed together, no
//! byte-oriented coder sees that skew; split into planes (byte `p` of every element goes to
//! plane `p`), the exponent plane entropy-codes well and the others are stored as they are
//! (ZipNN, arXiv 2411.05239). Interleave runs on every decoded frame, so it must run at memory
//! speed: the loops below work on fixed-size arrays so that the compiler sees constant trip
//! counts, drops the bounds checks and emits byte shuffles.

/// Elements per unrolled block: 64 B of 16-bit or 128 B of 32-bit elements, a few vector
/// registers; small enough that the scalar remainder loop stays short.
const BLOCK_ELEMS: usize = 32;

#[inline(always)]
fn arr<const N: usize>(s: &[u8]) -> &[u8; N] {
    s.try_into().expect("chunks_exact yields exactly N bytes")
}

#[inline(always)]
fn arr_mut<const N: usize>(s: &mut [u8]) -> &mut [u8; N] {
    s.try_into()
        .expect("chunks_exact_mut yields exactly N bytes")
}

/// Split 16-bit elements: `p0[i] = src[2i]`, `p1[i] = src[2i + 1]`.
pub fn split2(src: &[u8], p0: &mut [u8], p1: &mut [u8]) {
    let elems = p0.len();
    assert!(
        p1.len() == elems && src.len() == 2 * elems,
        "split2: plane sizes disagree"
    );
    let mut s = src.chunks_exact(2 * BLOCK_ELEMS);
    let mut a = p0.chunks_exact_mut(BLOCK_ELEMS);
    let mut b = p1.chunks_exact_mut(BLOCK_ELEMS);
    for ((s, a), b) in (&mut s).zip(&mut a).zip(&mut b) {
        let (s, a, b) = (
            arr::<{ 2 * BLOCK_ELEMS }>(s),
            arr_mut::<BLOCK_ELEMS>(a),
            arr_mut::<BLOCK_ELEMS>(b),
        );
        for i in 0..BLOCK_ELEMS {
            a[i] = s[2 * i];
            b[i] = s[2 * i + 1];
        }
    }
    let tail = s.remainder().chunks_exact(2);
    for ((s, a), b) in tail.zip(a.into_remainder()).zip(b.into_remainder()) {
        *a = s[0];
        *b = s[1];
    }
}

/// Inverse of [`split2`].
pub fn interleave2(p0: &[u8], p1: &[u8], dst: &mut [u8]) {
    let elems = p0.len();
    assert!(
        p1.len() == elems && dst.len() == 2 * elems,
        "interleave2: plane sizes disagree"
    );
    let mut d = dst.chunks_exact_mut(2 * BLOCK_ELEMS);
    let mut a = p0.chunks_exact(BLOCK_ELEMS);
    let mut b = p1.chunks_exact(BLOCK_ELEMS);
    for ((d, a), b) in (&mut d).zip(&mut a).zip(&mut b) {
        let (d, a, b) = (
            arr_mut::<{ 2 * BLOCK_ELEMS }>(d),
            arr::<BLOCK_ELEMS>(a),
            arr::<BLOCK_ELEMS>(b),
        );
        for i in 0..BLOCK_ELEMS {
            d[2 * i] = a[i];
            d[2 * i + 1] = b[i];
        }
    }
    let tail = d.into_remainder().chunks_exact_mut(2);
    for ((d, a), b) in tail.zip(a.remainder()).zip(b.remainder()) {
        d[0] = *a;
        d[1] = *b;
    }
}

/// Split 32-bit elements: `pk[i] = src[4i + k]`.
pub fn split4(src: &[u8], p0: &mut [u8], p1: &mut [u8], p2: &mut [u8], p3: &mut [u8]) {
    let elems = p0.len();
    assert!(
        p1.len() == elems && p2.len() == elems && p3.len() == elems && src.len() == 4 * elems,
        "split4: plane sizes disagree"
    );
    let mut s = src.chunks_exact(4 * BLOCK_ELEMS);
    let mut a = p0.chunks_exact_mut(BLOCK_ELEMS);
    let mut b = p1.chunks_exact_mut(BLOCK_ELEMS);
    let mut c = p2.chunks_exact_mut(BLOCK_ELEMS);
    let mut e = p3.chunks_exact_mut(BLOCK_ELEMS);
    for ((((s, a), b), c), e) in (&mut s).zip(&mut a).zip(&mut b).zip(&mut c).zip(&mut e) {
        let s = arr::<{ 4 * BLOCK_ELEMS }>(s);
        let (a, b) = (arr_mut::<BLOCK_ELEMS>(a), arr_mut::<BLOCK_ELEMS>(b));
        let (c, e) = (arr_mut::<BLOCK_ELEMS>(c), arr_mut::<BLOCK_ELEMS>(e));
        for i in 0..BLOCK_ELEMS {
            a[i] = s[4 * i];
            b[i] = s[4 * i + 1];
            c[i] = s[4 * i + 2];
            e[i] = s[4 * i + 3];
        }
    }
    let tail = s.remainder().chunks_exact(4);
    let rest = a
        .into_remainder()
        .iter_mut()
        .zip(b.into_remainder())
        .zip(c.into_remainder());
    for ((s, ((a, b), c)), e) in tail.zip(rest).zip(e.into_remainder()) {
        *a = s[0];
        *b = s[1];
        *c = s[2];
        *e = s[3];
    }
}

/// Inverse of [`split4`].
pub fn interleave4(p0: &[u8], p1: &[u8], p2: &[u8], p3: &[u8], dst: &mut [u8]) {
    let elems = p0.len();
    assert!(
        p1.len() == elems && p2.len() == elems && p3.len() == elems && dst.len() == 4 * elems,
        "interleave4: plane sizes disagree"
    );
    let mut d = dst.chunks_exact_mut(4 * BLOCK_ELEMS);
    let mut a = p0.chunks_exact(BLOCK_ELEMS);
    let mut b = p1.chunks_exact(BLOCK_ELEMS);
    let mut c = p2.chunks_exact(BLOCK_ELEMS);
    let mut e = p3.chunks_exact(BLOCK_ELEMS);
    for ((((d, a), b), c), e) in (&mut d).zip(&mut a).zip(&mut b).zip(&mut c).zip(&mut e) {
        let d = arr_mut::<{ 4 * BLOCK_ELEMS }>(d);
        let (a, b) = (arr::<BLOCK_ELEMS>(a), arr::<BLOCK_ELEMS>(b));
        let (c, e) = (arr::<BLOCK_ELEMS>(c), arr::<BLOCK_ELEMS>(e));
        for i in 0..BLOCK_ELEMS {
            d[4 * i] = a[i];
            d[4 * i + 1] = b[i];
            d[4 * i + 2] = c[i];
            d[4 * i + 3] = e[i];
        }
    }
    let tail = d.into_remainder().chunks_exact_mut(4);
    let rest = a.remainder().iter().zip(b.remainder()).zip(c.remainder());
    for ((d, ((a, b), c)), e) in tail.zip(rest).zip(e.remainder()) {
        d[0] = *a;
        d[1] = *b;
        d[2] = *c;
        d[3] = *e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + i / 7) as u8).collect()
    }

    #[test]
    fn split2_round_trips_every_length() {
        for elems in 0..200 {
            let src = bytes(2 * elems);
            let (mut p0, mut p1) = (vec![0; elems], vec![0; elems]);
            split2(&src, &mut p0, &mut p1);
            for i in 0..elems {
                assert_eq!((p0[i], p1[i]), (src[2 * i], src[2 * i + 1]));
            }
            let mut back = vec![0xAA; 2 * elems];
            interleave2(&p0, &p1, &mut back);
            assert_eq!(back, src);
        }
    }

    #[test]
    fn split4_round_trips_every_length() {
        for elems in 0..200 {
            let src = bytes(4 * elems);
            let mut p = [
                vec![0; elems],
                vec![0; elems],
                vec![0; elems],
                vec![0; elems],
            ];
            let [p0, p1, p2, p3] = &mut p;
            split4(&src, p0, p1, p2, p3);
            for i in 0..elems {
                for k in 0..4 {
                    assert_eq!(p[k][i], src[4 * i + k]);
                }
            }
            let mut back = vec![0xAA; 4 * elems];
            interleave4(&p[0], &p[1], &p[2], &p[3], &mut back);
            assert_eq!(back, src);
        }
    }
}
