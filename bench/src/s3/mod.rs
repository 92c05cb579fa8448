//! S3 rows (`--only s3`, never in the default run): the mount over an S3-protocol endpoint against
//! what a program gets from the same endpoint without it.
//!
//! Why this baseline: a cache in front of a bucket is worth mounting only if a cold read through
//! it is no slower than the client a loader would otherwise use. So the cold rows compare a
//! sequential read of the object through a fresh mount with a plain `object_store` client (the
//! crate and version the daemon uses) fetching the same object in the same request pattern — the
//! mount's `--s3-part-size` as the GET size, the mount's `--s3-concurrency` GETs in flight — with the bytes
//! going nowhere: the difference is the mount's own cost (FUSE, the engine, the copies), not a
//! different way of asking the server. A second mount row (`mount-arena`) runs with `--store off`:
//! the arena path and prefetch only, without the whole-object store fill.
//!
//! Why the warm rows are the resident rows' shapes: once the object has been read, the store holds
//! it whole and re-opens are passthrough, so a warm read of a bucket's object should be what a
//! local file in the page cache gives (the resident tier's comparison), whatever the bucket is.
//!
//! Why the server runs on the same machine (s3s-fs, started here unless `--s3-endpoint` names
//! one): it makes the rows reproducible without a cloud account, and it is the strict case — the
//! server competes with the mount for the same cores, so CPU the mount spends is throughput the
//! server loses. Each run states the server, the machine and the settings next to the numbers.
//!
//! The sweep (`--s3-sweep`) measures the cold read at other `--s3-concurrency` and `--s3-part-size`
//! settings (the baseline at the same settings beside it), to pick the mount's defaults by
//! measurement.

mod object;
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use nitro_uring::mount::{CacheMode, MountConfig, Mounted, StatsSnapshot};
use nitro_uring::remote::{Location, RemoteOptions};
use nitro_uring::store::StoreMode;
use object_store::path::Path as KeyPath;
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::harness::Bench;
use crate::report::{RowSpec, Runs};
use crate::resident::{hash_file, leak, size_tag};
use crate::rounds::{add_run, stats_delta};
use crate::rows::SEQ_BLOCK;
use crate::sys;
use crate::workload::{self, FileRef, Measurement, human_bytes};
use object::Endpoint;

/// The bucket the bench makes on the server it starts.
const OWN_BUCKET: &str = "nitro-bench";
/// Keys go under this prefix of the bucket (the mount mounts one size's folder of it).
const PREFIX: &str = "nitro-uring-bench";
/// The sweep's settings and its runs per point.
const SWEEP_CONCURRENCY: [usize; 4] = [8, 16, 32, 64];
const SWEEP_PARTS: [u64; 4] = [1 << 20, 4 << 20, 8 << 20, 16 << 20];
const SWEEP_RUNS: usize = 2;

/// What the S3 rows found beside their rows (`s3` in the JSON).
#[derive(Serialize, Clone, Debug)]
pub struct S3Report {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// The server: "s3s-fs 0.14.1, started by the bench (root on ext4 /dev/vda)", or "given".
    pub server: String,
    /// The mount's `--s3-concurrency` and the baseline's GETs in flight.
    pub concurrency: usize,
    /// The mount's `--s3-part-size` and the baseline's GET size (the mount's chunk, its cache
    /// unit, stays at its default).
    pub part_bytes: u64,
    /// The engine's fill slots (one per chunk in flight; a store fill keeps at most three
    /// quarters of them in flight).
    pub engine_max_fills: usize,
    pub sizes: Vec<S3Size>,
    /// `--s3-sweep`: the cold read at other settings, on the first size.
    pub sweep: Vec<SweepPoint>,
    pub notes: Vec<String>,
}

