//! The `nitro-uring` command: a thin shell over the library (parse, log setup, signals, exit codes).

mod bench_launch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nitro_uring::mount::{CacheMode, CompressMode, MountConfig, Mounted, StoreMode};
use nitro_uring::size::{parse_bytes, parse_bytes_or_zero, parse_size};

mod cli;

#[derive(Parser)]
#[command(
    name = "nitro-uring",
    version,
    about = "A FUSE read-through RAM cache for large read-heavy files, filled by io_uring"
)]
struct Cli {
    /// More log lines (repeat for debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount SOURCE at MOUNTPOINT, read-only, served from a RAM pool (foreground; Ctrl+C unmounts)
    Mount(Box<MountArgs>),
    /// Benchmark the mount against its source and the FUSE ceiling (no arguments: a generated model dir)
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments of `nitro-uring-bench`, which this runs (`nitro-uring bench --help` lists them)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Unmount a nitro-uring mount (the foreground daemon then exits)
    Umount { mountpoint: PathBuf },
    #[command(flatten)]
    Ops(cli::Ops),
}

#[derive(clap::Args)]
struct MountArgs {
    /// A directory, or s3://BUCKET[/PREFIX] (credentials: AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials; AWS_PROFILE picks a profile)
    source: PathBuf,
    mountpoint: PathBuf,
    /// RAM pool size: 8G, 512M, 1.5GiB, or a plain number of GiB (8.0)
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pool: u64,
    /// Cache unit (a power of two, 64KiB..64MiB): 1MiB, 256K, or a plain number of bytes
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    chunk: u64,
    /// FUSE worker threads (default: number of cores)
    #[arg(long)]
    threads: Option<usize>,
    /// How far sequential prefetch runs ahead of a reader: 16MiB, or a plain number of bytes (0 disables)
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes_or_zero)]
    readahead: u64,
    /// Let other users access the mount
    #[arg(long)]
    allow_other: bool,
    /// mlock the pool so it is never swapped
    #[arg(long)]
    lock: bool,
    /// direct: no second copy in the page cache (default); keep: page cache keeps read data
    #[arg(long, value_enum, default_value = "direct")]
    cache_mode: CacheMode,
    /// Compress chunks leaving the hot set: auto (per chunk: byte planes + zstd for floats, zstd
    /// for text, raw otherwise), zstd (plain zstd for every chunk; `lz4` is an alias kept for
    /// compatibility, it now means zstd), or off
    #[arg(long, value_enum, default_value = "auto")]
    compress: CompressMode,
    /// Where whole files are kept in RAM for FUSE passthrough and across restarts: a directory on
    /// a tmpfs, `default` (a huge-page tmpfs mounted at /run/nitro-uring/store), `none` (kept
    /// only while mounted) or `off` (no store: every read goes through the daemon)
    #[arg(long, default_value = "default", value_parser = StoreMode::parse)]
    store: StoreMode,
    /// Serve Prometheus metrics at http://ADDR/metrics (ADDR: 127.0.0.1:9108, [::1]:9108; port 0
    /// picks a free port, logged as METRICS)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Opening one member of a model set (numbered shards, a safetensors index, an ollama
    /// manifest) prefetches the others into free room: on or off
    #[arg(long, default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    prefetch_sets: bool,
    /// s3:// sources: the S3-protocol endpoint (default: AWS_ENDPOINT_URL, else AWS itself)
    #[arg(long, value_name = "URL", help_heading = "S3 sources")]
    endpoint: Option<String>,
    /// s3:// sources: the region (default: AWS_REGION, ~/.aws/config, else us-east-1)
    #[arg(long, help_heading = "S3 sources")]
    region: Option<String>,
    /// s3:// sources: ranged GETs in flight at most
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "S3 sources")]
    s3_concurrency: u16,
    /// s3:// sources: the most one GET asks for; chunks fetched together (a whole-object fill, a
    /// sequential reader's window) are merged into GETs up to this size (64KiB..256MiB)
    #[arg(long, default_value = "8MiB", value_parser = parse_part_size, help_heading = "S3 sources")]
    s3_part_size: u64,
    /// s3:// sources: retries of a failed request before its read fails with EIO
    #[arg(long, default_value_t = 3, help_heading = "S3 sources")]
    s3_retries: u8,
    /// s3:// sources: seconds one try of a request may take (a read fails after its retries)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600), help_heading = "S3 sources")]
    s3_timeout: u32,
    /// s3:// sources: seconds a directory listing is trusted
    #[arg(long, default_value_t = 60, help_heading = "S3 sources")]
    list_ttl: u32,
}

