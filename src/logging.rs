//! Log set-up shared by the programs built on this library (`nitro-uring-bench` starts the mount
//! in-process and must log it the way the daemon does: same filter, same `[hh:mm:ss]` lines on
//! stderr).

/// Logs to stderr at `info` (`debug` with one `-v`, `trace` with more, `warn` when `quiet`), for
/// this crate's messages; fuser's only at `error`. `NITRO_LOG` (an `EnvFilter`) overrides both.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NITRO_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("nitro_uring={level},fuser=error"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(ClockTime)
        .with_target(false)
        .with_level(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// `[14:23:46]` in local time.
struct ClockTime;

impl tracing_subscriber::fmt::time::FormatTime for ClockTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        // SAFETY: time(NULL) and localtime_r into an owned, zeroed struct.
        let tm = unsafe {
            let t = libc::time(std::ptr::null_mut());
            let mut tm: libc::tm = std::mem::zeroed();
            libc::localtime_r(&t, &mut tm);
            tm
        };
        write!(w, "[{:02}:{:02}:{:02}]", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}
