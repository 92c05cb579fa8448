//! The test object: a plain `object_store` client for the endpoint (built as the daemon builds
//! its own, so the baseline and the mount speak to the server alike), the upload, and the bytes.
//!
//! Why pattern bytes from a seeded generator: the object is written, copied locally and checked
//! without ever being held whole — its xxh3 is computed while it is generated, and a local copy is
//! the same generator run again.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as KeyPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use crate::workload::{Ctx, Progress, Rng, human_bytes};

/// Where the S3 rows read from.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    pub(crate) bucket: String,
    pub(crate) region: String,
}

/// The runtime a client's requests run on: two workers, as the daemon's (`remote::Client`).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-s3")
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// A client of `ep` with the daemon's settings (`src/remote/mod.rs`: retries with backoff, 30 s
/// timeout, 5 s connect timeout, an idle pool of `concurrency` connections, plain HTTP allowed
/// for an `http://` endpoint). Credentials come from the environment, as the daemon's.
pub(crate) fn client(ep: &Endpoint, concurrency: usize) -> Result<Arc<AmazonS3>> {
    let timeout = Duration::from_secs(30);
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: timeout,
    };
    let opts = object_store::ClientOptions::new()
        .with_allow_http(ep.url.starts_with("http://"))
        .with_timeout(timeout)
        .with_connect_timeout(Duration::from_secs(5))
        .with_pool_max_idle_per_host(concurrency.max(8));
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&ep.bucket)
        .with_endpoint(&ep.url)
        .with_region(&ep.region)
        .with_retry(retry)
        .with_client_options(opts)
        .build()
        .map_err(|e| anyhow!("S3 client for {}: {e}", ep.url))?;
    Ok(Arc::new(store))
}

/// The generator of a `size`-byte object's bytes: 8-byte words of a splitmix stream seeded by
/// the size, written in pieces of `buf`'s length.
struct Pattern {
    rng: Rng,
    left: u64,
}

impl Pattern {
    fn new(size: u64) -> Pattern {
        Pattern {
            rng: Rng::new(size ^ 0x5333_0000),
            left: size,
        }
    }

    /// The next piece (at most `buf.len()` bytes, a multiple of 8 but for the last), or None.
    fn next<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(buf.len() as u64) as usize;
        let end = n.next_multiple_of(8).min(buf.len());
        for w in buf[..end].chunks_exact_mut(8) {
            w.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        self.left -= n as u64;
        Some(&buf[..n])
    }
}

/// The xxh3 of the object of `size` bytes, without writing it anywhere.
pub(crate) fn pattern_hash(size: u64) -> u64 {
    let mut p = Pattern::new(size);
    let mut buf = vec![0u8; 8 << 20];
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    while let Some(piece) = p.next(&mut buf) {
        h.update(piece);
    }
    h.digest()
}

/// What `ensure` found or did.
pub(crate) struct Uploaded {
    /// Seconds the upload took; None when the object was there already.
    pub(crate) seconds: Option<f64>,
    pub(crate) hash: u64,
}

/// Uploads the `size`-byte pattern object to `key` (multipart in 16 MiB parts, 4 in flight),
/// unless an object of that size is there already.
pub(crate) fn ensure(
    rt: &tokio::runtime::Runtime,
    store: &AmazonS3,
    key: &KeyPath,
    size: u64,
    ctx: &Ctx<'_>,
) -> Result<Uploaded> {
    match rt.block_on(store.head(key)) {
        Ok(meta) if meta.size == size => {
            return Ok(Uploaded {
                seconds: None,
                hash: pattern_hash(size),
            });
        }
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(anyhow!("HEAD {key}: {e}")),
    }
    const PART: usize = 16 << 20;
    let started = Instant::now();
    let progress = Progress::start(ctx, Some(size), None);
    let mut p = Pattern::new(size);
    let mut buf = vec![0u8; PART];
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    if size <= PART as u64 {
        let piece = p.next(&mut buf).unwrap_or(&[]);
        h.update(piece);
        rt.block_on(store.put(key, PutPayload::from(piece.to_vec())))
            .map_err(|e| anyhow!("PUT {key}: {e}"))?;
    } else {
        let upload = rt
            .block_on(store.put_multipart(key))
            .map_err(|e| anyhow!("starting the upload of {key}: {e}"))?;
        // `write` spawns each full part's upload onto the current runtime.
        let _inside = rt.enter();
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let result: Result<()> = (|| {
            while let Some(piece) = p.next(&mut buf) {
                ctx.check()?;
                h.update(piece);
                rt.block_on(w.wait_for_capacity(4))
                    .map_err(|e| anyhow!("uploading {key}: {e}"))?;
                w.write(piece);
                progress
                    .bytes
                    .fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                rt.block_on(w.finish())
                    .map_err(|e| anyhow!("finishing the upload of {key}: {e}"))?;
            }
            Err(e) => {
                let _ = rt.block_on(w.abort());
                return Err(e);
            }
        }
    }
    Ok(Uploaded {
        seconds: Some(started.elapsed().as_secs_f64()),
        hash: h.digest(),
    })
}

/// Writes the same bytes to a local file (synced, so that its pages in the page cache are clean).
pub(crate) fn write_local(path: &Path, size: u64, ctx: &Ctx<'_>) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut p = Pattern::new(size);
    let mut buf = vec![0u8; 8 << 20];
    while let Some(piece) = p.next(&mut buf) {
        ctx.check()?;
        f.write_all(piece)?;
    }
    f.sync_all()?;
    Ok(())
}

/// "Uploading 1.00 GiB to s3://b/k" and the like.
pub(crate) fn describe(ep: &Endpoint, key: &KeyPath, size: u64) -> String {
    format!("{} s3://{}/{key}", human_bytes(size), ep.bucket)
}
