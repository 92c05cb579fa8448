//! The lines under the table: what the run was on, the ratios the project has targets for (with
//! a verdict), memory and page-cache residency, then what makes a row less than it says (a warm
//! row that missed, the plan's notes). A reader should not need the JSON to know whether the run
//! can be trusted.

use std::fmt::Write as _;

use crate::report::Report;
use crate::workload::human_bytes;

pub(crate) fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = context(&mut s, r);
    let _ = targets(&mut s, r);
    let _ = memory(&mut s, r);
    let _ = resident(&mut s, r);
    let _ = repeat(&mut s, r);
    let _ = s3(&mut s, r);
    let _ = warnings(&mut s, r);
    s
}

/// The machine, the data, and how busy the rest of the machine was.
fn context(s: &mut String, r: &Report) -> std::fmt::Result {
    let data = if r.files.is_empty() {
        "data: the rows' own".to_string()
    } else {
        format!(
            "data: {} in {} files on {} ({})",
            human_bytes(r.total_bytes),
            r.files.len(),
            r.source_fs,
            r.source_device
        )
    };
    writeln!(
        s,
        "machine: {} cores, {}, kernel {}, load {} → {}; {data}",
        r.machine.cores,
        r.machine.cpu_model,
        r.machine.kernel,
        r.machine.loadavg_at_start,
        r.loadavg_at_end,
    )?;
    writeln!(
        s,
        "CPU time outside this process during the run: {:.1} s ({:.0}% of the machine); rows with a high 'other' share were disturbed",
        r.others_cpu_s_total,
        r.others_share_total * 100.0
    )
}

/// The ratios with targets: arena hits against the ceiling, cold reads and model loads against
/// the source.
fn targets(s: &mut String, r: &Report) -> std::fmt::Result {
    let ratio = |id: &str| r.ratios.iter().find(|x| x.workload == id);
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}×"));
    let verdict = |v: Option<f64>, target: f64| match v {
        Some(v) if v >= target => "meets",
        Some(_) => "MISSES",
        None => "n/a",
    };
    if ["arena-seq", "cold-seq", "load-cold", "load-warm"]
        .iter()
        .all(|id| ratio(id).is_none())
    {
        // None of these rows ran (`--only resident`, `--only s3`): no verdicts to give.
        return Ok(());
    }
    let arena = ratio("arena-seq").and_then(|x| x.mount_over_ceiling);
    let cold = ratio("cold-seq").and_then(|x| x.mount_over_source);
    let cold_qd = ratio("cold-seq").and_then(|x| x.mount_over_source_same_depth);
    writeln!(
        s,
        "arena hit (warm arena seq 1 MiB): mount/ceiling {} ({} the ≥ 0.85× target)",
        f(arena),
        verdict(arena, 0.85)
    )?;
    writeln!(
        s,
        "cold seq read: mount/source buffered {} ({} the ≥ 1.0× target); mount/source O_DIRECT at \
         the engine's queue depth {} (like with like: the reads the mount's fills make)",
        f(cold),
        verdict(cold, 1.0),
        f(cold_qd)
    )?;
    writeln!(
        s,
        "model load: mount/source cold {}, warm arena {}",
        f(ratio("load-cold").and_then(|x| x.mount_over_source)),
        f(ratio("load-warm").and_then(|x| x.mount_over_source))
    )
}

/// Peak RSS against the pool, and what the page cache held after the cold and keep-mode reads.
fn memory(s: &mut String, r: &Report) -> std::fmt::Result {
    if r.files.is_empty() {
        // No main mount ran (`--only s3`): no pool to report on.
        return Ok(());
    }
    writeln!(
        s,
        "memory: peak RSS {} with an arena (pool) of {} ({} used), index {}",
        human_bytes(r.memory.peak_rss_bytes),
        human_bytes(r.memory.pool_bytes),
        human_bytes(r.memory.pool_used_bytes),
        human_bytes(r.memory.index_overhead_bytes)
    )?;
    let pc = &r.page_cache;
    if pc.source_after_source_cold_read.is_none()
        && pc.source_after_mount_cold_read.is_none()
        && pc.mount_after_keep_mode_reads.is_none()
    {
        return Ok(());
    }
    let pct =
        |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{:.0}%", v * 100.0));
    writeln!(
        s,
        "page cache: source resident after its own cold read {}, after the cold read through the mount {}; \
         mount pages resident after keep-mode reads {} (held twice: arena + page cache)",
        pct(r.page_cache.source_after_source_cold_read),
        pct(r.page_cache.source_after_mount_cold_read),
        pct(r.page_cache.mount_after_keep_mode_reads)
    )
}

