//! `nitro-uring tune --check | --apply`: the kernel settings that matter for this daemon, current
//! vs recommended with one line of why each. `--apply` writes the sysctls into a sysctl.d file
//! (kept across runs: it only ever gains or updates lines) and sets them now; for the settings
//! that are not sysctls it prints the command that changes them.
//!
//! The numbers come from the same functions the mount uses (`mount::wanted_max_pages`,
//! `mount::wanted_read_ahead_kb`), so `tune` recommends what `mount` itself would set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use nitro_uring::mount::{FSTYPE, mount_entry, wanted_max_pages, wanted_read_ahead_kb};
use nitro_uring::size::{parse_bytes, parse_bytes_or_zero, parse_size};

pub const DEFAULT_SYSCTL_FILE: &str = "/etc/sysctl.d/60-nitro-uring.conf";

/// Capability bits in /proc/self/status CapEff.
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;

/// Swappiness at or below this keeps the kernel from swapping the pool before dropping page cache.
const SWAPPINESS_MAX: u64 = 10;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["check", "apply"])))]
pub struct TuneArgs {
    /// Only report (the default)
    #[arg(long)]
    check: bool,
    /// Write the sysctls to --sysctl-file and set them now; print how to change the others
    #[arg(long)]
    apply: bool,
    /// Also check the read-ahead (bdi read_ahead_kb) of this nitro-uring mount
    #[arg(long, value_name = "MOUNTPOINT")]
    mountpoint: Option<PathBuf>,
    /// The --chunk your mounts use (sets the fs.fuse.max_pages_limit wanted)
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    chunk: u64,
    /// The --readahead your mounts use (sets the read_ahead_kb wanted)
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes_or_zero)]
    readahead: u64,
    /// The --pool your mounts use (sets the memlock limit wanted)
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pool: u64,
    /// The sysctl.d file --apply writes
    #[arg(long, default_value = DEFAULT_SYSCTL_FILE)]
    sysctl_file: PathBuf,
    /// Read /proc/sys, /sys and /proc/swaps under this directory instead of / (tests)
    #[arg(long, hide = true, default_value = "/")]
    sysroot: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    Change,
    Info,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Change => "change",
            Status::Info => "info",
        }
    }
}

enum Action {
    None,
    /// Persist `key = value` and write it to /proc/sys now.
    Sysctl {
        key: &'static str,
        value: u64,
    },
    /// Not a sysctl: how to change it by hand.
    Manual(String),
}

struct Knob {
    name: String,
    current: String,
    recommended: String,
    status: Status,
    why: String,
    action: Action,
}

struct Sys {
    root: PathBuf,
}

