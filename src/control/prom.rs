//! Prometheus text exposition (format 0.0.4) on `GET /metrics`, from `mount --metrics ADDR`.
//!
//! Why `tiny_http` on a thread of its own: a scrape is one small GET every few seconds; a
//! synchronous server of a few hundred lines is enough and keeps an async runtime out of the
//! daemon. The listener is bound before anything is mounted, so a bad or busy address fails the
//! mount with one line.
//!
//! Names follow Prometheus conventions: base units (bytes, seconds), `_total` for counters.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use super::Ctx;
use super::hist::Snapshot;
use super::report;

/// Histogram bucket bounds: powers of two from 1.024 µs to ≈17 s (bucket edges of `hist`, so
/// the counts are exact).
const LE_POWERS: std::ops::RangeInclusive<u32> = 10..=34;

/// Binds the metrics listener (before mounting).
pub fn bind(addr: SocketAddr) -> Result<tiny_http::Server, String> {
    tiny_http::Server::http(addr).map_err(|e| format!("--metrics {addr}: cannot listen ({e})"))
}

pub(super) fn serve(ctx: &Ctx, server: &tiny_http::Server) {
    if let Some(addr) = server.server_addr().to_ip() {
        tracing::info!("METRICS http://{addr}/metrics");
    }
    while !ctx.stopping() {
        let req = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("metrics endpoint: {e}");
                return;
            }
        };
        let path = req.url().split('?').next().unwrap_or("");
        let response = if path == "/metrics" {
            let header = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            );
            let mut r = tiny_http::Response::from_string(render(ctx));
            if let Ok(h) = header {
                r = r.with_header(h);
            }
            r
        } else {
            tiny_http::Response::from_string("nitro-uring: see /metrics\n").with_status_code(404)
        };
        let _ = req.respond(response);
    }
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP nitro_uring_{name} {help}");
        let _ = writeln!(self.0, "# TYPE nitro_uring_{name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &str, v: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "nitro_uring_{name} {v}");
        } else {
            let _ = writeln!(self.0, "nitro_uring_{name}{{{labels}}} {v}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.head(name, kind, help);
        self.value(name, "", v as f64);
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &Snapshot) {
        for p in LE_POWERS {
            let le = (1u64 << p) as f64 / 1e9;
            let n = h.count_below(1 << p);
            let _ = writeln!(
                self.0,
                "nitro_uring_{name}_bucket{{{labels},le=\"{le:e}\"}} {n}"
            );
        }
        let _ = writeln!(
            self.0,
            "nitro_uring_{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            h.count()
        );
        let _ = writeln!(
            self.0,
            "nitro_uring_{name}_sum{{{labels}}} {}",
            h.sum_ns as f64 / 1e9
        );
        let _ = writeln!(self.0, "nitro_uring_{name}_count{{{labels}}} {}", h.count());
    }
}

/// The whole exposition.
pub fn render(ctx: &Ctx) -> String {
    let r = report::gather(ctx, 0);
    let mut o = Out(String::with_capacity(8192));
    o.head(
        "pool_bytes",
        "gauge",
        "Pool bytes by kind (raw, compressed, pinned, free); they add up to the pool.",
    );
    for (kind, v) in [
        ("raw", r.pool.raw_bytes),
        ("compressed", r.pool.compressed_bytes),
        ("pinned", r.pool.pinned_bytes),
        ("free", r.pool.free_bytes),
    ] {
        o.value("pool_bytes", &format!("kind=\"{kind}\""), v as f64);
    }
    o.one(
        "pool_capacity_bytes",
        "gauge",
        "The pool's size (--pool).",
        r.pool.pool_bytes,
    );
    o.one(
        "store_bytes",
        "gauge",
        "Pool bytes held as whole files in the store.",
        r.pool.store_bytes,
    );
    o.one(
        "metadata_bytes",
        "gauge",
        "Index and bookkeeping outside the pool.",
        r.pool.metadata_bytes,
    );
    o.head(
        "reads_total",
        "counter",
        "Read requests served by the daemon, by result.",
    );
    o.value("reads_total", "result=\"hit\"", r.reads.hits as f64);
    o.value("reads_total", "result=\"miss\"", r.reads.misses as f64);
    o.head(
        "read_bytes_total",
        "counter",
        "Bytes replied to readers, by result.",
    );
    o.value(
        "read_bytes_total",
        "result=\"hit\"",
        r.reads.hit_bytes as f64,
    );
    o.value(
        "read_bytes_total",
        "result=\"miss\"",
        r.reads.miss_bytes as f64,
    );
    o.head(
        "read_duration_seconds",
        "histogram",
        "Service time of a read request, from its arrival to its reply.",
    );
    o.histogram(
        "read_duration_seconds",
        "result=\"hit\"",
        &ctx.telemetry.hit_time.snapshot(),
    );
    o.histogram(
        "read_duration_seconds",
        "result=\"miss\"",
        &ctx.telemetry.miss_time.snapshot(),
    );
    o.one(
        "fills_total",
        "counter",
        "Chunk fills from the source.",
        r.fills,
    );
    o.one(
        "fill_bytes_total",
        "counter",
        "Bytes read from the source into the pool.",
        r.fill_bytes,
    );
    o.one(
        "prefetch_fills_total",
        "counter",
        "Fills started ahead of a sequential reader.",
        r.prefetch_fills,
    );
    o.one(
        "fill_errors_total",
        "counter",
        "Fills that failed.",
        r.fill_errors,
    );
    o.one(
        "uncached_reads_total",
        "counter",
        "Reads served straight from the source.",
        r.uncached_reads,
    );
    o.one(
        "evictions_total",
        "counter",
        "Chunks evicted from the pool.",
        r.evictions,
    );
    o.one(
        "compressions_total",
        "counter",
        "Chunks compressed instead of evicted.",
        r.compressions,
    );
    let snap = crate::mount::snapshot(&ctx.shared);
    o.one(
        "compressed_logical_bytes",
        "gauge",
        "Bytes the resident compressed chunks stand for.",
        snap.encoded_logical_bytes,
    );
    o.one(
        "passthrough_opens_total",
        "counter",
        "Opens answered with FUSE passthrough.",
        r.passthrough_opens,
    );
    o.one(
        "sets_found_total",
        "counter",
        "Model sets found on an open (numbered shards, safetensors indexes, ollama manifests).",
        r.sets.found,
    );
    o.one(
        "set_members_queued_total",
        "counter",
        "Set members queued for prefetch.",
        r.sets.members_queued,
    );
    o.one(
        "set_prefetch_bytes_total",
        "counter",
        "Bytes set prefetch put in the cache.",
        r.sets.prefetched_bytes,
    );
    o.one(
        "set_prefetches_done_total",
        "counter",
        "Set prefetches finished.",
        r.sets.done,
    );
    o.head(
        "set_prefetch_seconds_total",
        "counter",
        "Wall time of the finished set prefetches, summed.",
    );
    o.value("set_prefetch_seconds_total", "", r.sets.seconds);
    o.one("store_files", "gauge", "Files in the store.", r.store_files);
    o.one("pinned_files", "gauge", "Files pinned.", r.pinned_files);
    o.0
}
