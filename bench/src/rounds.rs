//! How a workload's targets share the machine: in interleaved rounds (source, mount, ceiling,
//! source, ...), so that the slow drifts of a small shared machine hit every target alike and the
//! ratios hold still even when the absolute numbers move; and how the rounds become rows (the
//! median run, the spread, the mount's counters over the row).

use anyhow::Result;
use nitro_uring::mount::{CacheMode, StatsSnapshot};

use crate::harness::{Bench, Target};
use crate::report::{self, Row, RowSpec, Runs};
use crate::rows::label_of;
use crate::sys;
use crate::workload::{Ctx, Measurement};

/// One target's run of a workload: called once per round with the round number.
pub(crate) type Runner = Box<dyn FnMut(&Ctx<'_>, usize) -> Result<Measurement>>;

/// One run's throughput in GB/s (10⁹ bytes per second).
fn run_gbps(m: &Measurement) -> f64 {
    m.bytes as f64 / m.seconds.max(1e-9) / 1e9
}

pub(crate) fn stats_delta(a: &StatsSnapshot, b: &StatsSnapshot) -> serde_json::Value {
    serde_json::json!({
        "hits": b.hits - a.hits,
        "misses": b.misses - a.misses,
        "fills": b.fills - a.fills,
        "fill_bytes": b.fill_bytes - a.fill_bytes,
        "prefetch_fills": b.prefetch_fills - a.prefetch_fills,
        "evictions": b.evictions - a.evictions,
        "uncached_reads": b.uncached_reads - a.uncached_reads,
        "fill_errors": b.fill_errors - a.fill_errors,
        "pool_used_bytes": b.pool_used_bytes,
        "after": serde_json::to_value(b).unwrap_or(serde_json::Value::Null),
    })
}

/// Adds one run to a row's accumulated measurement and its per-run rates.
pub(crate) fn add_run(acc: &mut Option<Measurement>, gbps: &mut Vec<f64>, m: Measurement) {
    gbps.push(run_gbps(&m));
    *acc = Some(match acc.take() {
        None => m,
        Some(a) => a.merge(m),
    });
}

impl Bench<'_> {
    /// Turns a measurement into a row (with the mount's counters since `before` for mount rows),
    /// with the GB/s of each run and their spread, prints its one-line summary and keeps it.
    pub(crate) fn record(
        &mut self,
        spec: &RowSpec<'_>,
        m: Measurement,
        before: Option<StatsSnapshot>,
        runs: &[f64],
    ) {
        let label = format!(
            "{} · {}",
            spec.label
                .replace("×N", &format!("×{}", self.plan.timing.threads)),
            spec.target
        );
        let mut row = Row::measured(spec, m);
        row.runs = Runs::of(runs);
        if let (Some(b), Some((mnt, _))) = (before, self.mount.as_ref()) {
            let mut st = stats_delta(&b, &mnt.stats());
            // Huge pages under the arena make the kernel's copy out of it cheaper; a pool that got
            // 4 KiB pages (fragmented memory) is measurably slower, so every mount row says which.
            st["anon_huge_pages_bytes"] =
                sys::smaps_rollup_bytes("AnonHugePages").unwrap_or(0).into();
            row.mount_stats = Some(st);
        }
        let spread = row.runs.as_ref().map_or_else(String::new, |r| {
            format!("({:.2}–{:.2}, {} runs)", r.min_gbps, r.max_gbps, r.n)
        });
        eprintln!(
            "  {label:<44} {:>7.2} GB/s {spread:<22} p50 {:>8}  p99 {:>8}  {}",
            row.median_gbps(),
            row.latency_ns
                .as_ref()
                .map_or("-".into(), |l| report::fmt_ns(l.p50)),
            row.latency_ns
                .as_ref()
                .map_or("-".into(), |l| report::fmt_ns(l.p99)),
            row.access
        );
        self.rows.push(row);
    }

    /// Runs the targets of one workload in interleaved rounds (source, mount, ceiling, source,
    /// mount, ...), each round getting 1/rounds of the time, and merges each target's rounds. On a
    /// small shared machine throughput drifts over seconds; interleaving makes the drift hit all
    /// targets alike, so the ratios hold still even when the absolute numbers move.
    pub(crate) fn interleave(
        &mut self,
        mut entries: Vec<(RowSpec<'static>, Runner)>,
    ) -> Result<()> {
        let rounds = self.plan.timing.rounds;
        let before = self.mount.as_ref().map(|m| m.0.stats());
        let mut acc: Vec<Option<Measurement>> = entries.iter().map(|_| None).collect();
        let mut gbps: Vec<Vec<f64>> = entries.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for (i, (spec, run)) in entries.iter_mut().enumerate() {
                self.check()?;
                let label = self.round_label(spec, round);
                let m = run(&self.ctx(label), round)?;
                add_run(&mut acc[i], &mut gbps[i], m);
            }
        }
        self.record_runs(&entries, acc, gbps, before);
        Ok(())
    }

    pub(crate) fn round_label(&self, spec: &RowSpec<'_>, round: usize) -> String {
        format!(
            "{} · {} {}/{}",
            spec.label
                .replace("×N", &format!("×{}", self.plan.timing.threads)),
            spec.target,
            round + 1,
            self.plan.timing.rounds
        )
    }

    /// Records each row from its runs (a mount row with the mount's counters from `before`).
    pub(crate) fn record_runs(
        &mut self,
        entries: &[(RowSpec<'static>, Runner)],
        acc: Vec<Option<Measurement>>,
        gbps: Vec<Vec<f64>>,
        before: Option<StatsSnapshot>,
    ) {
        for (((spec, _), m), g) in entries.iter().zip(acc).zip(gbps) {
            let Some(m) = m else { continue };
            let before = if spec.target == "mount" { before } else { None };
            self.record(spec, m, before, &g);
        }
    }

    /// The cold rows: `rounds` runs per target, the targets taking turns, every run after all page
    /// caches were dropped, and every run of the mount on a fresh mount (empty arena). A mount row's
    /// counters are those of its last run (each run has a mount of its own).
    pub(crate) fn cold_rounds(
        &mut self,
        mut entries: Vec<(RowSpec<'static>, Runner)>,
    ) -> Result<()> {
        let rounds = self.plan.timing.rounds;
        let mut acc: Vec<Option<Measurement>> = entries.iter().map(|_| None).collect();
        let mut gbps: Vec<Vec<f64>> = entries.iter().map(|_| Vec::new()).collect();
        let mut before = None;
        for round in 0..rounds {
            for (i, (spec, run)) in entries.iter_mut().enumerate() {
                self.check()?;
                let mount = spec.target == "mount";
                if mount {
                    self.fresh_mount(CacheMode::Direct)?;
                }
                self.drop_all()?;
                if mount {
                    before = self.mount.as_ref().map(|m| m.0.stats());
                }
                let label = self.round_label(spec, round);
                let m = run(&self.ctx(label), round)?;
                if mount {
                    self.warm = true;
                }
                if spec.workload == "cold-seq" {
                    // What each cold read left in the page cache (the last run's).
                    let resident = sys::resident_fraction(&self.files_of(Target::Source)).ok();
                    match spec.target {
                        "source" => self.page_cache.source_after_source_cold_read = resident,
                        "mount" => self.page_cache.source_after_mount_cold_read = resident,
                        _ => {}
                    }
                }
                add_run(&mut acc[i], &mut gbps[i], m);
            }
        }
        self.record_runs(&entries, acc, gbps, before);
        Ok(())
    }

    pub(crate) fn skip(&mut self, id: &str, targets: &[&'static str], why: &str) {
        for &t in targets {
            self.rows.push(Row::skipped(
                &RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t,
                    cache_mode: if t.starts_with("source") {
                        "-"
                    } else {
                        "direct"
                    },
                    state: "",
                    threads: 1,
                    block_bytes: 0,
                },
                why,
            ));
        }
        eprintln!("  {:<44} skipped: {why}", label_of(id));
    }
}