impl Sys {
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
    fn read(&self, abs: &str) -> Option<String> {
        std::fs::read_to_string(self.path(abs))
            .ok()
            .map(|s| s.trim().to_string())
    }
    fn read_u64(&self, abs: &str) -> Option<u64> {
        self.read(abs)?.parse().ok()
    }
    fn sysctl_path(&self, key: &str) -> PathBuf {
        self.path(&format!("/proc/sys/{}", key.replace('.', "/")))
    }
    fn sysctl(&self, key: &str) -> Option<u64> {
        std::fs::read_to_string(self.sysctl_path(key))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

pub fn run(a: TuneArgs) -> Result<()> {
    if a.chunk < 64 * 1024 || !a.chunk.is_power_of_two() || a.chunk > 64 << 20 {
        bail!(
            "--chunk must be a power of two between 64KiB and 64MiB (got {} bytes)",
            a.chunk
        );
    }
    let sys = Sys {
        root: a.sysroot.clone(),
    };
    let mut knobs = vec![max_pages(&sys, a.chunk)];
    if let Some(mp) = &a.mountpoint {
        knobs.push(read_ahead(&sys, mp, a.readahead.max(a.chunk))?);
    }
    knobs.push(passthrough(&sys));
    knobs.push(io_uring(&sys));
    knobs.push(thp_anon(&sys));
    knobs.push(thp_shmem(&sys));
    knobs.push(memlock(a.pool));
    knobs.push(swappiness(&sys));
    print!("{}", table(&knobs));
    let changes = knobs.iter().filter(|k| k.status == Status::Change).count();
    if !a.apply {
        if changes == 0 {
            println!("All settings are as recommended.");
        } else {
            println!(
                "{changes} setting{} differ{} from the recommendation; `nitro-uring tune --apply` \
                 sets the sysctls and prints how to change the rest.",
                if changes == 1 { "" } else { "s" },
                if changes == 1 { "s" } else { "" }
            );
        }
        return Ok(());
    }
    apply(&sys, &knobs, &a.sysctl_file)
}

/// Two lines a setting: status, name, current and recommended value; then why it matters.
fn table(knobs: &[Knob]) -> String {
    let w_name = knobs.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let w_cur = knobs.iter().map(|k| k.current.len()).max().unwrap_or(0);
    let mut s = String::new();
    for k in knobs {
        let _ = writeln!(
            s,
            "{:<6}  {:<w_name$}  {:<w_cur$}  recommended: {}",
            k.status.word(),
            k.name,
            k.current,
            k.recommended,
        );
        let _ = writeln!(s, "{:<6}  {}", "", k.why);
    }
    s
}

fn apply(sys: &Sys, knobs: &[Knob], file: &Path) -> Result<()> {
    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {}", file.display(), super::plain(&e)),
    };
    // Lines an earlier --apply wrote stay (a setting that is ok now because of them must stay
    // persisted); this run's targets replace their values.
    if let Some(text) = &existing {
        for line in text.lines() {
            if let Some((k, v)) = parse_sysctl_line(line) {
                wanted.insert(k, v);
            }
        }
    }
    for k in knobs {
        if let (Status::Change, Action::Sysctl { key, value }) = (k.status, &k.action) {
            wanted.insert((*key).to_string(), *value);
        }
    }
    if wanted.is_empty() {
        println!("No sysctl to change; {} not written.", file.display());
    } else {
        let text = render_sysctl_file(&wanted);
        if existing.as_deref() == Some(text.as_str()) {
            println!("{} is up to date.", file.display());
        } else {
            write_atomic(file, &text)?;
            println!(
                "Wrote {} ({} setting{}; applied at boot by systemd-sysctl / sysctl --system).",
                file.display(),
                wanted.len(),
                if wanted.len() == 1 { "" } else { "s" }
            );
        }
    }
    let mut failed = 0;
    for (key, value) in &wanted {
        let path = sys.sysctl_path(key);
        let before = sys.sysctl(key);
        if before == Some(*value) {
            println!("{key} is already {value}.");
            continue;
        }
        let Some(before) = before else {
            println!(
                "{key}: not present in this kernel ({}); left to boot.",
                path.display()
            );
            continue;
        };
        match std::fs::write(&path, value.to_string()) {
            Ok(()) if sys.sysctl(key) == Some(*value) => {
                println!("Set {key}: {before} -> {value}.");
            }
            Ok(()) => {
                failed += 1;
                println!(
                    "Could not set {key}: wrote {value}, it reads {:?}.",
                    sys.sysctl(key)
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "Could not set {key} ({}): {}.",
                    path.display(),
                    super::plain(&e)
                );
            }
        }
    }
    for k in knobs {
        if let (Status::Change, Action::Manual(how)) = (k.status, &k.action) {
            println!("Not changed (not a sysctl): {}: {how}", k.name);
        }
    }
    if failed > 0 {
        bail!(
            "{failed} sysctl{} could not be set now (see above)",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `key = value` or `-key = value` (a leading `-` tells sysctl to ignore a missing key).
fn parse_sysctl_line(line: &str) -> Option<(String, u64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
        return None;
    }
    let (k, v) = line.split_once('=')?;
    let k = k.trim().trim_start_matches('-').to_string();
    Some((k, v.trim().parse().ok()?))
}

fn render_sysctl_file(wanted: &BTreeMap<String, u64>) -> String {
    let mut s = String::from(
        "# Written by `nitro-uring tune --apply`; `nitro-uring tune --check` says why each line is here.\n",
    );
    for (k, v) in wanted {
        // fs.fuse.* exists only once the fuse module is loaded, which may be after systemd-sysctl
        // ran at boot; `-` makes a missing key not an error (`nitro-uring mount` raises
        // max_pages_limit itself anyway).
        let dash = if k.starts_with("fs.fuse.") { "-" } else { "" };
        let _ = writeln!(s, "{dash}{k} = {v}");
    }
    s
}

fn write_atomic(file: &Path, text: &str) -> Result<()> {
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("--sysctl-file {} is not a file path", file.display()))?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text)
        .map_err(|e| anyhow!("cannot write {}: {}", file.display(), super::plain(&e)))?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {}", file.display(), super::plain(&e))
    })
}

