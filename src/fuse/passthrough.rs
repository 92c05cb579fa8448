//! Which opens are answered with FUSE passthrough, per kernel inode.
//!
//! Why per inode, and why so careful: the kernel gives each FUSE inode one I/O mode at a time. With
//! a passthrough handle open, every new open of that inode must be passthrough to the *same*
//! backing file (anything else fails the user's open with EIO); and a passthrough open fails while
//! a handle that may use the page cache (keep mode, or a direct handle that is mmapped) is open. So
//! a node routes its opens by what is open on it now: passthrough handles → only passthrough, to
//! the one backing file registered for them; any other handle → no passthrough until they close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::BackingId;

use parking_lot::Mutex;

use super::versions::Versions;
use crate::engine::Source;

/// How an open was answered, to be undone at release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Passthrough to the version's store file: reads and mmap never reach the daemon.
    Passthrough,
    /// Served by the daemon (direct or keep mode).
    Daemon,
}

/// The backing file registered for a node's passthrough handles.
pub struct Backing {
    file_id: u64,
    id: Arc<BackingId>,
    handles: u32,
}

/// What `choose` decided.
pub enum Choice {
    Passthrough(Arc<BackingId>),
    Daemon,
    /// Passthrough handles of another version of this inode are open: the kernel allows no
    /// other open of it until they close.
    Busy,
}

/// Routes an open of `src` through the node whose `versions` these are. `enabled` is cleared (and logged) the first time the
/// kernel refuses a backing file, so a daemon without the privilege stops trying.
pub fn choose(
    versions: &Mutex<Versions>,
    src: &Source,
    enabled: &AtomicBool,
    open_backing: impl FnOnce(&crate::store::Entry) -> std::io::Result<BackingId>,
) -> Choice {
    let mut v = versions.lock();
    if let Some(b) = v.backing.as_mut() {
        if b.file_id != src.file_id {
            return Choice::Busy;
        }
        b.handles += 1;
        return Choice::Passthrough(b.id.clone());
    }
    let entry = src.store.get().filter(|e| e.is_complete());
    let ready = enabled.load(Ordering::Relaxed) && v.daemon_handles == 0;
    if let (Some(e), true) = (entry, ready) {
        match open_backing(e) {
            Ok(id) => {
                let id = Arc::new(id);
                v.backing = Some(Backing {
                    file_id: src.file_id,
                    id: id.clone(),
                    handles: 1,
                });
                return Choice::Passthrough(id);
            }
            Err(err) => {
                if enabled.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "passthrough refused by the kernel ({err}); serving every read through the daemon"
                    );
                }
            }
        }
    }
    v.daemon_handles += 1;
    Choice::Daemon
}

/// Undoes one open's routing. Returns true when it closed the node's last daemon-served handle.
pub fn release(versions: &Mutex<Versions>, route: Route) -> bool {
    let mut v = versions.lock();
    match route {
        Route::Passthrough => {
            if let Some(b) = v.backing.as_mut() {
                b.handles -= 1;
                if b.handles == 0 {
                    // Dropping the id closes the kernel's registration (open files keep theirs).
                    v.backing = None;
                }
            }
            false
        }
        Route::Daemon => {
            v.daemon_handles = v.daemon_handles.saturating_sub(1);
            v.daemon_handles == 0
        }
    }
}

/// Undoes what one open set up, for either front (local or remote): the keep-mode count, the
/// routing; and when that closed the inode's last daemon-served handle of a version the store
/// holds whole (direct mode), drops the inode's page cache: an mmap through such a handle filled it
/// with a second copy of bytes the store holds, and the next opens are passthrough.
#[allow(clippy::too_many_arguments)]
pub fn release_open(
    versions: &Mutex<Versions>,
    src: &Source,
    route: Route,
    cached: bool,
    mode: super::CacheMode,
    notifier: Option<&fuser::Notifier>,
    ino: fuser::INodeNo,
) {
    if cached {
        super::versions::release_cached(versions, src.file_id);
    }
    let last = release(versions, route);
    let stored = src.store.get().is_some_and(|e| e.is_complete());
    if last
        && stored
        && mode == super::CacheMode::Direct
        && let Some(n) = notifier
    {
        let _ = n.inval_inode(ino, 0, 0);
    }
}
