//! The progress line on a terminal. A bar is drawn by its own thread from a shared counter, so
//! the measured loops pay one relaxed atomic add now and then, never a terminal write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::Ctx;

/// A progress bar fed from a shared byte counter by its own thread, so hot loops only add to a
/// counter now and then. With `total` it shows bytes/s and ETA; without, bytes/s and elapsed time.
pub struct Progress {
    pub bytes: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(ctx: &Ctx<'_>, total: Option<u64>, time_budget: Option<Duration>) -> Progress {
        let bytes = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        if !ctx.show_progress {
            return Progress {
                bytes,
                done,
                thread: None,
            };
        }
        let pb = match (total, time_budget) {
            (Some(t), _) => {
                let pb = ProgressBar::new(t);
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<34} [{bar:28}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                pb
            }
            (None, Some(budget)) => {
                let pb = ProgressBar::new(budget.as_millis() as u64);
                pb.set_style(
                    ProgressStyle::with_template("{prefix:<34} [{bar:28}] {msg} eta {eta}")
                        .expect("template")
                        .progress_chars("=> "),
                );
                pb
            }
            (None, None) => ProgressBar::new_spinner(),
        };
        pb.set_prefix(ctx.label.clone());
        let (b, d) = (bytes.clone(), done.clone());
        let timed = total.is_none() && time_budget.is_some();
        let thread = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                let t0 = Instant::now();
                while !d.load(Ordering::Relaxed) {
                    let n = b.load(Ordering::Relaxed);
                    if timed {
                        pb.set_position(t0.elapsed().as_millis() as u64);
                        let rate = n as f64 / t0.elapsed().as_secs_f64().max(1e-3);
                        pb.set_message(format!("{:>10} {:>8.2} GB/s", human_bytes(n), rate / 1e9));
                    } else {
                        pb.set_position(n);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                pb.finish_and_clear();
            })
            .ok();
        Progress {
            bytes,
            done,
            thread,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}
