//! `nitro-uring bench`: side-by-side throughput and latency of the mount, its source and the FUSE
//! ceiling. (Being built; see issue 3.)

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
    /// Source directory to benchmark (default: a generated model directory)
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Where to mount (default: a temporary directory)
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Write every number as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG of the latency distributions here
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Small sizes, for CI and a first look
    #[arg(long)]
    pub quick: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Compression ratio and speed per codec on real files
    Codec {
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also report a BF16 version derived from F32 safetensors files
        #[arg(long, default_value_t = true)]
        derive_bf16: bool,
    },
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.cmd {
        Some(BenchCmd::Codec { .. }) => anyhow::bail!("bench codec is not built yet"),
        None => anyhow::bail!("bench is not built yet"),
    }
}
