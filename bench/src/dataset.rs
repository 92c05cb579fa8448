//! The benchmark's data: either the user's directory (scanned), or a generated model directory that
//! looks like a sharded Hugging Face checkpoint: `config.json`, `model.safetensors.index.json` and
//! `model-0000N-of-0000M.safetensors` shards whose tensors are half BF16-like weights (small
//! normal-ish floats: compressible exponents, noisy mantissas) and half quantized-like bytes
//! (uniformly random, incompressible), so the cache sees the mix a real model gives it.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::workload::{Ctx, Interrupted, Progress, Rng};

#[derive(Clone, Debug, serde::Serialize)]
pub struct DataFile {
    /// Path relative to the source directory.
    pub name: String,
    pub bytes: u64,
}

/// Every regular file under `dir` (recursively, symlinks not followed), sorted by path, so the
/// "model load" order is the name order a loader would use for shards.
pub fn scan(dir: &Path) -> Result<Vec<DataFile>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for entry in
            std::fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))?
        {
            let entry = entry?;
            let ft = entry.file_type()?;
            let r = rel.join(entry.file_name());
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(DataFile {
                    name: r.to_string_lossy().into_owned(),
                    bytes: entry.metadata()?.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if out.iter().all(|f| f.bytes == 0) {
        bail!("source {} holds no non-empty regular file", dir.display());
    }
    Ok(out)
}

/// The default shard size: a few hundred MiB on a roomy machine, less where memory or disk is short.
/// The run holds the data up to three times at once (arena, source page cache, keep-mode page cache),
/// so the total stays under a sixth of available memory and a quarter of free disk.
pub fn default_shard_bytes(shards: u64, quick: bool, mem_available: u64, disk_free: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    if quick {
        return 16 * MIB;
    }
    let total = (mem_available / 6).min(disk_free / 4);
    (total / shards).clamp(16 * MIB, 256 * MIB) / MIB * MIB
}

struct Tensor {
    name: String,
    bf16: bool,
    rows: u64,
    cols: u64,
}

impl Tensor {
    fn bytes(&self) -> u64 {
        self.rows * self.cols * if self.bf16 { 2 } else { 1 }
    }
}

/// Tensors of one shard adding up to about `bytes`: pairs of a BF16 weight and a U8 quantized block.
fn shard_tensors(shard: usize, bytes: u64) -> Vec<Tensor> {
    let piece = (bytes / 16).clamp(64 << 10, 8 << 20) / 4096 * 4096;
    let mut out = Vec::new();
    let mut left = bytes;
    let mut layer = shard * 1000;
    while left >= 2 * 4096 {
        let b = piece.min(left / 2) / 4096 * 4096;
        out.push(Tensor {
            name: format!("model.layers.{layer}.mlp.down_proj.weight"),
            bf16: true,
            rows: b / 2 / 1024,
            cols: 1024,
        });
        out.push(Tensor {
            name: format!("model.layers.{layer}.mlp.down_proj.qweight"),
            bf16: false,
            rows: b / 1024,
            cols: 1024,
        });
        left -= 2 * b;
        layer += 1;
    }
    out
}

fn fill_bf16(rng: &mut Rng, out: &mut [u8]) {
    for pair in out.chunks_exact_mut(2) {
        let r = rng.next_u64();
        // Sum of two uniforms (triangular, zero mean), scaled like trained weights (|w| ~ 0.02).
        let a = (r & 0xFF_FFFF) as f32 / 16_777_216.0;
        let b = ((r >> 24) & 0xFF_FFFF) as f32 / 16_777_216.0;
        let v = (a + b - 1.0) * 0.05;
        let bits = (v.to_bits() >> 16) as u16;
        pair.copy_from_slice(&bits.to_le_bytes());
    }
}

fn fill_random(rng: &mut Rng, out: &mut [u8]) {
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    for b in chunks.into_remainder() {
        *b = rng.next_u64() as u8;
    }
}

/// Writes the model directory into `dir` (which must exist), each file fsynced. Returns its files.
pub fn generate(
    dir: &Path,
    shards: usize,
    shard_bytes: u64,
    ctx: &Ctx<'_>,
) -> Result<Vec<DataFile>> {
    let plans: Vec<Vec<Tensor>> = (0..shards).map(|s| shard_tensors(s, shard_bytes)).collect();
    let total: u64 = plans.iter().flatten().map(Tensor::bytes).sum();
    let mut w = Writer {
        stop: ctx.stop,
        progress: Progress::start(ctx, Some(total), None),
        rng: Rng::new(0x5EED),
        buf: vec![0u8; 4 << 20],
    };
    let mut files = Vec::new();
    let mut weight_map = String::new();
    for (s, tensors) in plans.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let (header, data_bytes) = shard_header(&name, tensors, &mut weight_map)?;
        w.write_shard(&dir.join(&name), &header, tensors)?;
        files.push(DataFile {
            name,
            bytes: 8 + header.len() as u64 + data_bytes,
        });
    }
    write_small_files(dir, total, &weight_map, &mut files)?;
    // Directory entries too, so a crash cannot lose the files after "fsynced".
    std::fs::File::open(dir)?.sync_all()?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The safetensors JSON header of shard `name` (tensors in order, data offsets relative to the
/// end of the header, padded so the data starts 8-byte aligned) and its data bytes; adds the
/// shard's tensors to the index's `weight_map`.
fn shard_header(name: &str, tensors: &[Tensor], weight_map: &mut String) -> Result<(String, u64)> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut off = 0u64;
    for t in tensors {
        let dtype = if t.bf16 { "BF16" } else { "U8" };
        write!(
            header,
            ",\"{}\":{{\"dtype\":\"{dtype}\",\"shape\":[{},{}],\"data_offsets\":[{off},{}]}}",
            t.name,
            t.rows,
            t.cols,
            off + t.bytes()
        )?;
        off += t.bytes();
        if !weight_map.is_empty() {
            weight_map.push(',');
        }
        write!(weight_map, "\"{}\":\"{name}\"", t.name)?;
    }
    header.push('}');
    // Pad so the data starts 8-byte aligned, as the format recommends.
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    Ok((header, off))
}

/// Writes the shards' bytes: one generator for all shards, so the data is the same every run.
struct Writer<'a> {
    stop: &'a AtomicBool,
    progress: Progress,
    rng: Rng,
    buf: Vec<u8>,
}

impl Writer<'_> {
    /// Writes one shard (length, header, tensors) and fsyncs it.
    fn write_shard(&mut self, path: &Path, header: &str, tensors: &[Tensor]) -> Result<()> {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        for t in tensors {
            let mut left = t.bytes() as usize;
            while left > 0 {
                if self.stop.load(Ordering::Relaxed) {
                    bail!(Interrupted);
                }
                let n = left.min(self.buf.len());
                if t.bf16 {
                    fill_bf16(&mut self.rng, &mut self.buf[..n]);
                } else {
                    fill_random(&mut self.rng, &mut self.buf[..n]);
                }
                f.write_all(&self.buf[..n])
                    .with_context(|| format!("writing {}", path.display()))?;
                self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                left -= n;
            }
        }
        f.sync_all()
            .with_context(|| format!("fsync {}", path.display()))
    }
}

/// `config.json` and the shard index, as a Hugging Face model directory has them.
fn write_small_files(
    dir: &Path,
    total: u64,
    weight_map: &str,
    files: &mut Vec<DataFile>,
) -> Result<()> {
    let small = [
        (
            "config.json".to_string(),
            "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 1024,\n  \"num_hidden_layers\": 16,\n  \"torch_dtype\": \"bfloat16\",\n  \"note\": \"generated by nitro-uring bench\"\n}\n".to_string(),
        ),
        (
            "model.safetensors.index.json".to_string(),
            format!("{{\"metadata\":{{\"total_size\":{total}}},\"weight_map\":{{{weight_map}}}}}\n"),
        ),
    ];
    for (name, text) in small {
        let path = dir.join(&name);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        files.push(DataFile {
            name,
            bytes: text.len() as u64,
        });
    }
    Ok(())
}