/// Resident files (store + passthrough) against the page cache, with the targets: every read shape
/// ≥ 0.9× the source in the page cache, an mmap load adding ≤ 10% of the file to RAM, a restart
/// reading < 5% of the file from the disk.
fn resident(s: &mut String, r: &Report) -> std::fmt::Result {
    for res in &r.resident {
        let tag = crate::resident::size_tag(res.size_bytes);
        let mut parts = Vec::new();
        for shape in ["seq-1m", "seq-128k", "mmap"] {
            let id = format!("resident-{tag}-{shape}");
            let v = r
                .ratios
                .iter()
                .find(|x| x.workload == id)
                .and_then(|x| x.mount_over_source);
            parts.push(match v {
                Some(v) => format!(
                    "{shape} {v:.2}× ({})",
                    if v >= 0.9 { "meets" } else { "MISSES" }
                ),
                None => format!("{shape} n/a"),
            });
        }
        let mem = res.mmap_memfree_drop_bytes as f64 / res.size_bytes.max(1) as f64;
        writeln!(
            s,
            "resident {tag}: mount/source (page cache) {} (target ≥ 0.9×); mmap load added {} to RAM ({:.0}% of the file, target ≤ 10%); store filled {:.1} s after the first open; {} passthrough opens",
            parts.join(", "),
            human_bytes(res.mmap_memfree_drop_bytes.max(0) as u64),
            mem * 100.0,
            res.store_fill_seconds,
            res.passthrough_opens
        )?;
        if let Some(rs) = &res.restart {
            writeln!(
                s,
                "resident {tag} after a restart: first full read took {} from {} ({:.1}% of the file, target < 5%), daemon filled {}, {}",
                human_bytes(rs.device_read_bytes),
                rs.device,
                rs.device_read_bytes as f64 * 100.0 / res.size_bytes.max(1) as f64,
                human_bytes(rs.fill_bytes),
                if rs.byte_exact {
                    "byte-exact"
                } else {
                    "BYTES DIFFER"
                }
            )?;
        }
        for n in &res.notes {
            writeln!(s, "note: resident {tag}: {n}")?;
        }
    }
    Ok(())
}

