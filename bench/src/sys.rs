//! The operating-system pieces the benchmark needs: dropping caches, asking what is resident
//! (mincore), CPU time (getrusage), this process's memory (/proc/self/status), page-aligned buffers
//! for O_DIRECT, and a description of the machine for the JSON.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

pub const PAGE: usize = 4096;

/// Drops the whole system's page cache, dentries and inodes (`sync; echo 3 > drop_caches`).
/// Needs root; the error says why it could not.
pub fn drop_all_caches() -> std::io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

/// Whether [`drop_all_caches`] can work here, and if not, why (checked without dropping anything).
pub fn can_drop_caches() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to write /proc/sys/vm/drop_caches".into());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "cannot open /proc/sys/vm/drop_caches for writing: {e}"
        )),
    }
}

/// Drops the clean page-cache pages of one file (works on FUSE files too, and without root).
pub fn drop_file_cache(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: advisory call on a descriptor we hold; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// (resident pages, total pages) of a file in the page cache, by mapping it and asking mincore.
/// The mapping faults nothing in. Empty files count as (0, 0).
pub fn resident_pages(path: &Path) -> std::io::Result<(u64, u64)> {
    let f = File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: a fresh read-only shared mapping of a file we hold open; checked for MAP_FAILED.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr..addr+len` is our mapping; `vec` has one byte per page.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping exactly what we mapped.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
    Ok((resident, pages as u64))
}

/// Share of the files' pages that are resident in the page cache (0..=1).
pub fn resident_fraction(paths: &[impl AsRef<Path>]) -> std::io::Result<f64> {
    let (mut r, mut t) = (0u64, 0u64);
    for p in paths {
        let (a, b) = resident_pages(p.as_ref())?;
        r += a;
        t += b;
    }
    Ok(if t == 0 { 0.0 } else { r as f64 / t as f64 })
}

/// User and system CPU seconds of the whole process so far (every thread: readers, FUSE workers,
/// the ring thread, since the daemon runs in-process).
pub fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage writes into an owned, zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// The command name and user + system CPU seconds of a `/proc/.../stat` file (a process or a
/// thread).
pub fn stat_cpu_seconds(path: &Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The name is in parentheses and may hold spaces; utime and stime are the 14th and 15th
    // fields of the line, the 12th and 13th after the name.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((name, ticks / hz))
}

/// CPU seconds of this process's live threads so far, summed by thread name with a trailing
/// number dropped (`fuser-3`: the FUSE workers count as one name).
pub fn thread_cpu_seconds() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        if let Some((name, s)) = stat_cpu_seconds(&e.path().join("stat")) {
            let name = match name.rsplit_once(['-', '_']) {
                Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    stem.to_string()
                }
                _ => name,
            };
            *out.entry(name).or_insert(0.0) += s;
        }
    }
    out
}

/// CPU seconds the whole machine has been busy (all CPUs, every process), from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / tck
}

/// A `kB` field (`Name:   123 kB`) of a /proc file, in bytes.
fn proc_kb_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A `kB` field of /proc/self/status, in bytes.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    proc_kb_field("/proc/self/status", field)
}

/// A `kB` field of /proc/meminfo (e.g. `MemFree`), in bytes.
pub fn proc_meminfo_bytes(field: &str) -> Option<u64> {
    proc_kb_field("/proc/meminfo", field)
}

/// A `kB` field of /proc/self/smaps_rollup (e.g. `AnonHugePages`), in bytes.
pub fn smaps_rollup_bytes(field: &str) -> Option<u64> {
    proc_kb_field("/proc/self/smaps_rollup", field)
}

/// Sectors (512 bytes) read so far by a block device named like `/dev/vda1`, from its
/// `/sys/class/block/NAME/stat` (a partition's counts are its own). None when it has none.
pub fn device_sectors_read(device: &str) -> Option<u64> {
    let name = device.strip_prefix("/dev/")?.rsplit('/').next()?;
    let text = std::fs::read_to_string(format!("/sys/class/block/{name}/stat")).ok()?;
    text.split_whitespace().nth(2)?.parse().ok()
}

/// Resets VmHWM (peak RSS) to the current RSS (`echo 5 > /proc/self/clear_refs`). Best effort.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Free bytes for an unprivileged user on the filesystem holding `path`, and its type magic.
pub fn statfs(path: &Path) -> Option<(u64, i64)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into an owned, zeroed struct; the path is a valid C string.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64 * s.f_bsize as u64, s.f_type as i64))
}

pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A zeroed, page-aligned byte buffer (O_DIRECT needs aligned memory).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a plain owned allocation.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(PAGE).next_multiple_of(PAGE);
        let layout = std::alloc::Layout::from_size_align(len, PAGE).expect("layout");
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: we own `len` initialized (zeroed) bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// An anonymous private mapping, advised to huge pages and touched up front so reads into it take
/// no page faults while timed: the buffer of the O_DIRECT io_uring baseline, made as the mount's
/// arena is (one anonymous mapping, `MADV_HUGEPAGE`). The huge pages matter for a fair baseline:
/// a 1 MiB O_DIRECT read into 4 KiB pages is 256 segments, into a huge page one, and the disk
/// driver splits requests by segment count.
pub struct AnonMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl AnonMap {
    pub fn new(len: usize) -> std::io::Result<AnonMap> {
        let len = len.max(PAGE).next_multiple_of(PAGE);
        // SAFETY: a fresh anonymous mapping; no existing memory is touched; checked for MAP_FAILED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        let map = AnonMap { ptr, len };
        // SAFETY: advice on our own mapping; a hint only, failure is fine (as for the arena).
        unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) };
        for off in (0..len).step_by(PAGE) {
            // SAFETY: inside the mapping, which is writable and ours alone.
            unsafe { map.ptr.as_ptr().add(off).write_volatile(0) };
        }
        Ok(map)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    pub kernel_version: String,
    pub arch: String,
    pub cpu_model: String,
    pub cores: usize,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub loadavg_at_start: String,
    pub root: bool,
    pub fuse_max_pages_limit: Option<u64>,
}

fn uname() -> (String, String, String, String) {
    // SAFETY: uname writes into an owned, zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::uname(&mut u) };
    let s = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (s(&u.nodename), s(&u.release), s(&u.version), s(&u.machine))
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn machine() -> Machine {
    let (hostname, kernel, kernel_version, arch) = uname();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = |f: &str| -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with(f))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    Machine {
        hostname,
        kernel,
        kernel_version,
        arch,
        cpu_model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_bytes: mem("MemTotal:"),
        mem_available_bytes: mem("MemAvailable:"),
        loadavg_at_start: loadavg(),
        // SAFETY: geteuid has no preconditions.
        root: unsafe { libc::geteuid() } == 0,
        fuse_max_pages_limit: std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    }
}

/// The filesystem type and device of a path, from /proc/self/mountinfo (longest matching mount).
pub fn fs_of(path: &Path) -> (String, String) {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return ("unknown".into(), "unknown".into());
    };
    let mut best: Option<(usize, String, String)> = None;
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 2 {
            continue;
        }
        let mp = pre[4].replace("\\040", " ");
        if want.starts_with(&mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0) {
            best = Some((mp.len(), post[0].to_string(), post[1].to_string()));
        }
    }
    best.map(|(_, t, d)| (t, d))
        .unwrap_or_else(|| ("unknown".into(), "unknown".into()))
}

/// "major:minor" of the mount at exactly `mountpoint`, if mounted.
pub fn mount_dev(mountpoint: &Path) -> Option<String> {
    let want = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (f.len() > 4 && Path::new(&f[4].replace("\\040", " ")) == want).then(|| f[2].to_string())
    })
}

/// Whether anything is mounted at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let mp = f.get(4)?.replace("\\040", " ");
            Path::new(&mp).starts_with(&want).then_some(mp)
        })
        .collect()
}