fn max_pages(sys: &Sys, chunk: u64) -> Knob {
    let key = "fs.fuse.max_pages_limit";
    let want = wanted_max_pages(chunk);
    let why = format!(
        "pages one FUSE read may carry; a {} KiB chunk needs {want} to be served in one request (mount raises it at start too)",
        chunk >> 10
    );
    match sys.sysctl(key) {
        Some(cur) => Knob {
            name: key.into(),
            current: cur.to_string(),
            recommended: format!(">= {want}"),
            status: if cur >= want {
                Status::Ok
            } else {
                Status::Change
            },
            why,
            action: Action::Sysctl { key, value: want },
        },
        None => Knob {
            name: key.into(),
            current: "absent".into(),
            recommended: format!(">= {want}"),
            status: Status::Info,
            why:
                "kernel without it (< 6.13) or fuse not loaded: requests stay at 256 pages (1 MiB)"
                    .into(),
            action: Action::None,
        },
    }
}

fn read_ahead(sys: &Sys, mp: &Path, readahead: u64) -> Result<Knob> {
    let (dev, fstype) = mount_entry(mp)
        .ok_or_else(|| anyhow!("--mountpoint {} is not a mount point", mp.display()))?;
    if fstype != FSTYPE {
        bail!(
            "--mountpoint {} is not a nitro-uring mount ({fstype})",
            mp.display()
        );
    }
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let want = wanted_read_ahead_kb(readahead);
    let cur = sys.read_u64(&path);
    Ok(Knob {
        name: format!("read_ahead_kb of {}", mp.display()),
        current: cur.map_or("unreadable".into(), |c| c.to_string()),
        recommended: format!(">= {want}"),
        status: match cur {
            Some(c) if c >= want => Status::Ok,
            Some(_) => Status::Change,
            None => Status::Info,
        },
        why: "how far the kernel reads ahead of a sequential reader; mount sets it from --readahead at start".into(),
        action: Action::Manual(format!(
            "echo {want} > {path} (lasts until unmount; `nitro-uring mount --readahead` sets it at every start)"
        )),
    })
}

/// (major, minor) of the running kernel.
fn kernel_version(sys: &Sys) -> Option<(u32, u32, String)> {
    let release = sys.read("/proc/sys/kernel/osrelease")?;
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor, release))
}

