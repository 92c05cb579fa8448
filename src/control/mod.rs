//! The control channel: a Unix socket per mount through which `nitro-uring warm`, `pin`, `unpin`,
//! `evict` and `stats` talk to the daemon, and the Prometheus exposition of the same numbers.
//!
//! Why a socket and not signals or files in the mount: warming must happen *inside* the daemon at
//! the engine's full io_uring depth (a reader through FUSE gets the kernel's readahead depth and
//! pays a round trip per request), and the commands need answers (residency, refusals with
//! numbers, progress). A socket gives both, and its peer's uid is known (`sock`).
//!
//! Protocol (version 1; `proto.rs`): one JSON object per line each way. Requests:
//! `{"v":1,"cmd":"hello"}`, `{"v":1,"cmd":"stats","top":10}`,
//! `{"v":1,"cmd":"warm","paths":["dir","a/b.gguf"],"check":false}`, `{"v":1,"cmd":"pin",...}`,
//! `unpin`, `evict` (same `paths`), `{"v":1,"cmd":"cancel"}` while a warm runs. Paths are
//! relative to the mount's root. Replies carry `"v":1` and an `"event"`: `error` (`"error"`: one
//! line for the user), `hello`, `stats`, `plan` then `progress`... then `done` for a warm or pin,
//! `outcomes` for unpin and evict. Several requests may follow each other on one connection.
//!
//! Where: `/run/nitro-uring/ctl/<major>-<minor>.sock` for a root daemon (the mount's device
//! number; `sock.rs`), 0600 in a 0700 directory; removed at unmount.

pub mod hist;
mod ops;
pub mod pins;
pub mod prom;
pub mod proto;
pub mod report;
mod server;
pub mod sock;
pub mod telemetry;
mod warm;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use nitro_ring::Waker;
use parking_lot::Mutex;

use crate::engine::{Msg, Shared};
use crate::fuse::catalog::Catalog;
use telemetry::Telemetry;

/// Everything a control request may use.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub telemetry: Arc<Telemetry>,
    /// The source tree as the control channel walks it (None: a remote source, see `catalog`).
    pub local_catalog: Option<Catalog>,
    pub tx: Sender<Msg>,
    pub waker: Waker,
    pub pins: Mutex<pins::Pins>,
    pub rates: Mutex<report::Sampler>,
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub stop: AtomicBool,
}

impl Ctx {
    /// The walker of the source tree for commands that name files (warm, pin, evict).
    pub fn catalog(&self) -> Result<&Catalog, String> {
        self.local_catalog.as_ref().ok_or_else(|| {
            "naming files (warm, pin, unpin, evict) is not available for s3:// sources yet; stats is".into()
        })
    }

    pub fn new(
        shared: Arc<Shared>,
        telemetry: Arc<Telemetry>,
        catalog: Option<Catalog>,
        (tx, waker): (Sender<Msg>, Waker),
        source: PathBuf,
        mountpoint: PathBuf,
    ) -> Ctx {
        let pool = shared.arena.pool_bytes() as u64;
        Ctx {
            rates: Mutex::new(report::Sampler::new(&shared, &telemetry)),
            shared,
            telemetry,
            local_catalog: catalog,
            tx,
            waker,
            pins: Mutex::new(pins::Pins::new(pool)),
            source,
            mountpoint,
            stop: AtomicBool::new(false),
        }
    }

    /// Hands a message to the engine. False when the engine is gone.
    pub fn send(&self, msg: Msg) -> bool {
        let ok = self.tx.send(msg).is_ok();
        if ok {
            self.waker.wake();
        }
        ok
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The running control socket (and metrics endpoint): stopped, and the socket removed, on drop.
pub struct Control {
    ctx: Arc<Ctx>,
    threads: Vec<JoinHandle<()>>,
    pub socket: Option<PathBuf>,
}

impl Control {
    /// Serves the socket of the mount with device `dev` (if given), and `/metrics` on `metrics`
    /// (if given). A socket that cannot be made is logged (the mount works without it).
    pub fn spawn(ctx: Ctx, dev: Option<&str>, metrics: Option<tiny_http::Server>) -> Control {
        let ctx = Arc::new(ctx);
        let mut threads = Vec::new();
        let mut socket = None;
        match dev.map(sock::bind).transpose() {
            Ok(None) => {}
            Ok(Some(bound)) => {
                socket = Some(bound.path.clone());
                let c = ctx.clone();
                match std::thread::Builder::new()
                    .name("nitro-ctl".into())
                    .spawn(move || server::accept_loop(&c, bound))
                {
                    Ok(h) => threads.push(h),
                    Err(e) => tracing::warn!("no control socket: {e}"),
                }
            }
            Err(e) => tracing::warn!(
                "no control socket ({e}): warm, pin and stats will not reach this mount"
            ),
        }
        if let Some(server) = metrics {
            let c = ctx.clone();
            match std::thread::Builder::new()
                .name("nitro-metrics".into())
                .spawn(move || prom::serve(&c, &server))
            {
                Ok(h) => threads.push(h),
                Err(e) => tracing::warn!("no metrics endpoint: {e}"),
            }
        }
        Control {
            ctx,
            threads,
            socket,
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
