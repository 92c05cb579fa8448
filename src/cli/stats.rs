//! `nitro-uring stats MOUNTPOINT [--watch] [--json]`: the daemon's numbers, once, or redrawn in
//! place every second like `top` (`--json`: one object per line, for scripts).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use nitro_uring::control::proto::{Reply, Request};
use nitro_uring::control::report::{Percentiles, Report};
use nitro_uring::size::human;

use super::ctl::{self, Client};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// A nitro-uring mountpoint (or a path under one)
    mountpoint: PathBuf,
    /// Redraw every second until Ctrl+C
    #[arg(long)]
    watch: bool,
    /// JSON (one object per line with --watch)
    #[arg(long)]
    json: bool,
    /// How many files to list by resident bytes
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub fn run(a: StatsArgs) -> Result<()> {
    let (m, _) = ctl::locate(&a.mountpoint)?;
    let mut c = Client::connect(&m)?;
    let stop = Arc::new(AtomicBool::new(false));
    if a.watch {
        signal_hook::flag::register(libc::SIGINT, stop.clone())?;
        signal_hook::flag::register(libc::SIGTERM, stop.clone())?;
    }
    let redraw = a.watch && !a.json && std::io::stdout().is_terminal();
    loop {
        c.send(Request::Stats { top: a.top })?;
        let r = match c.next()? {
            Reply::Stats(r) => r,
            other => bail!("unexpected reply {other:?}"),
        };
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            if redraw {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{}", text(&m.mountpoint, &r))?;
            if a.watch && !redraw {
                writeln!(out)?;
            }
        }
        out.flush()?;
        drop(out);
        if !a.watch {
            return Ok(());
        }
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn pcts(p: &Percentiles) -> String {
    if p.count == 0 {
        return "none yet".into();
    }
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1} µs  ({} reads)",
        p.p50, p.p90, p.p99, p.p999, p.count
    )
}

fn text(mp: &std::path::Path, r: &Report) -> String {
    let p = &r.pool;
    let rt = &r.rates;
    let mut s = format!("nitro-uring {}\n", mp.display());
    s += &format!(
        "pool      {}: raw {}, compressed {}, pinned {}, free {} (store files {}); metadata {} apart\n",
        human(p.pool_bytes),
        human(p.raw_bytes),
        human(p.compressed_bytes),
        human(p.pinned_bytes),
        human(p.free_bytes),
        human(p.store_bytes),
        human(p.metadata_bytes)
    );
    s += &format!(
        "reads     {} hits, {} misses: {:.1}% hit; now {:.0} hits/s, {:.0} misses/s, {:.2} GB/s out\n",
        r.reads.hits,
        r.reads.misses,
        100.0 * r.reads.hit_ratio,
        rt.hits_per_s,
        rt.misses_per_s,
        rt.read_gb_per_s
    );
    s += &format!(
        "fills     {} ({}), now {:.0}/s, {:.2} GB/s in; {} prefetched, {} errors, {} uncached\n",
        r.fills,
        human(r.fill_bytes),
        rt.fills_per_s,
        rt.fill_gb_per_s,
        r.prefetch_fills,
        r.fill_errors,
        r.uncached_reads
    );
    s += &format!(
        "evictions {}; compressions {} ({:.2}x); store {} file(s), {} complete; {} passthrough opens; {} pinned (cap {})\n",
        r.evictions,
        r.compressions,
        r.compression_ratio,
        r.store_files,
        r.store_complete_files,
        r.passthrough_opens,
        r.pinned_files,
        human(r.pin_cap_bytes)
    );
    let st = &r.sets;
    if st.found > 0 {
        s += &format!(
            "sets      {} found, {} member(s) queued, {} prefetched; {} done in {:.1} s\n",
            st.found,
            st.members_queued,
            human(st.prefetched_bytes),
            st.done,
            st.seconds
        );
    }
    s += &format!("hit time  {}\n", pcts(&r.latency_us.hit));
    s += &format!("miss time {}\n", pcts(&r.latency_us.miss));
    if !r.top.is_empty() {
        s += "top files by resident bytes:\n";
        for f in &r.top {
            let mut tags = Vec::new();
            if f.stored {
                tags.push("stored");
            }
            if f.pinned {
                tags.push("pinned");
            }
            if f.compressed_bytes > 0 {
                tags.push("compressed");
            }
            s += &format!(
                "  {:>10}  {:<18} {}\n",
                human(f.resident_bytes),
                tags.join(","),
                f.name
            );
        }
    }
    s
}
