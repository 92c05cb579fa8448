//! What both fronts (a local directory, a bucket) tell the kernel alike: the INIT settings, and
//! the "." and ".." entries with their offsets in a directory stream.
//!
//! Why shared: a setting one front forgot has bitten before (the bucket front once lacked
//! `max_write`, so the kernel sent reads larger than a chunk and the ring thread panicked).

use std::time::Duration;

use fuser::{
    FileAttr, FileType, INodeNo, InitFlags, KernelConfig, ReplyDirectory, ReplyDirectoryPlus,
};

use crate::engine::Shared;

/// Generation of the entries that take no reference ("." and ".."), and of the bucket front's
/// inode numbers (never reused).
pub(crate) const GENERATION: fuser::Generation = fuser::Generation(1);

/// What the local front asks the kernel for (where it has it). The bench's null filesystem, the
/// FUSE ceiling, asks for the same, so the two negotiate the same session.
pub const LOCAL_INIT_FLAGS: InitFlags = InitFlags::FUSE_DO_READDIRPLUS
    .union(InitFlags::FUSE_READDIRPLUS_AUTO)
    .union(InitFlags::FUSE_CACHE_SYMLINKS)
    .union(InitFlags::FUSE_PARALLEL_DIROPS)
    .union(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);

/// Negotiates INIT: `wanted` where the kernel has it, requests no larger than the engine's buffers,
/// and passthrough when there is a store to pass through to. Returns whether passthrough is on.
pub(crate) fn init(config: &mut KernelConfig, shared: &Shared, wanted: InitFlags) -> bool {
    negotiate(config, shared.max_request_bytes, wanted);
    passthrough(config, shared)
}

/// INIT without passthrough: `wanted` where the kernel has it, and requests (reads, writes,
/// readahead) of at most `max_request_bytes`, the largest buffer the filesystem holds for one.
pub fn negotiate(config: &mut KernelConfig, max_request_bytes: usize, wanted: InitFlags) {
    let supported = config.capabilities() & wanted;
    let _ = config.add_capabilities(supported);
    // One request never needs more than the chunk: the engine's buffers (scratch, uncached reads)
    // hold `max_request_bytes`, and a hit is a single arena slice. fuser asks the kernel for
    // max_pages from the larger of max_write (16 MiB unless set) and max_readahead, and the kernel
    // sends reads that large (up to fs.fuse.max_pages_limit), so max_write bounds reads too.
    let request = (max_request_bytes as u32).max(4096);
    let _ = config.set_max_write(request);
    if let Err(max) = config.set_max_readahead(request) {
        let _ = config.set_max_readahead(max);
    }
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
}

/// Asks the kernel for passthrough (kernel >= 6.9), which needs a store to pass through to.
fn passthrough(config: &mut KernelConfig, shared: &Shared) -> bool {
    if shared.store.is_none() {
        return false;
    }
    if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
        tracing::info!(
            "kernel offers no FUSE passthrough (needs >= 6.9): stored files are served through the daemon"
        );
        return false;
    }
    // Backing files are on tmpfs (depth 0), so this mount stacks one deep.
    let ok = config.set_max_stack_depth(1).is_ok()
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
    if ok {
        tracing::info!("FUSE passthrough on: opens of stored files bypass the daemon");
    }
    ok
}

/// Adds "." (offset 1) and ".." (offset 2) to a directory stream read from `offset` on; entry
/// `i` of the listing then has offset `3 + i`. Returns the index of the first listing entry to
/// add, or None when the reply is full.
pub(crate) fn dots(ino: INodeNo, offset: u64, reply: &mut ReplyDirectory) -> Option<usize> {
    if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
        return None;
    }
    if offset <= 1 && reply.add(INodeNo::ROOT, 2, FileType::Directory, "..") {
        return None;
    }
    Some(offset.saturating_sub(2) as usize)
}

/// As `dots`, for readdirplus: both carry `attr` (".." as the root's number; the kernel takes no
/// reference for either).
pub(crate) fn dots_plus(
    ino: INodeNo,
    offset: u64,
    attr: &FileAttr,
    ttl: &Duration,
    reply: &mut ReplyDirectoryPlus,
) -> Option<usize> {
    if offset == 0 && reply.add(ino, 1, ".", ttl, attr, GENERATION) {
        return None;
    }
    if offset <= 1 {
        let mut up = *attr;
        up.ino = INodeNo::ROOT;
        if reply.add(INodeNo::ROOT, 2, "..", ttl, &up, GENERATION) {
            return None;
        }
    }
    Some(offset.saturating_sub(2) as usize)
}
