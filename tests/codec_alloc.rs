//! Once a `Scratch` is warm, encode and decode must not touch the heap: they run on every cache
//! fill and every read. Counted with a global allocator wrapper, so this file holds one test
//! (other tests running on parallel threads would be counted too).
//!
//! zstd's own contexts allocate through C `malloc`, which this counter cannot see; they are
//! created once per `Scratch` and reused (zstd resets, not frees, a context between frames).

use nitro_uring::codec::{Codec, Scratch, decode_range, encode_chunk};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn warm_scratch_encodes_and_decodes_without_allocating() {
    const CHUNK: usize = 1 << 20;
    const FRAME: usize = 64 << 10;
    // BF16-ish weights, then text, then zeros, so every codec has frames it compresses.
    let mut state = 0x1234_5678u32;
    let mut src: Vec<u8> = (0..CHUNK / 2)
        .flat_map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = ((state >> 16) % 2000) as f32 / 1000.0 - 1.0;
            (((v * v * v).to_bits() >> 16) as u16).to_le_bytes()
        })
        .collect();
    let text = b"{\"added_tokens\": [{\"id\": 0, \"content\": \"<pad>\", \"special\": true}],\n";
    for (i, b) in src[CHUNK / 2..CHUNK * 3 / 4].iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    src[CHUNK * 3 / 4..].fill(0);

    let mut scratch = Scratch::new(FRAME);
    let mut block = Vec::with_capacity(2 * CHUNK);
    let mut out = vec![0u8; CHUNK];
    for codec in [Codec::Raw, Codec::Zstd, Codec::Planes16, Codec::Planes32] {
        // Warm-up: first use creates codec contexts and tables.
        encode_chunk(
            &src,
            codec,
            FRAME,
            f64::NEG_INFINITY,
            &mut scratch,
            &mut block,
        )
        .expect("encodes");
        decode_range(&block, 0, &mut out, &mut scratch).expect("decodes");
        decode_range(&block, 1000, &mut out[..5000], &mut scratch).expect("decodes");

        let encode_allocs = allocations_during(|| {
            for _ in 0..3 {
                encode_chunk(
                    &src,
                    codec,
                    FRAME,
                    f64::NEG_INFINITY,
                    &mut scratch,
                    &mut block,
                )
                .expect("encodes");
            }
        });
        assert_eq!(encode_allocs, 0, "{codec:?}: encode allocated once warm");

        let decode_allocs = allocations_during(|| {
            decode_range(&block, 0, &mut out, &mut scratch).expect("whole chunk");
            for offset in (0..CHUNK - 4096).step_by(61_441) {
                decode_range(&block, offset, &mut out[..4096], &mut scratch).expect("4 KiB read");
            }
            decode_range(&block, FRAME - 10, &mut out[..3 * FRAME], &mut scratch).expect("span");
        });
        assert_eq!(decode_allocs, 0, "{codec:?}: decode allocated once warm");
        assert_eq!(out[..3 * FRAME], src[FRAME - 10..FRAME - 10 + 3 * FRAME]);
    }
}