/// The repeat rows: per pass the device's MiB and the time over the formula (medians over the
/// rounds), then passes 3 and later against issue 10's goals.
fn repeat(s: &mut String, r: &Report) -> std::fmt::Result {
    use crate::repeat::{DEVICE_GOAL, TIME_GOAL, verdict};
    let Some(rp) = &r.repeat else {
        return Ok(());
    };
    let v = verdict(rp);
    let tag = crate::resident::size_tag(rp.size_bytes);
    let list = |xs: &[Option<f64>], fmt: &dyn Fn(f64) -> String| {
        xs.iter()
            .map(|x| x.map_or_else(|| "n/a".to_string(), fmt))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rate = |x: &Option<crate::report::Runs>| x.as_ref().map_or(0.0, |r| r.median_gbps);
    writeln!(
        s,
        "repeat {tag} file through a {} pool ({} passes × {} rounds; the formula's rates, median: cold {:.2} GB/s, warm {:.2} GB/s): device MiB per pass {}; time over the formula per pass {}",
        crate::resident::size_tag(rp.pool_bytes),
        rp.passes,
        rp.rounds,
        rate(&rp.cold_gbps),
        rate(&rp.warm_gbps),
        list(&v.device_mib, &|x| format!("{x:.0}")),
        list(&v.over, &|x| format!("{x:.2}×")),
    )?;
    let meets = |ok: bool| if ok { "meets" } else { "MISSES" };
    let device = v.worst_device.map_or_else(
        || "n/a (no device counter)".to_string(),
        |d| {
            format!(
                "{} MiB ({} the ≤ {} MiB target: {DEVICE_GOAL}× what does not fit)",
                d >> 20,
                meets(d <= rp.device_goal_bytes),
                rp.device_goal_bytes >> 20
            )
        },
    );
    let time = v.worst_over.map_or_else(
        || "n/a".to_string(),
        |o| {
            format!(
                "{o:.2}× ({} the ≤ {TIME_GOAL}× target)",
                meets(o <= TIME_GOAL)
            )
        },
    );
    writeln!(
        s,
        "repeat {tag} passes 3+: most the device read in any run {device}; slowest pass (median over rounds) {time}"
    )?;
    for n in &rp.notes {
        writeln!(s, "note: repeat {tag}: {n}")?;
    }
    Ok(())
}

/// The S3 rows: per size the cold ratio against the ≥ 1.0× target (and the `--store off` mount's),
/// the warm ratios against the resident tier's ≥ 0.9×, the byte checks; then the sweep's table.
fn s3(s: &mut String, r: &Report) -> std::fmt::Result {
    let Some(s3) = &r.s3 else {
        return Ok(());
    };
    writeln!(
        s,
        "S3: {} (bucket {}, region {}); mount and baseline at {} × {} GETs in flight (the mount's chunk: its default)",
        s3.server,
        s3.bucket,
        s3.region,
        s3.concurrency,
        human_bytes(s3.part_bytes)
    )?;
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}×"));
    let verdict = |v: Option<f64>, target: f64| match v {
        Some(v) if v >= target => "meets",
        Some(_) => "MISSES",
        None => "n/a",
    };
    for z in &s3.sizes {
        let tag = crate::resident::size_tag(z.size_bytes);
        writeln!(
            s,
            "S3 {tag} cold: mount/GET {} ({} the ≥ 1.0× target), --store off {}; over the GET that keeps the object in memory (source-ram): mount {} ({}), --store off {}; first read {}, passthrough read {}; store held the object {:.1} s after the first open",
            f(z.cold_mount_over_get),
            verdict(z.cold_mount_over_get, 1.0),
            f(z.cold_arena_over_get),
            f(z.cold_mount_over_get_in_memory),
            verdict(z.cold_mount_over_get_in_memory, 1.0),
            f(z.cold_arena_over_get_in_memory),
            if z.byte_exact_first_read {
                "byte-exact"
            } else {
                "BYTES DIFFER"
            },
            match z.byte_exact_passthrough {
                Some(true) => "byte-exact",
                Some(false) => "BYTES DIFFER",
                None => "n/a",
            },
            z.store_fill_seconds
        )?;
        let warm: Vec<String> = ["seq-1m", "seq-128k", "mmap"]
            .iter()
            .map(|shape| {
                let v = z.warm_mount_over_local.get(*shape).copied();
                format!("{shape} {} ({})", f(v), verdict(v, 0.9))
            })
            .collect();
        if !z.server_cpu_s_per_run.is_empty() {
            let cpu: Vec<String> = z
                .server_cpu_s_per_run
                .iter()
                .map(|(t, v)| format!("{t} {v:.2} s"))
                .collect();
            writeln!(
                s,
                "S3 {tag} cold: the server's CPU time per run: {} (its CPU is the 'other' column's share)",
                cpu.join(", ")
            )?;
        }
        for (target, threads) in &z.mount_cpu_s_per_run_by_thread {
            let mut v: Vec<(&String, &f64)> = threads.iter().collect();
            v.sort_by(|a, b| b.1.total_cmp(a.1));
            let parts: Vec<String> = v
                .iter()
                .take(6)
                .map(|(n, s)| format!("{n} {s:.2} s"))
                .collect();
            writeln!(
                s,
                "S3 {tag} cold {target}: this process's CPU per run by thread: {}",
                parts.join(", ")
            )?;
        }
        writeln!(
            s,
            "S3 {tag} warm: mount/local page cache {} (target ≥ 0.9×, the resident tier's); {} passthrough opens",
            warm.join(", "),
            z.passthrough_opens
        )?;
        for n in &z.notes {
            writeln!(s, "note: S3 {tag}: {n}")?;
        }
    }
    if !s3.sweep.is_empty() {
        writeln!(
            s,
            "S3 sweep: cold read through the mount (--store none), GB/s, median of {} runs; in brackets the baseline at the same settings, then mount/GET",
            s3.sweep[0].mount.as_ref().map_or(0, |r| r.n)
        )?;
        let mut chunks: Vec<u64> = s3.sweep.iter().map(|p| p.part_bytes).collect();
        chunks.dedup();
        let mut concs: Vec<usize> = s3.sweep.iter().map(|p| p.concurrency).collect();
        concs.sort_unstable();
        concs.dedup();
        write!(s, "  {:<13}", "concurrency")?;
        for c in &chunks {
            write!(s, " {:<24}", format!("--s3-part-size {}", human_bytes(*c)))?;
        }
        writeln!(s)?;
        for conc in concs {
            write!(s, "  {conc:<13}")?;
            for c in &chunks {
                let p = s3
                    .sweep
                    .iter()
                    .find(|p| p.concurrency == conc && p.part_bytes == *c);
                let cell = p.map_or_else(String::new, |p| {
                    format!(
                        "{:.3} ({:.3}) {}",
                        p.mount.as_ref().map_or(0.0, |r| r.median_gbps),
                        p.get.as_ref().map_or(0.0, |r| r.median_gbps),
                        f(p.mount_over_get)
                    )
                });
                write!(s, " {cell:<24}")?;
            }
            writeln!(s)?;
        }
    }
    for n in &s3.notes {
        writeln!(s, "note: S3: {n}")?;
    }
    Ok(())
}

/// Warm mount rows that missed, and the notes.
fn warnings(s: &mut String, r: &Report) -> std::fmt::Result {
    // A "warm" mount row that still missed is not measuring what its label says: say so.
    for row in r
        .rows
        .iter()
        .filter(|x| x.target == "mount" && x.state.starts_with("arena holds"))
    {
        let misses = row
            .mount_stats
            .as_ref()
            .and_then(|m| m["misses"].as_u64())
            .unwrap_or(0);
        if misses > 0 {
            writeln!(
                s,
                "warning: {} ran with {misses} arena misses (pool too small?)",
                row.label
            )?;
        }
    }
    for n in &r.notes {
        writeln!(s, "note: {n}")?;
    }
    Ok(())
}
