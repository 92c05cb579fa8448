//! Repeat rows: one file larger than the pool, read whole again and again from dropped page
//! caches — a model reloaded on a machine that cannot give the cache all of it (issue 10). The
//! first pass is all misses and the second finds only what the first left; what matters is the
//! passes after. A cache that cycles everything through its queues reads the whole file from the
//! disk every pass; one that keeps a stable subset reads only what does not fit, and a pass that
//! hits a fraction h of its bytes should take about (1 − h) of the disk time. So every pass
//! records the bytes the block device read (its own counter, all page caches dropped before), the
//! bytes the daemon filled, and its time against the time the mount's own rates predict:
//! missed / cold rate + hit / warm rate, the rates measured in the same round on a fresh mount
//! with a file half the pool's size (cold: dropped caches; warm: arena hits).
//!
//! The source is read whole before each mount pass, from dropped caches too: the disk's rate at
//! that moment, so each pass's mount/source ratio is like with like on a shared machine.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};
use nitro_uring::mount::StatsSnapshot;
use nitro_uring::store::StoreMode;
use serde::Serialize;

use crate::harness::Bench;
use crate::report::{RowSpec, Runs};
use crate::resident::{leak, size_tag, write_random};
use crate::rounds::{add_run, stats_delta};
use crate::rows::SEQ_BLOCK;
use crate::sys;
use crate::workload::{self, FileRef, Measurement, human_bytes};

/// The file's size when `--repeat-size` is not given: the issue's 3 GiB through a 2 GiB pool.
const DEFAULT_SIZE: u64 = 3 << 30;
const QUICK_SIZE: u64 = 48 << 20;
const MIN_SIZE: u64 = 12 << 20;
/// Memory left to everything else while the pool is up.
const MEM_SPARE: u64 = 1 << 30;
/// Passes 3 and later: the device may read at most this much more than what does not fit in the
/// pool, and a pass may take at most this much longer than its rates predict (issue 10).
pub(crate) const DEVICE_GOAL: f64 = 1.25;
pub(crate) const TIME_GOAL: f64 = 1.15;

/// The repeat rows' report (`repeat` in the JSON).
#[derive(Serialize, Clone, Debug)]
pub struct Repeat {
    pub size_bytes: u64,
    /// Two thirds of the file, in whole chunks.
    pub pool_bytes: u64,
    pub passes: usize,
    pub rounds: usize,
    /// The block device under the file, whose sectors-read counter the passes read.
    pub device: String,
    /// The file of the rates (half the pool) and the rates of each round, GB/s: a fresh mount
    /// (`--store off`) reading it from dropped caches, then again (arena hits).
    pub rate_file_bytes: u64,
    pub cold_gbps: Option<Runs>,
    pub warm_gbps: Option<Runs>,
    pub per_pass: Vec<Pass>,
    /// Passes 3 and later: device bytes at most `DEVICE_GOAL` × (file − pool), time at most
    /// `TIME_GOAL` × expected.
    pub device_goal_bytes: u64,
    pub notes: Vec<String>,
}

/// One pass number over all rounds; each vector has one entry per round.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Pass {
    pub pass: usize,
    /// Bytes the block device read during the pass (every process's reads; empty when the
    /// device has no counter).
    pub device_read_bytes: Vec<u64>,
    /// Bytes the daemon filled from the source during the pass.
    pub fill_bytes: Vec<u64>,
    pub seconds: Vec<f64>,
    /// fill bytes / cold rate + the rest / warm rate, with the rates' medians over the rounds.
    pub expected_seconds: Vec<f64>,
    pub over_expected: Vec<f64>,
}

/// What to run: the file's size, the pool, the passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub size: u64,
    pub pool: u64,
    pub passes: usize,
}

