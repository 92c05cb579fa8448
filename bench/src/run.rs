//! One run, start to end: signals, the temporary directory, the plan, the rows, the report. Its
//! shape is dictated by clean-up: Ctrl+C only raises a flag that every loop checks, the mounts
//! come down before the report is made, and the temporary directory goes last, whatever happened,
//! so an interrupted or failed run leaves nothing mounted and nothing on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::cli::{BenchArgs, BenchCmd};
use crate::finish::{self, CpuBaseline, Measured, Started};
use crate::harness::Bench;
use crate::plan::{Plan, Timing};
use crate::rows::run_rows;
use crate::sys::{self, Machine};
use crate::workload::{Ctx, Interrupted};
use crate::workspace::{Workspace, make_workspace, pick_base_dir};

/// Runs `nitro-uring bench` (the mount against its source and the ceiling) or
/// `nitro-uring bench codec` (the codecs on the given files).
pub fn run(args: BenchArgs) -> Result<()> {
    match &args.cmd {
        Some(BenchCmd::Codec {
            paths,
            json,
            derive_bf16,
        }) => crate::codec::run(paths, json.as_deref(), *derive_bf16),
        None => run_main(&args),
    }
}

fn run_main(args: &BenchArgs) -> Result<()> {
    let started = Started::now();
    // Ctrl+C and SIGTERM only raise this flag; every loop checks it, and the guards below unmount
    // and remove the temporary directory on the way out.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    let machine = sys::machine();
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());

    let base = pick_base_dir(args);
    let ws = make_workspace(&base)?;
    let run = Run {
        args,
        stop: &stop,
        show_progress,
        started,
    };
    let result = run.measure(&ws, machine);
    let interrupted = stop.load(Ordering::Relaxed)
        || result
            .as_ref()
            .err()
            .is_some_and(|e| e.downcast_ref::<Interrupted>().is_some());
    let root = ws.root.clone();
    drop(ws);
    let left = sys::mounts_under(&root);
    if !left.is_empty() {
        eprintln!(
            "nitro-uring bench: still mounted after cleanup: {}",
            left.join(", ")
        );
    }
    if interrupted {
        eprintln!(
            "nitro-uring bench: interrupted; everything unmounted and {} removed",
            root.display()
        );
        bail!("interrupted");
    }
    result
}

/// What stays the same through a run.
struct Run<'a> {
    args: &'a BenchArgs,
    stop: &'a AtomicBool,
    show_progress: bool,
    started: Started,
}

impl Run<'_> {
    /// Plans, runs the rows, takes the mounts down and reports, in the workspace `ws`.
    fn measure(&self, ws: &Workspace, machine: Machine) -> Result<()> {
        let args = self.args;
        let timing = Timing::from_args(args, machine.cores)?;
        let cpu = CpuBaseline::now();
        let ctx = Ctx {
            stop: self.stop,
            label: "generating model directory".into(),
            show_progress: self.show_progress,
        };
        let plan = Plan::new(args, timing, ws, &machine, &ctx)?;
        sys::reset_peak_rss();
        let mut b = Bench::new(args, &plan, self.stop, self.show_progress, ws.root.clone());
        plan.announce();
        let outcome = run_rows(&mut b);
        // Take everything down before reporting (and before the workspace goes), whatever happened.
        let (stats, down) = b.take_down();
        let peak_before_mmap = outcome?;
        down?;
        let measured = Measured {
            rows: std::mem::take(&mut b.rows),
            page_cache: std::mem::take(&mut b.page_cache),
            stats,
            peak_before_mmap,
            cpu,
            resident: std::mem::take(&mut b.resident_runs),
            row_notes: std::mem::take(&mut b.row_notes),
            s3: b.s3.take(),
            repeat: b.repeat.take(),
        };
        let report = finish::report(args, &plan, &ws.root, machine, &self.started, measured);
        finish::publish(args, &report)
    }
}
