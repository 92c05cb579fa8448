//! The commands for operating the daemon on a real machine (issue 11): kernel tuning, shell
//! completions and man pages, a systemd unit, and the `mount.fuse.nitro-uring` helper that lets
//! fstab and mount(8) start it; and the clients of a mount's control socket (`ctl`): `warm`,
//! `pin`, `unpin`, `evict`, `stats`.
//!
//! These live in the binary (not the library) because they need the clap definition in `main.rs`
//! (`crate::Cli`) and its `run_mount`; `main.rs` only flattens [`Ops`] into its subcommands.

pub mod ctl;
pub mod generate;
pub mod helper;
pub mod ready;
pub mod stats;
pub mod systemd;
pub mod tune;
pub mod warm;

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Ops {
    /// Check the kernel settings that matter for nitro-uring (current vs recommended), or apply them
    Tune(tune::TuneArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per command into --dir
    Man {
        /// Write nitro-uring.1 and a page per subcommand (nitro-uring-mount.1, ...) here
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print a systemd service unit that mounts SOURCE at MOUNTPOINT (Type=notify)
    SystemdUnit(systemd::UnitArgs),
    /// Link /sbin/mount.fuse.nitro-uring to this binary so fstab entries and `mount -t
    /// fuse.nitro-uring` work
    InstallHelper(helper::InstallArgs),
    /// Fill files (or directories) under a mount into its pool at full depth, in load order
    Warm(warm::WarmArgs),
    /// Warm files and keep them resident (capped at 3/4 of the pool)
    Pin(warm::PathsArgs),
    /// Let pinned files be evicted again
    Unpin(warm::PathsArgs),
    /// Drop files from the pool (store file and arena chunks) unless open handles hold them
    Evict(warm::PathsArgs),
    /// Show a mount's pool use, hit ratio, rates, service times and top files
    Stats(stats::StatsArgs),
}

pub fn run(ops: Ops) -> anyhow::Result<()> {
    match ops {
        Ops::Tune(a) => tune::run(a),
        Ops::Completions { shell } => generate::completions(shell),
        Ops::Man { dir } => generate::man(dir.as_deref()),
        Ops::SystemdUnit(a) => systemd::run(a),
        Ops::InstallHelper(a) => helper::install(a),
        Ops::Warm(a) => warm::warm(a),
        Ops::Pin(a) => warm::pin(a),
        Ops::Unpin(a) => warm::unpin(a),
        Ops::Evict(a) => warm::evict(a),
        Ops::Stats(a) => stats::run(a),
    }
}

/// An I/O error as a short phrase for a one-line message.
pub(crate) fn plain(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