/// `--repeat-size` (default 3 GiB, `--quick` 48 MiB; a default shrinks to what memory and disk
/// allow), the pool two thirds of it in whole chunks, `--repeat-passes` (at least 3). Err: why
/// the rows do not run.
pub(crate) fn spec(
    args: &crate::cli::BenchArgs,
    chunk: u64,
    mem_available: u64,
    disk_free: u64,
) -> Result<Spec, String> {
    let passes = args.repeat_passes.unwrap_or(5).max(3);
    // The pool and, beside it, the rest of the machine; the file and the rates' file on disk.
    let mem_max = mem_available.saturating_sub(MEM_SPARE) / 2 * 3;
    let disk_max = disk_free.saturating_sub(256 << 20) / 4 * 3;
    let size = match args.repeat_size {
        Some(0) => return Err("--repeat-size 0".into()),
        Some(s) => s,
        None if args.quick => QUICK_SIZE,
        None => DEFAULT_SIZE.min(mem_max).min(disk_max),
    };
    let size = size / chunk * chunk;
    if size < MIN_SIZE.max(3 * chunk) {
        return Err(format!(
            "a file larger than the pool needs at least {} ({} of available memory, {} free on the disk)",
            human_bytes(MIN_SIZE.max(3 * chunk)),
            human_bytes(mem_available),
            human_bytes(disk_free)
        ));
    }
    if size > mem_max || size > disk_max {
        return Err(format!(
            "a {} file needs a {} pool plus {} of available memory ({} available) and {} of disk ({} free)",
            human_bytes(size),
            human_bytes(size / 3 * 2),
            human_bytes(MEM_SPARE),
            human_bytes(mem_available),
            human_bytes(size + size / 3 + (256 << 20)),
            human_bytes(disk_free)
        ));
    }
    Ok(Spec {
        size,
        pool: size / 3 * 2 / chunk * chunk,
        passes,
    })
}

/// What one round measured of every pass.
struct RoundPass {
    device: Option<u64>,
    fill: u64,
    seconds: f64,
    stats: (StatsSnapshot, StatsSnapshot),
}