/// One object size.
#[derive(Serialize, Clone, Debug)]
pub struct S3Size {
    pub size_bytes: u64,
    pub key: String,
    /// Seconds the upload took (multipart, 16 MiB parts); None: the object was there already.
    pub upload_seconds: Option<f64>,
    /// Median GB/s of the cold read through the mount (`--store none`, and `--store off`) over
    /// the baseline's median.
    pub cold_mount_over_get: Option<f64>,
    pub cold_arena_over_get: Option<f64>,
    /// The same over the baseline that keeps the object in memory (`source-ram`).
    pub cold_mount_over_get_in_memory: Option<f64>,
    pub cold_arena_over_get_in_memory: Option<f64>,
    /// Per read shape: the warm mount's median over the local copy's (page cache).
    pub warm_mount_over_local: BTreeMap<String, f64>,
    /// From the first open of a fresh `--store none` mount until the store held the object whole
    /// (the first read being a full sequential read).
    pub store_fill_seconds: f64,
    /// xxh3 of that first read through the mount against the object's.
    pub byte_exact_first_read: bool,
    /// xxh3 of a read through the mount once the store held it (passthrough).
    pub byte_exact_passthrough: Option<bool>,
    pub passthrough_opens: u64,
    /// Per cold target (`source`, `mount`, `mount-arena`): the CPU seconds the server used per
    /// run, on average (only for a server the bench started). The same bytes in the same GETs
    /// should cost the server the same; the difference is CPU the server did not get.
    pub server_cpu_s_per_run: BTreeMap<String, f64>,
    /// Per cold mount target: this process's CPU seconds per run by thread name (the reader is
    /// `nitro-uring-ben`, the FUSE workers, the ring thread `nitro-ring`, the GETs' runtime
    /// `nitro-s3`), on average: where the mount's own time goes.
    pub mount_cpu_s_per_run_by_thread: BTreeMap<String, BTreeMap<String, f64>>,
    pub notes: Vec<String>,
}

/// One point of the sweep: GB/s of each run, mount and baseline.
#[derive(Serialize, Clone, Debug)]
pub struct SweepPoint {
    pub concurrency: usize,
    pub part_bytes: u64,
    pub mount: Option<Runs>,
    pub get: Option<Runs>,
    pub mount_over_get: Option<f64>,
}

/// What every S3 row shares: where the server is and the client settings under test.
struct Env {
    ep: Endpoint,
    concurrency: usize,
    /// The mount's `--s3-part-size` and the baseline's GET size.
    part: u64,
    server: Option<server::Server>,
}

impl Env {
    fn server_cpu(&self) -> Option<f64> {
        self.server.as_ref().and_then(server::Server::cpu_seconds)
    }
}

/// Keys the bench gives the server it starts when the environment has none.
const OWN_KEYS: (&str, &str) = ("nitro-bench-access", "nitro-bench-secret-key");

/// Sets `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` to the bench's own keys when the S3
/// rows will start their own server and the environment names no keys: the in-process mount reads
/// its credentials from the environment, as the daemon does.
///
/// # Safety
/// No other thread may run (the environment is not thread-safe): call it first thing in `main`.
pub unsafe fn prepare_env(args: &BenchArgs) {
    let ownserver = args.only.iter().any(|o| o == "s3") && args.s3_endpoint.is_none();
    if ownserver && !keys_in_env() {
        // SAFETY: the caller promises no other thread runs.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", OWN_KEYS.0);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", OWN_KEYS.1);
        }
    }
}

fn keys_in_env() -> bool {
    std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
        && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some()
}

/// The sizes to run: `--s3-sizes`, else 1 GiB (`--quick`: 32 MiB), each only when the machine has
/// the memory for the server's page cache, the store, the local copy and the arena at once.
fn sizes(args: &BenchArgs, mem_available: u64) -> (Vec<u64>, Vec<String>) {
    let wanted = match &args.s3_sizes {
        Some(v) => v.clone(),
        None if args.quick => vec![32 << 20],
        None => vec![1 << 30],
    };
    let mut notes = Vec::new();
    let sizes = wanted
        .into_iter()
        .filter(|&s| s > 0)
        .filter(|&s| {
            let need = s * 3 + s / 2 + (1 << 30);
            let fits = need <= mem_available;
            if !fits {
                notes.push(format!(
                    "S3 rows for a {} object skipped: they need about {} of available memory (server's page cache + store + local copy + arena), {} available",
                    human_bytes(s),
                    human_bytes(need),
                    human_bytes(mem_available)
                ));
            }
            fits
        })
        .collect();
    (sizes, notes)
}

/// The pool of an S3 mount of a `size`-byte object: the store's share of it (7/8) holds the
/// object whole.
fn pool_for(size: u64) -> u64 {
    size + size / 4 + (256 << 20)
}

