//! The kernel settings a mount adjusts: the largest FUSE request and the mount's readahead.
//!
//! Why here and documented: `fs.fuse.max_pages_limit` is global (every FUSE mount sees the raised
//! limit; it is not restored at unmount), and `nitro-uring tune` recommends the same values.

use std::path::Path;

use super::mount_entry;
use crate::arena::PAGE_BYTES;

/// The fs.fuse.max_pages_limit a mount with this chunk raises the kernel's to (`nitro-uring tune`
/// recommends the same).
pub fn wanted_max_pages(chunk_bytes: u64) -> u64 {
    (chunk_bytes / PAGE_BYTES as u64).max(256)
}

/// Best effort: a larger per-request limit lets one FUSE read cover a whole chunk.
pub(super) fn raise_max_pages(chunk_bytes: u64) {
    let want = wanted_max_pages(chunk_bytes);
    let path = "/proc/sys/fs/fuse/max_pages_limit";
    if let Ok(cur) = std::fs::read_to_string(path)
        && cur.trim().parse::<u64>().is_ok_and(|c| c < want)
    {
        let _ = std::fs::write(path, want.to_string());
    }
}

pub(super) fn max_pages_limit() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256)
}

/// The read_ahead_kb `tune_bdi` gives a mount for this read-ahead (`nitro-uring tune` checks it).
pub fn wanted_read_ahead_kb(readahead_bytes: u64) -> u64 {
    (readahead_bytes / 1024).max(128)
}

/// The mount's bdi read_ahead_kb starts at 128 and can only be raised through sysfs after mount.
pub(super) fn tune_bdi(mountpoint: &Path, readahead_bytes: u64) {
    let Some((dev, _)) = mount_entry(mountpoint) else {
        return;
    };
    let kb = wanted_read_ahead_kb(readahead_bytes);
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!("set {path} = {kb}"),
        Err(e) => tracing::debug!("could not set {path}: {e}"),
    }
}