/// Whether this process has capability `bit` in its effective set.
fn has_cap(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

fn passthrough(sys: &Sys) -> Knob {
    let version = kernel_version(sys);
    let kernel_ok = version
        .as_ref()
        .is_some_and(|(ma, mi, _)| (*ma, *mi) >= (6, 9));
    let cap = has_cap(CAP_SYS_ADMIN);
    let config = version.as_ref().and_then(|(_, _, r)| {
        let text = std::fs::read_to_string(format!("/boot/config-{r}")).ok()?;
        Some(text.lines().any(|l| l == "CONFIG_FUSE_PASSTHROUGH=y"))
    });
    let kernel = version
        .as_ref()
        .map_or("kernel ?".to_string(), |(ma, mi, _)| {
            format!("kernel {ma}.{mi}")
        });
    let available = kernel_ok && cap && config != Some(false);
    let mut current = format!(
        "{} ({kernel}, {}CAP_SYS_ADMIN",
        if available {
            "available"
        } else {
            "unavailable"
        },
        if cap { "" } else { "no " }
    );
    match config {
        Some(true) => current.push_str(", CONFIG_FUSE_PASSTHROUGH=y)"),
        Some(false) => current.push_str(", no CONFIG_FUSE_PASSTHROUGH)"),
        None => current.push(')'),
    }
    Knob {
        name: "FUSE passthrough".into(),
        current,
        recommended: "kernel >= 6.9 + CAP_SYS_ADMIN".into(),
        status: if available { Status::Ok } else { Status::Info },
        why: "opens of files held whole in the store are passed through: reads and mmap go kernel -> tmpfs without the daemon, and a mapping is the store's own pages (one copy); without it every read pays a FUSE round trip".into(),
        action: Action::None,
    }
}

fn io_uring(sys: &Sys) -> Knob {
    let key = "kernel.io_uring_disabled";
    let disabled = sys.sysctl(key);
    let probe = nitro_ring::Ring::new(4).map(drop);
    let mut current = match disabled {
        Some(d) => format!("io_uring_disabled={d}"),
        None => "io_uring_disabled absent".into(),
    };
    match &probe {
        Ok(()) => current.push_str(", io_uring_setup ok"),
        Err(e) => {
            let _ = write!(current, ", io_uring_setup: {e}");
        }
    }
    let why = "the fill engine reads the source through io_uring; without it mount fails";
    let (status, action) = match (&probe, disabled) {
        (Ok(()), _) => (Status::Ok, Action::None),
        (Err(_), Some(d)) if d != 0 => (Status::Change, Action::Sysctl { key, value: 0 }),
        (Err(_), _) => (
            Status::Change,
            Action::Manual(
                "io_uring_setup is refused although io_uring_disabled is 0: a seccomp filter \
                 (container runtime, systemd SystemCallFilter=) blocks it; allow io_uring_setup, \
                 io_uring_enter and io_uring_register"
                    .into(),
            ),
        ),
    };
    Knob {
        name: "io_uring".into(),
        current,
        recommended: "io_uring_disabled=0, setup ok".into(),
        status,
        why: why.into(),
        action,
    }
}

/// The bracketed word of a THP mode file: "always [madvise] never" -> "madvise".
fn bracketed(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

fn thp_anon(sys: &Sys) -> Knob {
    let path = "/sys/kernel/mm/transparent_hugepage/enabled";
    let mode = sys.read(path);
    let cur = mode.as_deref().and_then(bracketed).map(str::to_string);
    let status = match cur.as_deref() {
        Some("always" | "madvise") => Status::Ok,
        Some(_) => Status::Change,
        None => Status::Info,
    };
    Knob {
        name: "transparent_hugepage/enabled".into(),
        current: cur.unwrap_or_else(|| "absent".into()),
        recommended: "madvise or always".into(),
        status,
        why: "the pool is one anonymous mapping madvised MADV_HUGEPAGE: 2 MiB pages cut TLB misses when serving hits".into(),
        action: Action::Manual(format!(
            "echo madvise > {path} (persist: kernel parameter transparent_hugepage=madvise)"
        )),
    }
}

fn thp_shmem(sys: &Sys) -> Knob {
    let path = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
    let mode = sys.read(path);
    let cur = mode.as_deref().and_then(bracketed).map(str::to_string);
    let status = match cur.as_deref() {
        Some("always" | "within_size" | "advise" | "force") => Status::Ok,
        _ => Status::Info,
    };
    Knob {
        name: "transparent_hugepage/shmem_enabled".into(),
        current: cur.unwrap_or_else(|| "absent".into()),
        recommended: "advise or within_size".into(),
        status,
        why: "huge pages for shmem/memfd; the default store is a tmpfs the daemon mounts with huge=within_size (unaffected), but `--store none` files and a store on /dev/shm use this setting".into(),
        action: Action::Manual(format!(
            "echo advise > {path} (persist: kernel parameter transparent_hugepage_shmem=advise, kernel >= 6.14)"
        )),
    }
}

fn fmt_limit(v: Option<u64>) -> String {
    match v {
        None => "unlimited".into(),
        Some(b) if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        Some(b) if b >= 1 << 20 => format!("{} MiB", b >> 20),
        Some(b) => format!("{} KiB", b >> 10),
    }
}

fn memlock(pool: u64) -> Knob {
    use rustix::process::{Resource, getrlimit};
    let lim = getrlimit(Resource::Memlock);
    let cap = has_cap(CAP_IPC_LOCK);
    let current = format!(
        "{} (hard {}){}",
        fmt_limit(lim.current),
        fmt_limit(lim.maximum),
        if cap { ", CAP_IPC_LOCK" } else { "" }
    );
    let enough = cap || lim.current.is_none_or(|c| c >= pool);
    Knob {
        name: "RLIMIT_MEMLOCK".into(),
        current,
        recommended: format!(">= pool ({}) or CAP_IPC_LOCK", fmt_limit(Some(pool))),
        status: if enough { Status::Ok } else { Status::Change },
        why: "the pool is registered with io_uring (fixed-buffer reads) and --lock mlocks it; both count against this limit without CAP_IPC_LOCK".into(),
        action: Action::Manual(
            "LimitMEMLOCK=infinity in the systemd unit, `USER - memlock unlimited` in \
             /etc/security/limits.d/nitro-uring.conf, or run as root"
                .into(),
        ),
    }
}

fn swappiness(sys: &Sys) -> Knob {
    let key = "vm.swappiness";
    let swap_active = sys
        .read("/proc/swaps")
        .is_some_and(|t| t.lines().skip(1).any(|l| !l.trim().is_empty()));
    let cur = sys.sysctl(key);
    let status = match cur {
        Some(c) if c > SWAPPINESS_MAX && swap_active => Status::Change,
        Some(_) => Status::Ok,
        None => Status::Info,
    };
    Knob {
        name: key.into(),
        current: match cur {
            Some(c) if swap_active => c.to_string(),
            Some(c) => format!("{c} (no swap active)"),
            None => "absent".into(),
        },
        recommended: format!("<= {SWAPPINESS_MAX}"),
        status,
        why: "the pool is anonymous memory: swapped out, cache hits become disk reads (or mount with --lock)".into(),
        action: Action::Sysctl {
            key,
            value: SWAPPINESS_MAX,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracketed_picks_the_active_mode() {
        assert_eq!(bracketed("always [madvise] never"), Some("madvise"));
        assert_eq!(
            bracketed("always within_size advise [never] deny force"),
            Some("never")
        );
        assert_eq!(bracketed("no brackets"), None);
    }

    #[test]
    fn sysctl_lines_round_trip() {
        let mut m = BTreeMap::new();
        m.insert("fs.fuse.max_pages_limit".to_string(), 1024);
        m.insert("vm.swappiness".to_string(), 10);
        let text = render_sysctl_file(&m);
        assert!(text.contains("-fs.fuse.max_pages_limit = 1024\n"));
        assert!(text.contains("\nvm.swappiness = 10\n"));
        let back: BTreeMap<String, u64> = text.lines().filter_map(parse_sysctl_line).collect();
        assert_eq!(back, m);
        assert_eq!(parse_sysctl_line("# vm.swappiness = 1"), None);
        assert_eq!(parse_sysctl_line("vm.swappiness = x"), None);
    }
}