impl Bench<'_> {
    /// The S3 rows. A mount raises the system-wide FUSE request limit to its chunk
    /// (`fs.fuse.max_pages_limit`) and leaves it there; the sweep's larger chunks would leave the
    /// machine changed, so the limit is put back afterwards, whatever happened.
    pub(crate) fn s3(&mut self) -> Result<()> {
        const LIMIT: &str = "/proc/sys/fs/fuse/max_pages_limit";
        let saved = std::fs::read_to_string(LIMIT).ok();
        let result = self.s3_rows();
        if let Some(v) = saved
            && std::fs::read_to_string(LIMIT).ok().as_deref() != Some(v.as_str())
        {
            let _ = std::fs::write(LIMIT, v.trim());
        }
        result
    }

    /// The S3 rows for every size, then the sweep; the server (if the bench started one) is
    /// stopped on the way out, whatever happened.
    fn s3_rows(&mut self) -> Result<()> {
        let args = self.args;
        let defaults = RemoteOptions::default();
        let concurrency = args.s3_concurrency.unwrap_or(defaults.concurrency).max(1);
        let part = args.s3_part.unwrap_or(defaults.part_bytes as u64);
        if !(64 << 10..=256 << 20).contains(&part) {
            bail!("--s3-part must be between 64KiB and 256MiB");
        }
        let region = args
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        if !keys_in_env() {
            // (Set by `prepare_env` for a server started here; a caller in-process sets them.)
            bail!(
                "S3 rows: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the baseline client and the in-process mount read them)"
            );
        }
        let (ep, server, server_text) = match (&args.s3_endpoint, &args.s3_bucket) {
            (Some(url), Some(bucket)) => (
                Endpoint {
                    url: url.clone(),
                    bucket: bucket.clone(),
                    region,
                },
                None,
                format!("{url} (given with --s3-endpoint)"),
            ),
            _ => {
                let program = server::find(args.s3_server.as_deref()).ok_or_else(|| {
                    anyhow!(
                        "S3 rows: s3s-fs not found ({}; install it with `{}`), or name a server with --s3-endpoint URL --s3-bucket NAME",
                        match &args.s3_server {
                            Some(p) => format!("{} is not a file", p.display()),
                            None => format!("not on PATH, not at {}", server::FALLBACK),
                        },
                        server::INSTALL
                    )
                })?;
                let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
                let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
                let root = self.work.join("s3-root");
                let s = server::Server::start(&program, &root, OWN_BUCKET, (&key, &secret))?;
                let (fs, dev) = sys::fs_of(&root);
                let text = format!(
                    "{} ({}), started by the bench, data in {} on {fs} ({dev})",
                    if s.version.is_empty() {
                        "s3s-fs".to_string()
                    } else {
                        s.version.clone()
                    },
                    s.program.display(),
                    root.display()
                );
                let ep = Endpoint {
                    url: s.endpoint.clone(),
                    bucket: OWN_BUCKET.into(),
                    region,
                };
                (ep, Some(s), text)
            }
        };
        eprintln!(
            "nitro-uring bench: S3 rows against {}, bucket {}: {concurrency} × {} GETs in flight",
            ep.url,
            ep.bucket,
            human_bytes(part)
        );
        let env = Env {
            ep,
            concurrency,
            part,
            server,
        };
        let chunk = MountConfig::new("/", "/", 1).chunk_bytes;
        let engine_max_fills = nitro_uring::remote::max_fills(
            &RemoteOptions {
                concurrency,
                part_bytes: part as usize,
                ..defaults
            },
            chunk,
        );
        let mem = sys::proc_meminfo_bytes("MemAvailable").unwrap_or(0);
        let (sizes, notes) = sizes(args, mem);
        for n in &notes {
            eprintln!("  {n}");
        }
        let mut report = S3Report {
            endpoint: env.ep.url.clone(),
            bucket: env.ep.bucket.clone(),
            region: env.ep.region.clone(),
            server: server_text,
            concurrency,
            part_bytes: part,
            engine_max_fills,
            sizes: Vec::new(),
            sweep: Vec::new(),
            notes,
        };
        if concurrency * (part as usize).div_ceil(chunk as usize) > engine_max_fills * 3 / 4 {
            report.notes.push(format!(
                "--s3-concurrency {concurrency} × --s3-part {} is more than the engine keeps in flight for a store fill ({} chunks): the mount's GETs are capped there",
                human_bytes(part),
                engine_max_fills * 3 / 4
            ));
        }
        let mut outcome = Ok(());
        for (i, &size) in sizes.iter().enumerate() {
            let dir = self.work.join(format!("s3-{}", size_tag(size)));
            let r = self.s3_size(&env, &dir, size);
            let r = match r {
                Ok(s) if i == 0 && args.s3_sweep => {
                    report.sizes.push(s);
                    self.s3_sweep(&env, &dir, size)
                        .map(|points| report.sweep = points)
                }
                Ok(s) => {
                    report.sizes.push(s);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            let _ = self.unmount();
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = r {
                outcome = Err(e);
                break;
            }
        }
        if args.s3_sweep && sizes.is_empty() {
            report
                .notes
                .push("--s3-sweep: no size to sweep on".to_string());
        }
        self.s3 = Some(report);
        // `env` (and the server with it) goes here, after every mount of it is down.
        drop(env);
        outcome
    }

    /// Uploads the object (unless there), runs the cold rows and then the warm rows of one size.
    fn s3_size(&mut self, env: &Env, dir: &Path, size: u64) -> Result<S3Size> {
        let tag = size_tag(size);
        let mnt = dir.join("mnt");
        let local_dir = dir.join("local");
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&local_dir)?;
        let folder = format!("{PREFIX}/{tag}");
        let key = KeyPath::from(format!("{folder}/weights.bin"));
        let rt = object::runtime()?;
        let store = object::client(&env.ep, env.concurrency)?;
        let what = object::describe(&env.ep, &key, size);
        let up = object::ensure(
            &rt,
            &store,
            &key,
            size,
            &self.ctx(format!("uploading {}", human_bytes(size))),
        )?;
        match up.seconds {
            Some(s) => eprintln!(
                "  uploaded {what} in {s:.1} s ({:.2} GB/s)",
                size as f64 / s / 1e9
            ),
            None => eprintln!("  {what} is there already: not uploaded"),
        }
        drop(rt);
        let mut out = S3Size {
            size_bytes: size,
            key: key.to_string(),
            upload_seconds: up.seconds,
            cold_mount_over_get: None,
            cold_arena_over_get: None,
            cold_mount_over_get_in_memory: None,
            cold_arena_over_get_in_memory: None,
            warm_mount_over_local: BTreeMap::new(),
            store_fill_seconds: 0.0,
            byte_exact_first_read: false,
            byte_exact_passthrough: None,
            passthrough_opens: 0,
            server_cpu_s_per_run: BTreeMap::new(),
            mount_cpu_s_per_run_by_thread: BTreeMap::new(),
            notes: Vec::new(),
        };
        let target = S3Target {
            folder,
            key,
            mnt: mnt.clone(),
            size,
        };
        let ratios = self.s3_cold(env, &target, &tag, &mut out)?;
        out.cold_mount_over_get = ratios.mount;
        out.cold_arena_over_get = ratios.arena;
        out.cold_mount_over_get_in_memory = ratios.mount_in_memory;
        out.cold_arena_over_get_in_memory = ratios.arena_in_memory;
        self.s3_warm(env, &target, &local_dir, up.hash, &mut out)?;
        Ok(out)
    }

    /// Mounts `s3://bucket/{folder}` at the target's mountpoint with these settings.
    fn s3_mount(
        &mut self,
        env: &Env,
        t: &S3Target,
        store: StoreMode,
        concurrency: usize,
        part: u64,
    ) -> Result<()> {
        self.unmount()?;
        let text = format!("s3://{}/{}", env.ep.bucket, t.folder);
        let loc = Location::parse(&text)
            .ok_or_else(|| anyhow!("{text} is not an s3:// address"))?
            .map_err(|e| anyhow!(e))?;
        let mut c = MountConfig::new(&text, &t.mnt, pool_for(t.size));
        c.remote = Some((
            loc,
            RemoteOptions {
                endpoint: Some(env.ep.url.clone()),
                region: Some(env.ep.region.clone()),
                concurrency,
                part_bytes: part as usize,
                ..RemoteOptions::default()
            },
        ));
        c.threads = self.plan.timing.fuse_threads;
        c.store = store;
        let m = Mounted::spawn(c).with_context(|| format!("mounting {text}"))?;
        self.mount = Some((m, CacheMode::Direct));
        Ok(())
    }

    /// One cold read of the whole object through a fresh mount; the mount's counters before and
    /// after it, and the CPU seconds each thread name used meanwhile. The mount is taken down
    /// after.
    fn s3_mount_read(
        &mut self,
        env: &Env,
        t: &S3Target,
        store: StoreMode,
        (concurrency, part): (usize, u64),
        label: String,
    ) -> Result<MountRead> {
        self.s3_mount(env, t, store, concurrency, part)?;
        let before = self.mount_stats().unwrap_or_default();
        let cpu0 = sys::thread_cpu_seconds();
        let m = workload::seq_read(&[t.file()], SEQ_BLOCK, &self.ctx(label));
        let mut threads = sys::thread_cpu_seconds();
        for (name, s) in threads.iter_mut() {
            *s -= cpu0.get(name).copied().unwrap_or(0.0);
        }
        threads.retain(|_, s| *s > 0.0);
        let after = self.mount_stats().unwrap_or_default();
        self.unmount()?;
        Ok((m?, before, after, threads))
    }

    /// The baseline once: a fresh client (and runtime) fetching the whole object.
    fn s3_get(
        &self,
        env: &Env,
        t: &S3Target,
        (concurrency, part): (usize, u64),
        keep: workload::Keep,
        label: String,
    ) -> Result<Measurement> {
        let rt = object::runtime()?;
        let store = object::client(&env.ep, concurrency)?;
        let obj = workload::S3Object {
            store,
            rt: &rt,
            key: t.key.clone(),
            size: t.size,
        };
        workload::s3_get_read(&obj, part as usize, concurrency, keep, &self.ctx(label))
    }

    /// The cold rows: the baselines, the mount with `--store none` and with `--store off`,
    /// taking turns for `--rounds` runs, every mount run on a fresh mount. Returns the mounts'
    /// medians over the baselines'.
    fn s3_cold(
        &mut self,
        env: &Env,
        t: &S3Target,
        tag: &str,
        out: &mut S3Size,
    ) -> Result<ColdRatios> {
        let workload: &'static str = leak(format!("s3-{tag}-cold"));
        let label: &'static str = leak(format!("S3 {tag} cold seq 1 MiB"));
        let conf = (env.concurrency, env.part);
        let spec = |target, state| RowSpec {
            workload,
            label,
            target,
            cache_mode: if target.starts_with("source") {
                "-"
            } else {
                "direct"
            },
            state,
            threads: 1,
            block_bytes: if target.starts_with("source") {
                env.part
            } else {
                SEQ_BLOCK as u64
            },
        };
        let specs = [
            (
                spec(
                    "source",
                    leak(format!(
                        "no cache: a plain object_store client, fresh each run, fetching the object in ranged GETs of the mount's --s3-part-size with the mount's concurrency ({} × {}), bytes copied into one buffer per GET in flight",
                        env.concurrency,
                        human_bytes(env.part)
                    )),
                ),
                Target::Get(workload::Keep::Nothing),
            ),
            (
                spec(
                    "source-ram",
                    leak(format!(
                        "no cache: as source, but every GET into a fresh buffer kept until the run ends, so the object ends up in memory as a loader's GET gives it ({} × {})",
                        env.concurrency,
                        human_bytes(env.part)
                    )),
                ),
                Target::Get(workload::Keep::Object),
            ),
            (
                spec(
                    "mount",
                    "fresh mount each run, --store none (the first open fetches the object whole into the store while the reader reads)",
                ),
                Target::Mount(StoreMode::Ephemeral),
            ),
            (
                spec(
                    "mount-arena",
                    "fresh mount each run, --store off (the arena and sequential prefetch only)",
                ),
                Target::Mount(StoreMode::Off),
            ),
        ];
        let rounds = self.plan.timing.rounds;
        let mut acc: Vec<Option<Measurement>> = specs.iter().map(|_| None).collect();
        let mut gbps: Vec<Vec<f64>> = specs.iter().map(|_| Vec::new()).collect();
        let mut stats: Vec<Option<(StatsSnapshot, StatsSnapshot)>> =
            specs.iter().map(|_| None).collect();
        for round in 0..rounds {
            for (i, (spec, store)) in specs.iter().enumerate() {
                self.check()?;
                let label = self.round_label(spec, round);
                let cpu0 = env.server_cpu();
                let m = match store {
                    Target::Get(keep) => self.s3_get(env, t, conf, *keep, label)?,
                    Target::Mount(mode) => {
                        let (m, a, b, threads) =
                            self.s3_mount_read(env, t, mode.clone(), conf, label)?;
                        stats[i] = Some((a, b));
                        let per = out
                            .mount_cpu_s_per_run_by_thread
                            .entry(spec.target.to_string())
                            .or_default();
                        for (name, s) in threads {
                            *per.entry(name).or_default() += s / rounds as f64;
                        }
                        m
                    }
                };
                if let (Some(a), Some(b)) = (cpu0, env.server_cpu()) {
                    *out.server_cpu_s_per_run
                        .entry(spec.target.to_string())
                        .or_default() += (b - a) / rounds as f64;
                }
                add_run(&mut acc[i], &mut gbps[i], m);
            }
        }
        let mut medians = Vec::new();
        for (((spec, _), m), (g, st)) in specs.iter().zip(acc).zip(gbps.iter().zip(&stats)) {
            let Some(m) = m else { continue };
            self.record(spec, m, None, g);
            if let (Some((a, b)), Some(row)) = (st, self.rows.last_mut()) {
                row.mount_stats = Some(stats_delta(a, b));
            }
            medians.push(Runs::of(g).map(|r| r.median_gbps));
        }
        let ratio = |i: usize, base: usize| {
            medians
                .get(i)
                .copied()
                .flatten()
                .zip(medians.get(base).copied().flatten())
                .map(|(m, g)| m / g)
        };
        Ok(ColdRatios {
            mount: ratio(2, 0),
            arena: ratio(3, 0),
            mount_in_memory: ratio(2, 1),
            arena_in_memory: ratio(3, 1),
        })
    }

    /// The warm rows: a fresh `--store none` mount read whole once (hashed: the byte check), the
    /// store left to hold the object, then the resident rows' read shapes through the mount
    /// (re-opens: passthrough) against a local copy of the object in the page cache.
    fn s3_warm(
        &mut self,
        env: &Env,
        t: &S3Target,
        local_dir: &Path,
        want: u64,
        out: &mut S3Size,
    ) -> Result<()> {
        let tag = size_tag(t.size);
        let local = local_dir.join("weights.bin");
        let ctx = self.ctx(format!("local copy · {}", human_bytes(t.size)));
        object::write_local(&local, t.size, &ctx)?;
        let src = vec![FileRef {
            path: local.clone(),
            size: t.size,
        }];
        let label = format!("local copy into the page cache · {}", human_bytes(t.size));
        workload::seq_read(&src, SEQ_BLOCK, &self.ctx(label))?;
        self.s3_mount(env, t, StoreMode::Ephemeral, env.concurrency, env.part)?;
        let via = vec![t.file()];
        let started = Instant::now();
        out.byte_exact_first_read = hash_file(&via[0].path)? == want;
        if !out.byte_exact_first_read {
            out.notes
                .push("the first read through the mount differs from the object".into());
        }
        if !self.wait_stored(1) {
            out.notes.push(
                "the store did not finish holding the object: the warm rows measure the daemon"
                    .into(),
            );
        }
        out.store_fill_seconds = started.elapsed().as_secs_f64();
        out.byte_exact_passthrough = Some(hash_file(&via[0].path)? == want);
        let opens_before = self.mount_stats().map_or(0, |s| s.passthrough_opens);
        let first = self.rows.len();
        self.shape_rows(
            &format!("s3-{tag}-warm"),
            &format!("S3 {tag} warm"),
            (
                &src,
                "a local copy of the object in the page cache (read once before)",
            ),
            (
                &via,
                "after a full read through a --store none mount: the store holds the object whole; every pass re-opens it (passthrough)",
            ),
        )?;
        out.passthrough_opens = self
            .mount_stats()
            .map_or(0, |s| s.passthrough_opens - opens_before);
        self.unmount()?;
        let _ = std::fs::remove_file(&local);
        for (shape, _, _) in crate::resident::SHAPES {
            let id = format!("s3-{tag}-warm-{shape}");
            let med = |target: &str| {
                self.rows[first..]
                    .iter()
                    .find(|r| r.workload == id && r.target == target)
                    .map(|r| r.median_gbps())
            };
            if let (Some(m), Some(s)) = (med("mount"), med("source"))
                && s > 0.0
            {
                out.warm_mount_over_local.insert(shape.to_string(), m / s);
            }
        }
        Ok(())
    }

    /// The sweep: per point, the baseline and a cold read through a fresh `--store none` mount,
    /// taking turns, `SWEEP_RUNS` runs each.
    fn s3_sweep(&mut self, env: &Env, dir: &Path, size: u64) -> Result<Vec<SweepPoint>> {
        let tag = size_tag(size);
        let t = S3Target {
            folder: format!("{PREFIX}/{tag}"),
            key: KeyPath::from(format!("{PREFIX}/{tag}/weights.bin")),
            mnt: dir.join("mnt"),
            size,
        };
        eprintln!(
            "  sweep on the {} object: --s3-concurrency {:?} × --s3-part-size {}",
            human_bytes(size),
            SWEEP_CONCURRENCY,
            SWEEP_PARTS
                .iter()
                .map(|c| human_bytes(*c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut points = Vec::new();
        for part in SWEEP_PARTS {
            for concurrency in SWEEP_CONCURRENCY {
                let (mut m, mut g) = (Vec::new(), Vec::new());
                for run in 0..SWEEP_RUNS {
                    self.check()?;
                    let what = format!(
                        "sweep {concurrency} × {} {}/{SWEEP_RUNS}",
                        human_bytes(part),
                        run + 1
                    );
                    let r = self.s3_get(
                        env,
                        &t,
                        (concurrency, part),
                        workload::Keep::Nothing,
                        format!("{what} · GET"),
                    )?;
                    g.push(r.bytes as f64 / r.seconds.max(1e-9) / 1e9);
                    let (r, _, _, _) = self.s3_mount_read(
                        env,
                        &t,
                        StoreMode::Ephemeral,
                        (concurrency, part),
                        format!("{what} · mount"),
                    )?;
                    m.push(r.bytes as f64 / r.seconds.max(1e-9) / 1e9);
                }
                let (mount, get) = (Runs::of(&m), Runs::of(&g));
                let ratio = mount
                    .as_ref()
                    .zip(get.as_ref())
                    .map(|(m, g)| m.median_gbps / g.median_gbps);
                eprintln!(
                    "  sweep {concurrency:>2} × {:<8} mount {:.3} GB/s, GET {:.3} GB/s, mount/GET {}",
                    human_bytes(part),
                    mount.as_ref().map_or(0.0, |r| r.median_gbps),
                    get.as_ref().map_or(0.0, |r| r.median_gbps),
                    ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}×"))
                );
                points.push(SweepPoint {
                    concurrency,
                    part_bytes: part,
                    mount,
                    get,
                    mount_over_get: ratio,
                });
            }
        }
        Ok(points)
    }
}

/// What a cold row runs: a baseline keeping its bytes so, or a mount with this store.
enum Target {
    Get(workload::Keep),
    Mount(StoreMode),
}

/// The cold mounts' medians over the baselines' (`source`: bytes go nowhere; `source-ram`: the
/// object kept in memory).
struct ColdRatios {
    mount: Option<f64>,
    arena: Option<f64>,
    mount_in_memory: Option<f64>,
    arena_in_memory: Option<f64>,
}

/// A cold read through a mount: the measurement, the mount's counters before and after, and the
/// CPU seconds per thread name.
type MountRead = (
    Measurement,
    StatsSnapshot,
    StatsSnapshot,
    BTreeMap<String, f64>,
);

/// One size's object and where it is mounted.
struct S3Target {
    /// The key prefix the mount mounts (`nitro-uring-bench/1GiB`).
    folder: String,
    key: KeyPath,
    mnt: PathBuf,
    size: u64,
}

impl S3Target {
    fn file(&self) -> FileRef {
        FileRef {
            path: self.mnt.join("weights.bin"),
            size: self.size,
        }
    }
}
