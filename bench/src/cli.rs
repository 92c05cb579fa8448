//! The benchmark's arguments. They are a library type (not the binary's) so that a caller can
//! build them to run the benchmark in-process, as the tests of the codec bench do.

use std::path::PathBuf;

use nitro_uring::size::{parse_bytes, parse_size};

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
    /// RAM pool of the mount (default: enough to hold the whole source)
    #[arg(long, value_parser = parse_size)]
    pub pool: Option<u64>,
    /// Total size of the generated model directory (default: 4 shards sized to free memory and disk, at most 1 GiB; --quick: 64MiB)
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Reader threads of the multi-threaded random rows (default: 2 × cores, at least 4)
    #[arg(long)]
    pub threads: Option<usize>,
    /// FUSE worker threads of the mount and of the null filesystem (default: cores)
    #[arg(long)]
    pub fuse_threads: Option<usize>,
    /// Seconds each timed row (random reads, mmap random) runs per target (default 2; --quick 0.25)
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Runs of every row, the targets taking turns: timed rows split their seconds into this many
    /// rounds, cold rows run this many times from dropped caches; each row reports min / median /
    /// max over them (default 4; --quick 3; at least 3)
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Folder for the temporary directory (default: $TMPDIR, or /var/tmp when /tmp is a tmpfs)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only these workloads (comma-separated ids, e.g. arena-seq,rand-4k-1t)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Reads in flight of the cold source baseline (`source-qd`: the source read with O_DIRECT
    /// through io_uring in chunk-sized reads); default: the mount engine's own depth, 64, so that
    /// it compares like with like. Other depths show how the disk scales.
    #[arg(long)]
    pub source_qd: Option<usize>,
    /// File sizes of the resident rows (store + passthrough against the page cache), comma-separated
    /// (default 1GiB,4GiB, each only if memory allows; --quick: 32MiB; 0: none)
    #[arg(long, value_delimiter = ',', value_parser = parse_size_or_zero)]
    pub resident_sizes: Option<Vec<u64>>,
    /// The repeat rows (a file larger than the pool read whole again and again, from dropped page
    /// caches): the file's size; the pool is two thirds of it (default 3GiB through a 2GiB pool,
    /// smaller when memory or disk are short; --quick: 48MiB; 0: none)
    #[arg(long, value_parser = parse_size_or_zero)]
    pub repeat_size: Option<u64>,
    /// The repeat rows: passes over the file per round (default 5, at least 3)
    #[arg(long)]
    pub repeat_passes: Option<usize>,
    /// Model-set prefetch of the mount (`--prefetch-sets`): on (default) or off. The generated
    /// shards form a set, so with it on, opening the first shard prefetches the others
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub prefetch_sets: String,
    /// Never drop the system's page cache (the cold rows are then skipped)
    #[arg(long)]
    pub no_drop_caches: bool,
    /// S3 rows (`--only s3`, never in the default run): an S3-protocol endpoint to measure, with
    /// --s3-bucket (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Default: the bench
    /// starts s3s-fs itself on a free port and stops it at the end
    #[arg(
        long,
        value_name = "URL",
        requires = "s3_bucket",
        help_heading = "S3 rows"
    )]
    pub s3_endpoint: Option<String>,
    /// S3 rows: the bucket on --s3-endpoint (the test object goes under nitro-uring-bench/)
    #[arg(long, requires = "s3_endpoint", help_heading = "S3 rows")]
    pub s3_bucket: Option<String>,
    /// S3 rows: the region (default: AWS_REGION, else us-east-1)
    #[arg(long, help_heading = "S3 rows")]
    pub s3_region: Option<String>,
    /// S3 rows: the s3s-fs program to start when no --s3-endpoint is given (default: s3s-fs on
    /// PATH, else /opt/s3s/bin/s3s-fs)
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "s3_endpoint",
        help_heading = "S3 rows"
    )]
    pub s3_server: Option<PathBuf>,
    /// S3 rows: object sizes, comma-separated (default 1GiB; --quick 32MiB)
    #[arg(long, value_delimiter = ',', value_parser = parse_size, help_heading = "S3 rows")]
    pub s3_sizes: Option<Vec<u64>>,
    /// S3 rows: the mount's --s3-concurrency, and the GETs in flight of the baseline (default: the
    /// mount's default)
    #[arg(long, help_heading = "S3 rows")]
    pub s3_concurrency: Option<usize>,
    /// S3 rows: the mount's --s3-part-size, and the size of the baseline's ranged GETs (default:
    /// the mount's default)
    #[arg(long, value_parser = parse_bytes, help_heading = "S3 rows")]
    pub s3_part: Option<u64>,
    /// S3 rows: also sweep --s3-concurrency 8,16,32,64 × --s3-part-size 1,4,8,16MiB (cold reads
    /// through the mount and the baseline at the same settings, 2 runs each)
    #[arg(long, help_heading = "S3 rows")]
    pub s3_sweep: bool,
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

/// A size as `--pool` takes it, or 0 (which turns a group of rows off).
fn parse_size_or_zero(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    parse_size(text)
}
