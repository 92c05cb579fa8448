//! The cold S3 baseline: the object fetched whole by a plain `object_store` client the way the
//! mount's fills fetch it — ranged GETs of one chunk each, a fixed number in flight, each body
//! streamed into a buffer of its own (as a fill streams into its arena block) — with no FUSE, no
//! engine and no cache. Without it "cold through the mount" could only be compared with a whole
//! GET, which measures a different request pattern, not the cache.
//!
//! Why two kinds of baseline (`Keep`): bytes that go nowhere (a few buffers reused) are the
//! strictest bound, but no loader works that way: it keeps the object in memory, as the mount's
//! cache does. Memory a process touches for the first time costs the kernel a zeroed page (and on
//! a VM whose balloon reports free pages, the hypervisor backing it again), so `Keep::Object`
//! fetches into fresh buffers that together hold the whole object until the run ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Result, bail};
use futures::StreamExt;
use object_store::path::Path as KeyPath;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::{Clock, Ctx, Measurement, Progress, elapsed_ns, human_bytes, new_hist};

/// One object behind a client, and the runtime its requests run on.
pub struct S3Object<'a> {
    pub store: Arc<dyn ObjectStore>,
    pub rt: &'a tokio::runtime::Runtime,
    pub key: KeyPath,
    pub size: u64,
}

/// What one GET sends back: its buffer (for the next GET), the bytes it got or why it failed,
/// and when it was started.
type Done = (Vec<u8>, Result<usize, String>, Instant);

/// Where a baseline's bytes go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Keep {
    /// Into one buffer per GET in flight, reused: the bytes go nowhere.
    Nothing,
    /// Into fresh buffers, one per GET, kept until the end: the object ends up in memory, as a
    /// loader's `get` gives it.
    Object,
}

/// Fetches the whole object front to back in `chunk`-sized ranged GETs, `depth` in flight, each
/// spawned on the client's runtime (as the daemon's fetcher spawns its GETs). Latency is per GET,
/// from its start to its last byte.
pub fn s3_get_read(
    obj: &S3Object<'_>,
    chunk: usize,
    depth: usize,
    keep: Keep,
    ctx: &Ctx<'_>,
) -> Result<Measurement> {
    let depth = depth.max(1);
    let progress = Progress::start(ctx, Some(obj.size), None);
    let (tx, rx) = mpsc::channel::<Done>();
    let mut free: Vec<Vec<u8>> = match keep {
        Keep::Nothing => (0..depth).map(|_| vec![0u8; chunk]).collect(),
        Keep::Object => Vec::new(),
    };
    // Keep::Object: the buffers that hold the object so far (dropped after the clock stops).
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut hist = new_hist();
    let (mut bytes, mut ops, mut next, mut in_flight) = (0u64, 0u64, 0u64, 0usize);
    let clock = Clock::start();
    let spawn = |buf: Vec<u8>, at: u64| {
        let len = (obj.size - at).min(chunk as u64);
        let (store, key, tx) = (obj.store.clone(), obj.key.clone(), tx.clone());
        obj.rt.spawn(async move {
            let started = Instant::now();
            let (buf, got) = get_into(&*store, &key, at, len as usize, buf).await;
            let _ = tx.send((buf, got, started));
        });
    };
    let result: Result<()> = loop {
        while in_flight < depth && next < obj.size {
            // (`vec!` of zeros is fresh, untouched memory: the GET's writes fault its pages in.)
            let buf = free.pop().unwrap_or_else(|| vec![0u8; chunk]);
            spawn(buf, next);
            next += chunk as u64;
            in_flight += 1;
        }
        if in_flight == 0 {
            break Ok(());
        }
        let Ok((buf, got, started)) = rx.recv() else {
            break Err(anyhow::anyhow!("the S3 client's runtime stopped"));
        };
        in_flight -= 1;
        match keep {
            Keep::Nothing => free.push(buf),
            Keep::Object => kept.push(buf),
        }
        match got {
            Ok(n) => {
                hist.saturating_record(elapsed_ns(started));
                ops += 1;
                bytes += n as u64;
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => break Err(anyhow::anyhow!(e)),
        }
        if let Err(e) = ctx.check() {
            break Err(e);
        }
    };
    // Let the GETs still out finish (their buffers are theirs: nothing unsafe is left behind, but
    // a stray GET would load the server during the next row).
    while in_flight > 0 && rx.recv().is_ok() {
        in_flight -= 1;
    }
    result?;
    if bytes != obj.size {
        bail!("fetched {bytes} bytes of {}", obj.size);
    }
    let access = format!(
        "object_store ranged GETs, {depth} × {} in flight{}",
        human_bytes(chunk as u64),
        match keep {
            Keep::Nothing => "",
            Keep::Object => ", the object kept in memory",
        }
    );
    let m = clock.finish(bytes, ops, hist, access);
    drop(kept);
    Ok(m)
}

/// One ranged GET of `len` bytes at `at`, its body copied into `buf` as it arrives.
async fn get_into(
    store: &dyn ObjectStore,
    key: &KeyPath,
    at: u64,
    len: usize,
    mut buf: Vec<u8>,
) -> (Vec<u8>, Result<usize, String>) {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(at..at + len as u64)),
        ..Default::default()
    };
    let mut body = match store.get_opts(key, opts).await {
        Ok(r) => r.into_stream(),
        Err(e) => return (buf, Err(format!("GET {key} at {at}: {e}"))),
    };
    let mut written = 0usize;
    while let Some(part) = body.next().await {
        match part {
            Ok(b) => {
                let n = b.len().min(len - written);
                buf[written..written + n].copy_from_slice(&b[..n]);
                written += n;
            }
            Err(e) => return (buf, Err(format!("GET {key} at {at}: {e}"))),
        }
    }
    if written != len {
        return (
            buf,
            Err(format!("GET {key} at {at}: {written} of {len} bytes")),
        );
    }
    (buf, Ok(written))
}
