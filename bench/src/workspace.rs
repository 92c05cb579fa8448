//! The benchmark's temporary directory (generated data, mount points). It is an RAII guard
//! because every way out — an error, Ctrl+C, a panic unwinding — must unmount what is below it
//! and remove it: a bench that leaves a mount behind makes the next one fail.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::BenchArgs;
use crate::sys;

/// The temporary directory; removed on drop, after detaching anything still mounted below it.
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for mp in sys::mounts_under(&self.root) {
            let _ = nitro_uring::mount::umount(Path::new(&mp), true);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!(
                "nitro-uring bench: could not remove {}: {e}",
                self.root.display()
            );
        }
    }
}

pub(crate) fn pick_base_dir(args: &BenchArgs) -> PathBuf {
    if let Some(d) = &args.dir {
        return d.clone();
    }
    let tmp = std::env::temp_dir();
    if sys::statfs(&tmp).is_some_and(|(_, t)| t == sys::TMPFS_MAGIC)
        && sys::statfs(Path::new("/var/tmp")).is_some_and(|(_, t)| t != sys::TMPFS_MAGIC)
    {
        // A tmpfs source has no disk under it: "cold" would mean nothing and O_DIRECT is refused.
        return PathBuf::from("/var/tmp");
    }
    tmp
}

pub(crate) fn make_workspace(base: &Path) -> Result<Workspace> {
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let root = base.join(format!("nitro-bench-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(Workspace { root })
}
