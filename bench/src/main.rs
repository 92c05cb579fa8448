//! `nitro-uring-bench`: the program `nitro-uring bench ARGS` runs (see the crate docs for why it is
//! a program of its own). It answers as `nitro-uring bench` — same help, same one-line errors and
//! exit codes — since that is the name users type.

use std::process::ExitCode;

use clap::Parser;
use nitro_uring_bench::BenchArgs;

#[derive(Parser)]
#[command(
    name = "nitro-uring bench",
    bin_name = "nitro-uring bench",
    about = "Benchmark the mount against its source and the FUSE ceiling (no arguments: a generated model dir)"
)]
struct Cli {
    /// More log lines (repeat for debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_failure(&e),
    };
    // SAFETY: nothing has started a thread yet (arguments parsed, logging not set up).
    unsafe { nitro_uring_bench::s3::prepare_env(&cli.args) };
    // The bench draws progress bars: the mount's heartbeat would break them up, so it logs
    // warnings only unless asked for more.
    nitro_uring::logging::init(cli.verbose, cli.quiet || cli.verbose == 0);
    match nitro_uring_bench::run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nitro-uring: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout (exit 0); a bad argument is one line (exit 2), as for every
/// other `nitro-uring` command.
fn parse_failure(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    let text = e.to_string();
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or("invalid arguments").to_string();
    // "the following required arguments were not provided:" names them on the next line.
    if first.ends_with(':')
        && let Some(next) = lines.next()
    {
        first = format!("{first} {}", next.trim());
    }
    eprintln!(
        "nitro-uring: {} (see --help)",
        first.trim_start_matches("error: ")
    );
    ExitCode::from(2)
}
