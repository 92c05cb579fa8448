//! The codec benchmark (`nitro-uring bench codec PATH...`) on the real test files, from the test
//! runner, and two diagnostics of `choose`:
//!
//! ```text
//! cargo test --release -p nitro-uring-bench --test codec_bench -- --ignored --nocapture
//! ```
//!
//! Files come from `NITRO_BENCH_FILES` (colon-separated) or, by default, the models and text
//! files of `fetch-real-models.sh` under `$NITRO_TESTDATA` (default `~/.cache/nitro-testdata`).
//! JSON goes to `NITRO_BENCH_JSON` when set.

use std::path::PathBuf;

fn default_files() -> Vec<PathBuf> {
    let dir = std::env::var_os("NITRO_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/nitro-testdata")
        });
    [
        "gemma-3-270m-q4_k_m.gguf",
        "minilm/model.safetensors",
        "whisper-base/model.bin",
        "whisper-base/tokenizer.json",
        "whisper-base/vocabulary.txt",
        "minilm/tokenizer.json",
        "minilm/vocab.txt",
    ]
    .iter()
    .map(|rel| dir.join(rel))
    .filter(|p| {
        let present = p.exists();
        if !present {
            eprintln!(
                "skipping {} (not present; run fetch-real-models.sh)",
                p.display()
            );
        }
        present
    })
    .collect()
}

#[test]
#[ignore = "benchmark: run explicitly with --release -- --ignored --nocapture"]
fn bench_codec_on_real_files() {
    let files = match std::env::var("NITRO_BENCH_FILES") {
        Ok(list) => list.split(':').map(PathBuf::from).collect(),
        Err(_) => default_files(),
    };
    if files.is_empty() {
        eprintln!("no benchmark files present; skipping");
        return;
    }
    let json = std::env::var_os("NITRO_BENCH_JSON").map(PathBuf::from);
    if let Err(e) = nitro_uring_bench::codec::run(&files, json.as_deref(), true) {
        panic!("codec benchmark failed: {e:#}");
    }
}

/// Per-chunk predicted (from `sample_stats`) vs actual ratios, to calibrate `choose`:
/// `NITRO_BENCH_FILES=... cargo test --release -p nitro-uring-bench --test codec_bench calibrate -- --ignored --nocapture`
#[test]
#[ignore = "diagnostic: run explicitly"]
fn calibrate_choose() {
    use nitro_uring::codec::{Codec, DtypeHint, Scratch, choose, encode_chunk, sample_stats};
    let files = match std::env::var("NITRO_BENCH_FILES") {
        Ok(list) => list.split(':').map(PathBuf::from).collect(),
        Err(_) => default_files(),
    };
    let mut scratch = Scratch::new(64 << 10);
    let mut block = Vec::new();
    for path in files {
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        println!("{}", path.display());
        println!(
            "chunk  lanes(bits)              pairs      p16   p32  | zstd  s16   s32  | choose"
        );
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            let st = sample_stats(chunk);
            let mut actual = |codec| {
                encode_chunk(
                    chunk,
                    codec,
                    64 << 10,
                    f64::NEG_INFINITY,
                    &mut scratch,
                    &mut block,
                )
                .map_or(f64::NAN, |n| n as f64 / chunk.len() as f64)
            };
            let (text, s16, s32) = (
                actual(Codec::Zstd),
                actual(Codec::Planes16),
                actual(Codec::Planes32),
            );
            println!(
                "{i:5}  {:4.2} {:4.2} {:4.2} {:4.2}  {:4.2} {:4.2}  {:.3} {:.3} | {text:.3} {s16:.3} {s32:.3} | {}",
                st.lane_bits[0],
                st.lane_bits[1],
                st.lane_bits[2],
                st.lane_bits[3],
                st.pair_bits[0],
                st.pair_bits[1],
                st.planes16_ratio(),
                st.planes32_ratio(),
                choose(chunk, DtypeHint::Unknown).name()
            );
        }
    }
}

/// Cost of `choose` per 1 MiB chunk by data shape, against a plain copy of the chunk.
#[test]
#[ignore = "diagnostic: run explicitly"]
fn choose_cost() {
    use nitro_uring::codec::{DtypeHint, choose};
    use std::hint::black_box;
    use std::time::Instant;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let noise: Vec<u8> = (0..1 << 20).map(|_| next() as u8).collect();
    let floats: Vec<u8> = (0..1 << 18)
        .flat_map(|_| {
            let u = (next() % 10_000) as f32 / 10_000.0 - 0.5;
            (u * u * u * 0.1).to_le_bytes()
        })
        .collect();
    let mut copy = vec![0u8; 1 << 20];
    let reps = 2000;
    let t = Instant::now();
    for _ in 0..reps {
        copy.copy_from_slice(black_box(&noise));
        black_box(&mut copy);
    }
    let copy_ns = t.elapsed().as_nanos() as f64 / reps as f64;
    for (name, data) in [("noise", &noise), ("f32", &floats)] {
        let t = Instant::now();
        for _ in 0..reps * 10 {
            black_box(choose(black_box(data), DtypeHint::Unknown));
        }
        let ns = t.elapsed().as_nanos() as f64 / (reps * 10) as f64;
        println!(
            "{name}: choose {ns:.0} ns = {:.2}% of a 1 MiB copy ({copy_ns:.0} ns)",
            100.0 * ns / copy_ns
        );
    }
}
