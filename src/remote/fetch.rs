//! Ranged GETs for the engine's fills: the remote twin of an io_uring read.
//!
//! The contract is the ring's: a job names a destination (bytes the fill owns until its
//! completion) and a `user_data`; exactly one `Completion` comes back for it, with the byte count
//! (short counts are fine: the engine asks again for the rest) or a negative errno, and the
//! engine's waker is woken. `CHANGED_ERRNO` says the object is no longer the version asked for.

use std::sync::Arc;

use crossbeam_channel::Sender;
use futures::StreamExt;
use nitro_ring::{Completion, Waker};
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::Semaphore;

use super::{Client, Object};

/// The errno of a GET whose `If-Match` failed or whose object is gone: the version is stale.
pub const CHANGED_ERRNO: i32 = libc::ESTALE;

/// A destination the engine lends to one job until that job's completion.
struct Dest {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the bytes behind `ptr` belong to this job alone until its completion is sent (the
// engine's fill or uncached slot is not reused or freed before it receives it), so moving the
// pointer to a runtime thread creates no shared access.
unsafe impl Send for Dest {}

pub struct Fetcher {
    client: Arc<Client>,
    limit: Arc<Semaphore>,
    done: Sender<Completion>,
    waker: Waker,
}

impl Fetcher {
    /// A fetcher whose completions are sent on `done`, each followed by a wake.
    pub fn new(client: Arc<Client>, done: Sender<Completion>, waker: Waker) -> Fetcher {
        let limit = Arc::new(Semaphore::new(client.opts.concurrency.max(1)));
        Fetcher {
            client,
            limit,
            done,
            waker,
        }
    }

    /// Starts a GET of `len` bytes of `object` at `offset` into `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be writable and used by nothing else until the completion with
    /// `user_data` has been received from `done`.
    pub unsafe fn submit(
        &self,
        object: Arc<Object>,
        offset: u64,
        ptr: *mut u8,
        len: usize,
        user_data: u64,
    ) {
        let dest = Dest { ptr, len };
        let store = self.client.store.clone();
        let limit = self.limit.clone();
        let done = self.done.clone();
        let waker = self.waker.clone();
        self.client.spawn(async move {
            let result = match limit.acquire().await {
                Ok(_permit) => get_into(&*store, &object, offset, dest).await,
                Err(_) => -libc::EIO,
            };
            let _ = done.send(Completion { user_data, result });
            waker.wake();
        });
    }
}

/// One ranged GET, streamed into `dest`; the byte count, or a negative errno.
async fn get_into(store: &dyn ObjectStore, object: &Object, offset: u64, dest: Dest) -> i32 {
    if dest.len == 0 {
        return 0;
    }
    let opts = GetOptions {
        range: Some(GetRange::Bounded(offset..offset + dest.len as u64)),
        if_match: object.etag.clone(),
        ..Default::default()
    };
    let result = match store.get_opts(&object.key, opts).await {
        Ok(r) => r,
        Err(e) => return errno_of(&object.key, &e),
    };
    // Servers that ignore If-Match still name what they sent: the bytes must be this version's.
    if !object.same_version(&result.meta) {
        return -CHANGED_ERRNO;
    }
    let mut body = result.into_stream();
    let mut written = 0usize;
    while let Some(part) = body.next().await {
        match part {
            Ok(bytes) => {
                let n = bytes.len().min(dest.len - written);
                // SAFETY: `dest` is this job's alone (see `Fetcher::submit`) and `written + n`
                // never passes its length.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dest.ptr.add(written), n);
                }
                written += n;
                if written == dest.len {
                    break;
                }
            }
            // A body cut short: what landed counts, the engine asks again for the rest.
            Err(e) if written > 0 => {
                tracing::debug!("GET {} cut at {written} bytes: {e}", object.key);
                break;
            }
            Err(e) => return errno_of(&object.key, &e),
        }
    }
    written as i32
}

fn errno_of(key: &object_store::path::Path, e: &object_store::Error) -> i32 {
    match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => {
            -CHANGED_ERRNO
        }
        _ => {
            tracing::warn!("GET {key}: {}", super::short(&e.to_string()));
            -libc::EIO
        }
    }
}