fn parse_part_size(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if !(64 << 10..=256 << 20).contains(&n) {
        return Err(format!("{s} is not between 64KiB and 256MiB"));
    }
    Ok(n)
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, not {s}")),
    }
}

fn main() -> ExitCode {
    // Started by mount(8) as /sbin/mount.fuse.nitro-uring (fstab): a different command line.
    if let Some(code) = cli::helper::run_if_invoked_as_helper() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // One line, as for every other bad input; `--help` has the rest.
            let text = e.to_string();
            let mut lines = text.lines();
            let mut first = lines.next().unwrap_or("invalid arguments").to_string();
            // "the following required arguments were not provided:" names them on the next line
            if first.ends_with(':')
                && let Some(next) = lines.next()
            {
                first = format!("{first} {}", next.trim());
            }
            eprintln!(
                "nitro-uring: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    nitro_uring::logging::init(cli.verbose, cli.quiet);
    let result = match cli.cmd {
        Cmd::Mount(a) => run_mount(*a),
        Cmd::Bench { args } => bench_launch::exec(cli.verbose, cli.quiet, args),
        Cmd::Umount { mountpoint } => nitro_uring::mount::umount_nitro(&mountpoint),
        Cmd::Ops(ops) => cli::run(ops),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nitro-uring: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_mount(a: MountArgs) -> anyhow::Result<()> {
    let remote = match a
        .source
        .to_str()
        .and_then(nitro_uring::remote::Location::parse)
    {
        Some(Ok(loc)) => Some((
            loc,
            nitro_uring::remote::RemoteOptions {
                endpoint: a.endpoint.clone(),
                region: a.region.clone(),
                concurrency: usize::from(a.s3_concurrency),
                part_bytes: a.s3_part_size as usize,
                retries: usize::from(a.s3_retries),
                timeout: std::time::Duration::from_secs(u64::from(a.s3_timeout)),
                list_ttl: std::time::Duration::from_secs(u64::from(a.list_ttl)),
            },
        )),
        Some(Err(e)) => anyhow::bail!("{e}"),
        None if a.endpoint.is_some() || a.region.is_some() => {
            anyhow::bail!("--endpoint and --region are for s3:// sources")
        }
        None => None,
    };
    let mut cfg = MountConfig::new(a.source, a.mountpoint, a.pool);
    cfg.remote = remote;
    cfg.chunk_bytes = a.chunk;
    if let Some(t) = a.threads {
        cfg.threads = t;
    }
    cfg.readahead_bytes = a.readahead;
    cfg.allow_other = a.allow_other;
    cfg.lock = a.lock;
    cfg.cache_mode = a.cache_mode;
    cfg.compress = a.compress;
    cfg.store = a.store;
    cfg.metrics = a.metrics;
    cfg.prefetch_sets = a.prefetch_sets;
    // Signals are caught before mounting so a Ctrl+C during start-up still unmounts.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])?;
    let handle = signals.handle();
    let mounted = Mounted::spawn(cfg)?;
    // Once the mount answers: READY=1 to systemd, or OK to the mount helper's parent.
    cli::ready::mounted(&mounted)?;
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let watcher = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!("signal {sig}: unmounting");
            let _ = done_tx.send(());
        }
    });
    // Wake on a signal, or notice an unmount from outside or a dead fill engine.
    loop {
        if done_rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_ok()
            || mounted.finished()
            || mounted.engine_failure().is_some()
        {
            break;
        }
    }
    handle.close();
    let failure = mounted.engine_failure();
    let r = mounted.unmount();
    let _ = watcher.join();
    match failure {
        Some(reason) => Err(anyhow::anyhow!("fill engine failed: {reason}")),
        None => r,
    }
}