impl Bench<'_> {
    /// The repeat rows: `rounds` times, a fresh mount read `passes` times (each pass after the
    /// source's own read), then the rates on a fresh `--store off` mount.
    pub(crate) fn repeat(&mut self) -> Result<()> {
        let id = "repeat";
        if let Err(why) = self.plan.drop_ok.clone() {
            let why = format!("the repeat rows read from dropped page caches: {why}");
            self.skip(id, &["source", "mount"], &why);
            self.row_notes.push(why);
            return Ok(());
        }
        let dir = self.work.join("repeat");
        std::fs::create_dir_all(&dir)?;
        let mem = sys::proc_meminfo_bytes("MemAvailable").unwrap_or(0);
        let disk = sys::statfs(&dir).map_or(0, |(free, _)| free);
        let spec = match spec(self.args, self.plan.chunk, mem, disk) {
            Ok(s) => s,
            Err(why) => {
                let why = format!("repeat rows skipped: {why}");
                self.skip(id, &["source", "mount"], &why);
                self.row_notes.push(why);
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(());
            }
        };
        let r = self.repeat_spec(&dir, spec);
        let _ = self.unmount();
        let _ = std::fs::remove_dir_all(&dir);
        self.repeat = Some(r?);
        Ok(())
    }

    fn repeat_spec(&mut self, dir: &Path, spec: Spec) -> Result<Repeat> {
        let src_dir = dir.join("src");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&src_dir)?;
        std::fs::create_dir_all(&mnt)?;
        let rate_size = spec.pool / 2 / self.plan.chunk * self.plan.chunk;
        let ctx = self.ctx(format!("writing a {} file", human_bytes(spec.size)));
        write_random(&src_dir.join("big.bin"), spec.size, &ctx)?;
        write_random(&src_dir.join("rate.bin"), rate_size, &ctx)?;
        // Versions younger than the racy window are not cached as others are (fuse/versions.rs).
        std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + Duration::from_millis(300));
        let file = |base: &Path, name: &str, size| {
            vec![FileRef {
                path: base.join(name),
                size,
            }]
        };
        let (src, via) = (
            file(&src_dir, "big.bin", spec.size),
            file(&mnt, "big.bin", spec.size),
        );
        let rate_via = file(&mnt, "rate.bin", rate_size);
        let (_, device) = sys::fs_of(&src_dir);
        let sectors = || sys::device_sectors_read(&device);
        let mut out = Repeat {
            size_bytes: spec.size,
            pool_bytes: spec.pool,
            passes: spec.passes,
            rounds: self.plan.timing.rounds,
            device: device.clone(),
            rate_file_bytes: rate_size,
            cold_gbps: None,
            warm_gbps: None,
            per_pass: Vec::new(),
            device_goal_bytes: ((spec.size - spec.pool) as f64 * DEVICE_GOAL) as u64,
            notes: Vec::new(),
        };
        if sectors().is_none() {
            out.notes.push(format!(
                "{device} has no sectors-read counter: passes report the daemon's fills only"
            ));
        }
        let tag = size_tag(spec.size);
        let pool_tag = size_tag(spec.pool);
        // Per pass: the source's and the mount's measurements, their GB/s per round, and what each
        // round saw around the mount's pass.
        let mut src_acc: Vec<Option<Measurement>> = (0..spec.passes).map(|_| None).collect();
        let mut mnt_acc: Vec<Option<Measurement>> = (0..spec.passes).map(|_| None).collect();
        let mut src_gbps: Vec<Vec<f64>> = vec![Vec::new(); spec.passes];
        let mut mnt_gbps: Vec<Vec<f64>> = vec![Vec::new(); spec.passes];
        let mut seen: Vec<Vec<RoundPass>> = (0..spec.passes).map(|_| Vec::new()).collect();
        let (mut cold_acc, mut warm_acc) = (None, None);
        let (mut cold_gbps, mut warm_gbps) = (Vec::new(), Vec::new());
        let mut rate_stats = None;
        let rounds = self.plan.timing.rounds;
        for round in 0..rounds {
            self.resident_mount(&src_dir, &mnt, spec.pool, StoreMode::Ephemeral)?;
            for k in 0..spec.passes {
                let label = |t: &str| {
                    format!(
                        "repeat {tag} · pass {}/{} · {t} {}/{rounds}",
                        k + 1,
                        spec.passes,
                        round + 1
                    )
                };
                self.drop_all()?;
                let m = workload::seq_read(&src, SEQ_BLOCK, &self.ctx(label("source")))?;
                add_run(&mut src_acc[k], &mut src_gbps[k], m);
                self.drop_all()?;
                let before = self.mount_stats().unwrap_or_default();
                let s0 = sectors();
                let m = workload::seq_read(&via, SEQ_BLOCK, &self.ctx(label("mount")))?;
                let s1 = sectors();
                let after = self.mount_stats().unwrap_or_default();
                seen[k].push(RoundPass {
                    device: s0.zip(s1).map(|(a, b)| b.saturating_sub(a) * 512),
                    fill: after.fill_bytes - before.fill_bytes,
                    seconds: m.seconds,
                    stats: (before, after),
                });
                add_run(&mut mnt_acc[k], &mut mnt_gbps[k], m);
            }
            // The rates of the formula, from this machine now: cold fills and arena hits.
            self.resident_mount(&src_dir, &mnt, spec.pool, StoreMode::Off)?;
            self.drop_all()?;
            let before = self.mount_stats().unwrap_or_default();
            let label = format!("repeat rates · cold {}/{rounds}", round + 1);
            let m = workload::seq_read(&rate_via, SEQ_BLOCK, &self.ctx(label))?;
            add_run(&mut cold_acc, &mut cold_gbps, m);
            let mid = self.mount_stats().unwrap_or_default();
            self.drop_all()?;
            let label = format!("repeat rates · warm {}/{rounds}", round + 1);
            let m = workload::seq_read(&rate_via, SEQ_BLOCK, &self.ctx(label))?;
            add_run(&mut warm_acc, &mut warm_gbps, m);
            rate_stats = Some((before, mid, self.mount_stats().unwrap_or_default()));
            self.unmount()?;
        }
        out.cold_gbps = Runs::of(&cold_gbps);
        out.warm_gbps = Runs::of(&warm_gbps);
        let rates = out
            .cold_gbps
            .as_ref()
            .zip(out.warm_gbps.as_ref())
            .map(|(c, w)| (c.median_gbps * 1e9, w.median_gbps * 1e9))
            .ok_or_else(|| anyhow!("the repeat rows measured no rates"))?;
        for (k, runs) in seen.iter().enumerate() {
            out.per_pass
                .push(pass_report(k + 1, runs, spec.size, rates));
        }

        let state = |k: usize| -> &'static str {
            leak(format!(
                "pass {} of {}: all page caches dropped before it; {}",
                k + 1,
                spec.passes,
                if k == 0 {
                    "fresh mount (empty pool), --store none".to_string()
                } else {
                    format!("the same mount read it {k} time(s) before, --store none")
                }
            ))
        };
        for k in 0..spec.passes {
            let workload = leak(format!("repeat-pass{}", k + 1));
            let label = leak(format!(
                "repeat {tag} file, {pool_tag} pool: pass {}",
                k + 1
            ));
            let row = |target, cache_mode, state| RowSpec {
                workload,
                label,
                target,
                cache_mode,
                state,
                threads: 1,
                block_bytes: SEQ_BLOCK as u64,
            };
            if let Some(m) = src_acc[k].take() {
                let s = row("source", "-", "all page caches dropped (reads the disk)");
                self.record(&s, m, None, &src_gbps[k]);
            }
            if let Some(m) = mnt_acc[k].take() {
                self.record(&row("mount", "direct", state(k)), m, None, &mnt_gbps[k]);
                if let (Some(row), Some(last)) = (self.rows.last_mut(), seen[k].last()) {
                    row.mount_stats = Some(stats_delta(&last.stats.0, &last.stats.1));
                }
            }
        }
        for (which, acc, gbps) in [
            ("cold", cold_acc, &cold_gbps),
            ("warm", warm_acc, &warm_gbps),
        ] {
            let Some(m) = acc else { continue };
            let s = RowSpec {
                workload: leak(format!("repeat-rate-{which}")),
                label: leak(format!(
                    "repeat: the formula's {which} rate ({} file)",
                    human_bytes(rate_size)
                )),
                target: "mount",
                cache_mode: "direct",
                state: if which == "cold" {
                    "fresh mount (--store off), all page caches dropped"
                } else {
                    "second read: the arena holds the file (--store off)"
                },
                threads: 1,
                block_bytes: SEQ_BLOCK as u64,
            };
            self.record(&s, m, None, gbps);
            if let (Some(row), Some((a, b, c))) = (self.rows.last_mut(), rate_stats) {
                let (x, y) = if which == "cold" { (a, b) } else { (b, c) };
                row.mount_stats = Some(stats_delta(&x, &y));
            }
        }
        Ok(out)
    }
}

