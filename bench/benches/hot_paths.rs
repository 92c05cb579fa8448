//! Micro-benchmarks of the hot pieces of the read path (divan):
//!
//! - `arena_hit_copy`: what a cache hit costs in user space — pin the chunk in the index, take the
//!   arena slice, copy the requested bytes out (the copy stands for the kernel's copy of the reply).
//!   `spanning` is a 1 MiB read that straddles two chunks: two pins and two copies into scratch.
//! - `index_pin`: one lookup + pin + unpin, from 1, 2 and 4 threads at once; `random_keys` spreads
//!   over 64 shards, `one_hot_key` makes every thread hit the same shard lock and pin counter.
//! - `ring`: one io_uring read submitted and reaped (4 KiB from a file in the page cache, plain and
//!   into a registered buffer), a batch of 32, and the eventfd wake-up round trip.
//!
//! Run: `cargo bench --bench hot_paths` (add `-- --sample-count 100` etc. for divan options).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

use divan::Bencher;
use divan::counter::BytesCount;
use nitro_ring::{Completion, Ring};
use nitro_uring::arena::{Arena, Block};
use nitro_uring::index::{Index, Key, SlotView};

const CHUNK: usize = 1 << 20;

fn main() {
    divan::main();
}

/// An arena and index holding `chunks` published 1 MiB chunks of file 1 (patterned bytes).
fn filled(chunks: u32) -> (Arena, Index) {
    let arena = Arena::new(chunks as usize * CHUNK + CHUNK, CHUNK, false).expect("arena");
    let index = Index::new(chunks * 4 + 256, 64);
    for c in 0..chunks {
        let block: Block = arena.alloc(CHUNK).expect("block");
        // SAFETY: the block was just allocated for us alone and is CHUNK bytes long.
        let bytes = unsafe { std::slice::from_raw_parts_mut(arena.block_ptr(block), CHUNK) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(c) as u8;
        }
        let key = Key {
            file: 1,
            chunk: u64::from(c),
        };
        let view = SlotView::raw(block, CHUNK);
        index.set(c, key, view);
        index.publish(c, key, 0);
    }
    (arena, index)
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

mod arena_hit_copy {
    use super::*;

    const CHUNKS: u32 = 256;

    /// A read inside one chunk: one pin, one copy of `size` bytes.
    #[divan::bench(args = [4096, 131_072, 1_048_576], sample_count = 1000)]
    fn one_chunk(bencher: Bencher, size: usize) {
        let (arena, index) = filled(CHUNKS);
        let mut out = vec![0u8; size];
        let mut state = 0x1234_5678_u64;
        bencher.counter(BytesCount::new(size)).bench_local(|| {
            let r = xorshift(&mut state);
            let key = Key {
                file: 1,
                chunk: r % u64::from(CHUNKS),
            };
            let start = ((r >> 32) as usize % (CHUNK - size + 1)) & !4095;
            let pin = index.pin(key, 1).expect("cached");
            let bytes = pin.raw_bytes(&arena).expect("raw");
            out.copy_from_slice(&bytes[start..start + size]);
            divan::black_box(&out);
        });
    }

    /// A 1 MiB read starting half-way into a chunk: two pins, two half copies into scratch.
    #[divan::bench(sample_count = 1000)]
    fn spanning_1m(bencher: Bencher) {
        let (arena, index) = filled(CHUNKS);
        let mut out = vec![0u8; CHUNK];
        let mut state = 0x9abc_def0_u64;
        bencher.counter(BytesCount::new(CHUNK)).bench_local(|| {
            let first = xorshift(&mut state) % u64::from(CHUNKS - 1);
            let half = CHUNK / 2;
            for (i, c) in [first, first + 1].into_iter().enumerate() {
                let pin = index.pin(Key { file: 1, chunk: c }, 1).expect("cached");
                let bytes = pin.raw_bytes(&arena).expect("raw");
                let (src, dst) = if i == 0 {
                    (&bytes[half..], &mut out[..half])
                } else {
                    (&bytes[..half], &mut out[half..])
                };
                dst.copy_from_slice(src);
            }
            divan::black_box(&out);
        });
    }
}

mod index_pin {
    use super::*;

    const KEYS: u32 = 4096;

    fn index() -> Index {
        let index = Index::new(KEYS * 2, 64);
        for c in 0..KEYS {
            let key = Key {
                file: 7,
                chunk: u64::from(c),
            };
            let block = Block {
                offset: u64::from(c) * CHUNK as u64,
                pages: 256,
            };
            let view = SlotView::raw(block, CHUNK);
            index.set(c, key, view);
            index.publish(c, key, 0);
        }
        index
    }

    /// Lookup + pin + unpin of a random key (shard locks spread the threads).
    #[divan::bench(threads = [1, 2, 4])]
    fn random_keys(bencher: Bencher) {
        let index = index();
        let seed = std::sync::atomic::AtomicU64::new(1);
        bencher
            .with_inputs(|| {
                let mut s =
                    seed.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed) | 1;
                Key {
                    file: 7,
                    chunk: xorshift(&mut s) % u64::from(KEYS),
                }
            })
            .bench_values(|key| {
                let pin = index.pin(key, 1).expect("present");
                divan::black_box(pin.view().len)
            });
    }

    /// Every thread pins the same key: one shard lock, one pin counter, all cores on one line.
    #[divan::bench(threads = [1, 2, 4])]
    fn one_hot_key(bencher: Bencher) {
        let index = index();
        let key = Key { file: 7, chunk: 42 };
        bencher.bench(|| {
            let pin = index.pin(key, 1).expect("present");
            divan::black_box(pin.view().len)
        });
    }
}

