//! `nitro-uring warm`, `pin`, `unpin`, `evict`: the client side (the daemon does the work, see
//! `nitro_uring::control`). A progress bar on a terminal, plain lines otherwise; Ctrl+C sends a
//! cancel and waits for the daemon to say where it stopped.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nitro_uring::control::proto::{FileInfo, Outcome, Plan, Reply, Request, Skipped};
use nitro_uring::size::human;

use super::ctl::{self, Client};

#[derive(clap::Args)]
pub struct WarmArgs {
    /// Files or directories under a nitro-uring mountpoint
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Only print residency per file (resident %, compressed %, pinned, stored); change nothing
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
pub struct PathsArgs {
    /// Files or directories under a nitro-uring mountpoint
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn warm(a: WarmArgs) -> Result<()> {
    for (m, rels) in ctl::group(&a.paths)? {
        let mut c = Client::connect(&m)?;
        if a.check {
            c.send(Request::Warm {
                paths: rels,
                check: true,
            })?;
            match c.next()? {
                Reply::Done { files, skipped, .. } => print_check(&files, &skipped),
                other => bail!("unexpected reply {other:?}"),
            }
        } else {
            fill(
                &mut c,
                Request::Warm {
                    paths: rels,
                    check: false,
                },
                "warmed",
            )?;
        }
    }
    Ok(())
}

pub fn pin(a: PathsArgs) -> Result<()> {
    for (m, rels) in ctl::group(&a.paths)? {
        fill(
            &mut Client::connect(&m)?,
            Request::Pin { paths: rels },
            "pinned",
        )?;
    }
    Ok(())
}

pub fn unpin(a: PathsArgs) -> Result<()> {
    outcomes(&a.paths, |paths| Request::Unpin { paths })
}

pub fn evict(a: PathsArgs) -> Result<()> {
    outcomes(&a.paths, |paths| Request::Evict { paths })
}

fn outcomes(paths: &[PathBuf], req: impl Fn(Vec<String>) -> Request) -> Result<()> {
    let mut failed = 0;
    for (m, rels) in ctl::group(paths)? {
        let mut c = Client::connect(&m)?;
        c.send(req(rels))?;
        let Reply::Outcomes { outcomes } = c.next()? else {
            bail!("unexpected reply");
        };
        for Outcome { path, ok, message } in outcomes {
            let shown = m.mountpoint.join(&path);
            if ok {
                println!("{}: {message}", shown.display());
            } else {
                failed += 1;
                eprintln!("nitro-uring: {}: {message}", shown.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} file(s) not done (see above)");
    }
    Ok(())
}

/// Runs a warm or pin to its end, drawing progress; Ctrl+C cancels it in the daemon.
fn fill(c: &mut Client, req: Request, verb: &str) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGINT, stop.clone())?;
    signal_hook::flag::register(libc::SIGTERM, stop.clone())?;
    c.send(req)?;
    let plan = match c.next()? {
        Reply::Plan(p) => p,
        Reply::Done { files, skipped, .. } => return summary(&files, &skipped, verb, 0.0, false),
        other => bail!("unexpected reply {other:?}"),
    };
    if let Some(w) = &plan.warning {
        eprintln!("nitro-uring: warning: {w}");
    }
    let mut bar = Bar::new(&plan);
    c.set_timeout(Duration::from_millis(200))?;
    let mut cancel_sent = false;
    loop {
        if stop.load(Ordering::Relaxed) && !cancel_sent {
            cancel_sent = true;
            let _ = c.send(Request::Cancel);
        }
        let reply = match c.next_raw() {
            Ok(Some(r)) => r,
            Ok(None) => bail!("daemon not answering (it closed the connection)"),
            Err(e) if ctl::is_timeout(&e) => continue,
            Err(e) => return Err(e),
        };
        match reply {
            Reply::Progress {
                resident_bytes,
                file,
                ..
            } => bar.draw(resident_bytes, file),
            Reply::Done {
                files,
                skipped,
                cancelled,
            } => {
                bar.finish();
                let secs = bar.start.elapsed().as_secs_f64();
                return summary(&files, &skipped, verb, secs, cancelled);
            }
            Reply::Error { error } => {
                bar.finish();
                bail!("{error}");
            }
            _ => {}
        }
    }
}

struct Bar {
    start: Instant,
    total: u64,
    base: u64,
    names: Vec<String>,
    tty: bool,
    last_line: Instant,
    drawn: bool,
}

impl Bar {
    fn new(plan: &Plan) -> Bar {
        Bar {
            start: Instant::now(),
            total: plan.total_bytes,
            base: plan.resident_bytes,
            names: plan.files.iter().map(|f| f.path.clone()).collect(),
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            drawn: false,
        }
    }

    fn draw(&mut self, resident: u64, file: usize) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = resident.saturating_sub(self.base) as f64 / secs;
        let left = self.total.saturating_sub(resident) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0}s", left / rate)
        } else {
            "?".into()
        };
        let pct = 100.0 * resident as f64 / self.total.max(1) as f64;
        let name = self.names.get(file).map_or("", String::as_str);
        let text = format!(
            "{pct:5.1}% {} / {}  {:.2} GB/s  ETA {eta}  [{}/{}] {name}",
            human(resident),
            human(self.total),
            rate / 1e9,
            (file + 1).min(self.names.len()),
            self.names.len()
        );
        let mut err = std::io::stderr();
        if self.tty {
            let width = 24;
            let full = ((pct / 100.0) * width as f64) as usize;
            let bar: String = (0..width)
                .map(|i| if i < full { '#' } else { '.' })
                .collect();
            let _ = write!(err, "\r\x1b[2K[{bar}] {text}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let _ = writeln!(err, "{text}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn summary(
    files: &[FileInfo],
    skipped: &[Skipped],
    verb: &str,
    secs: f64,
    cancelled: bool,
) -> Result<()> {
    for s in skipped {
        eprintln!("nitro-uring: skipped {}: {}", s.path, s.why);
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let resident: u64 = files.iter().map(|f| f.resident_bytes).sum();
    let line = format!(
        "{} file(s), {} of {} resident ({:.1}%)",
        files.len(),
        human(resident),
        human(total),
        100.0 * resident as f64 / total.max(1) as f64
    );
    if cancelled {
        bail!("cancelled: {line}");
    }
    println!("{verb} {line} in {secs:.1} s");
    Ok(())
}

/// `warm --check`: one line per file, as `vmtouch -v` gives.
fn print_check(files: &[FileInfo], skipped: &[Skipped]) {
    println!(
        "{:>9} {:>11} {:>6} {:>6} {:>10}  path",
        "resident", "compressed", "pinned", "stored", "size"
    );
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    for f in files {
        println!(
            "{:>8.1}% {:>10.1}% {:>6} {:>6} {:>10}  {}",
            pct(f.resident_bytes, f.size),
            pct(f.compressed_bytes, f.size),
            if f.pinned { "yes" } else { "-" },
            if f.stored { "yes" } else { "-" },
            human(f.size),
            f.path
        );
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let resident: u64 = files.iter().map(|f| f.resident_bytes).sum();
    println!(
        "{} file(s): {} of {} resident ({:.1}%)",
        files.len(),
        human(resident),
        human(total),
        pct(resident, total)
    );
    for s in skipped {
        eprintln!("nitro-uring: skipped {}: {}", s.path, s.why);
    }
}