/// One pass number's report from its rounds, with `rates` (cold, warm) in bytes per second.
fn pass_report(pass: usize, rounds: &[RoundPass], size: u64, rates: (f64, f64)) -> Pass {
    let mut p = Pass {
        pass,
        ..Pass::default()
    };
    for r in rounds {
        if let Some(d) = r.device {
            p.device_read_bytes.push(d);
        }
        p.fill_bytes.push(r.fill);
        p.seconds.push(r.seconds);
        let missed = r.fill.min(size) as f64;
        let expected = missed / rates.0 + (size as f64 - missed) / rates.1;
        p.expected_seconds.push(expected);
        p.over_expected.push(r.seconds / expected.max(1e-9));
    }
    p
}

/// The median of some values (the mean of the middle two for an even count); None when empty.
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    Runs::of(v).map(|r| r.median_gbps)
}

/// Checks a report for the summary: per pass the median device MiB and time over expected, and
/// passes 3 and later against the goals.
pub(crate) struct Verdict {
    pub device_mib: Vec<Option<f64>>,
    pub over: Vec<Option<f64>>,
    /// The largest device read of any run of passes 3+, and the largest per-pass median of the
    /// time over expected.
    pub worst_device: Option<u64>,
    pub worst_over: Option<f64>,
}

pub(crate) fn verdict(r: &Repeat) -> Verdict {
    let mib = |v: &[u64]| {
        let f: Vec<f64> = v.iter().map(|&b| b as f64 / (1 << 20) as f64).collect();
        median(&f)
    };
    let later = r.per_pass.iter().filter(|p| p.pass >= 3);
    Verdict {
        device_mib: r
            .per_pass
            .iter()
            .map(|p| mib(&p.device_read_bytes))
            .collect(),
        over: r
            .per_pass
            .iter()
            .map(|p| median(&p.over_expected))
            .collect(),
        worst_device: later
            .clone()
            .flat_map(|p| p.device_read_bytes.iter().copied())
            .max(),
        worst_over: later
            .filter_map(|p| median(&p.over_expected))
            .max_by(f64::total_cmp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        b: crate::cli::BenchArgs,
    }

    fn args(extra: &[&str]) -> crate::cli::BenchArgs {
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        A::parse_from(v).b
    }

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_default_is_the_issues_three_gib_through_two() {
        let s = spec(&args(&[]), MIB, 20 * GIB, 100 * GIB).expect("runs");
        assert_eq!((s.size, s.pool, s.passes), (3 * GIB, 2 * GIB, 5));
    }

    #[test]
    fn the_default_shrinks_to_memory_and_disk_and_an_explicit_size_does_not() {
        let s = spec(&args(&[]), MIB, 2 * GIB, 100 * GIB).expect("runs");
        assert_eq!(s.size, 1536 * MIB);
        assert_eq!(s.pool, 1024 * MIB);
        let s = spec(&args(&[]), MIB, 20 * GIB, GIB + 256 * MIB).expect("runs");
        assert_eq!(s.size, 768 * MIB);
        let e = spec(&args(&["--repeat-size", "3GiB"]), MIB, 2 * GIB, 100 * GIB);
        assert!(e.is_err(), "{e:?}");
        assert!(spec(&args(&[]), MIB, GIB, 100 * GIB).is_err());
    }

    #[test]
    fn quick_sizes_pool_in_whole_chunks_and_at_least_three_passes() {
        let s = spec(
            &args(&["--quick", "--repeat-passes", "1"]),
            MIB,
            20 * GIB,
            100 * GIB,
        )
        .expect("runs");
        assert_eq!((s.size, s.pool, s.passes), (48 * MIB, 32 * MIB, 3));
        let s = spec(
            &args(&["--repeat-size", "100MiB"]),
            4 * MIB,
            20 * GIB,
            100 * GIB,
        )
        .expect("runs");
        assert_eq!((s.size, s.pool), (100 * MIB, 64 * MIB));
        assert!(spec(&args(&["--repeat-size", "0"]), MIB, 20 * GIB, 100 * GIB).is_err());
    }

    #[test]
    fn a_pass_is_measured_against_missed_over_cold_plus_hit_over_warm() {
        let stats = (StatsSnapshot::default(), StatsSnapshot::default());
        let rounds = [RoundPass {
            device: Some(512 * MIB),
            fill: 512 * MIB,
            seconds: 1.0,
            stats,
        }];
        // 0.5 GiB at 1 GB/s cold plus 0.5 GiB at 2 GB/s warm.
        let p = pass_report(3, &rounds, GIB, (1e9, 2e9));
        let want = 512.0 * MIB as f64 / 1e9 + 512.0 * MIB as f64 / 2e9;
        assert!((p.expected_seconds[0] - want).abs() < 1e-9);
        assert!((p.over_expected[0] - 1.0 / want).abs() < 1e-9);
        assert_eq!(p.device_read_bytes, vec![512 * MIB]);
    }
}