mod ring {
    use super::*;

    fn page_cached_file() -> File {
        let path = std::env::temp_dir().join(format!("nitro-bench-ring-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        let _ = std::fs::remove_file(&path);
        f.write_all(&vec![7u8; 8 << 20]).expect("write");
        f
    }

    fn round_trip(ring: &mut Ring, fd: i32, buf: *mut u8, off: u64, done: &mut Vec<Completion>) {
        // SAFETY: `buf` holds 4096 bytes that nothing else touches until the completion is reaped.
        assert!(unsafe { ring.push_read(fd, off, buf, 4096, 1) });
        done.clear();
        while done.is_empty() {
            ring.wait(true, done).expect("wait");
        }
        assert_eq!(done[0].result, 4096);
    }

    /// Submit one 4 KiB read (page-cache hit) and reap it: the ring's fixed cost per fill.
    #[divan::bench]
    fn read_4k_round_trip(bencher: Bencher) {
        let file = page_cached_file();
        let mut ring = Ring::new(64).expect("io_uring");
        let mut buf = vec![0u8; 4096];
        let mut done = Vec::with_capacity(64);
        let mut off = 0u64;
        bencher.bench_local(|| {
            round_trip(
                &mut ring,
                file.as_raw_fd(),
                buf.as_mut_ptr(),
                off,
                &mut done,
            );
            off = (off + 4096) % (8 << 20);
        });
    }

    /// The same into a registered buffer (READ_FIXED), as the engine reads into the arena.
    #[divan::bench]
    fn read_4k_round_trip_fixed(bencher: Bencher) {
        let file = page_cached_file();
        let mut buf = vec![0u8; 1 << 20];
        let mut ring = Ring::new(64).expect("io_uring");
        // SAFETY: `buf` is declared before `ring`, so it is dropped after it, and it is never moved.
        unsafe { ring.register_region(buf.as_mut_ptr(), buf.len()) }.expect("register");
        let mut done = Vec::with_capacity(64);
        let mut off = 0u64;
        bencher.bench_local(|| {
            round_trip(
                &mut ring,
                file.as_raw_fd(),
                buf.as_mut_ptr(),
                off,
                &mut done,
            );
            off = (off + 4096) % (8 << 20);
        });
    }

    /// 32 reads of 4 KiB submitted in one go, then all reaped (per-batch time; /32 per read).
    #[divan::bench]
    fn read_4k_batch_32(bencher: Bencher) {
        let file = page_cached_file();
        let mut bufs = vec![0u8; 32 * 4096];
        let mut ring = Ring::new(64).expect("io_uring");
        let mut done = Vec::with_capacity(64);
        bencher
            .counter(divan::counter::ItemsCount::new(32usize))
            .bench_local(|| {
                for i in 0..32u64 {
                    // SAFETY: each read has its own 4 KiB of `bufs`, untouched until reaped below.
                    assert!(unsafe {
                        ring.push_read(
                            file.as_raw_fd(),
                            i * 4096,
                            bufs.as_mut_ptr().add(i as usize * 4096),
                            4096,
                            i,
                        )
                    });
                }
                done.clear();
                while done.len() < 32 {
                    ring.wait(true, &mut done).expect("wait");
                }
            });
    }

    /// Wake the ring (eventfd write) and see the wake-up come back as a completion.
    #[divan::bench]
    fn wake_round_trip(bencher: Bencher) {
        let mut ring = Ring::new(8).expect("io_uring");
        let waker = ring.waker();
        let mut done = Vec::new();
        bencher.bench_local(|| {
            waker.wake();
            while !ring.wait(true, &mut done).expect("wait") {}
        });
    }
}
