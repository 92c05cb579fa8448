//! Ranged GETs for the engine's fills: the remote twin of an io_uring read.
//!
//! The contract is the ring's: a job names a destination (bytes the fill owns until its
//! completion) and a `user_data`; exactly one `Completion` comes back for it, with the byte count
//! (short counts are fine: the engine asks again for the rest) or a negative errno, and the
//! engine's waker is woken. `CHANGED_ERRNO` says the object is no longer the version asked for.
//!
//! Why jobs are merged into parts: the cache unit (`--chunk`, 1 MiB) is too small a GET. Each
//! request costs the client signing and parsing and the server a round of its own work, and S3
//! serves a connection best with parts of 8–16 MiB (mountpoint-s3 uses 8 MiB). A whole-object fill
//! writes chunk after chunk into one store mapping, so jobs submitted together whose objects,
//! offsets and destinations follow each other are sent as one GET of up to `--s3-part-size`. Each
//! job still completes on its own, as soon as its last byte has landed, so a reader waiting on
//! the first chunk of a part does not wait for the whole part.

use std::sync::Arc;

use crossbeam_channel::Sender;
use futures::StreamExt;
use nitro_ring::{Completion, Waker};
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::Semaphore;

use super::{Client, Object};

/// The errno of a GET whose `If-Match` failed or whose object is gone: the version is stale.
pub const CHANGED_ERRNO: i32 = libc::ESTALE;

/// One job of a part: `len` bytes of the part's destination, answered as `user_data`.
#[derive(Clone, Copy)]
struct Job {
    len: usize,
    user_data: u64,
}

/// Jobs that follow each other in the object and in memory, fetched with one ranged GET.
struct Part {
    object: Arc<Object>,
    offset: u64,
    ptr: *mut u8,
    len: usize,
    jobs: Vec<Job>,
}

// SAFETY: the bytes behind `ptr` belong to this part's jobs alone until each job's completion is
// sent (the engine's fill or uncached slot is not reused or freed before it receives it), so moving
// the pointer to a runtime thread creates no shared access.
unsafe impl Send for Part {}
// SAFETY: a part is used by the one task that fetches it; the references that task holds across
// its awaits never leave it, so no two threads reach the destination through them.
unsafe impl Sync for Part {}

impl Part {
    /// Whether a job of `len` bytes of `object` at `offset` into `ptr` continues this part
    /// without making it longer than `max_len`.
    fn continues(
        &self,
        object: &Arc<Object>,
        offset: u64,
        ptr: *mut u8,
        len: usize,
        max_len: usize,
    ) -> bool {
        Arc::ptr_eq(&self.object, object)
            && self.offset + self.len as u64 == offset
            && self.ptr.wrapping_add(self.len) == ptr
            && self.len + len <= max_len
    }
}

pub struct Fetcher {
    client: Arc<Client>,
    limit: Arc<Semaphore>,
    done: Sender<Completion>,
    waker: Waker,
    /// The part being gathered; sent by `flush` or when a job does not continue it.
    pending: Option<Part>,
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
            pending: None,
        }
    }

    /// Queues a GET of `len` bytes of `object` at `offset` into `ptr`; it goes out with the jobs
    /// it continues at the next `flush` (see the module docs).
    ///
    /// # Safety
    /// `ptr..ptr + len` must be writable and used by nothing else until the completion with
    /// `user_data` has been received from `done`.
    pub unsafe fn submit(
        &mut self,
        object: Arc<Object>,
        offset: u64,
        ptr: *mut u8,
        len: usize,
        user_data: u64,
    ) {
        let max_len = self.client.opts.part_bytes.max(1);
        let job = Job { len, user_data };
        if let Some(p) = self.pending.as_mut()
            && p.continues(&object, offset, ptr, len, max_len)
        {
            p.len += len;
            p.jobs.push(job);
            return;
        }
        self.flush();
        self.pending = Some(Part {
            object,
            offset,
            ptr,
            len,
            jobs: vec![job],
        });
    }

    /// Sends the part being gathered. The engine calls it before it waits.
    pub fn flush(&mut self) {
        let Some(part) = self.pending.take() else {
            return;
        };
        let store = self.client.store.clone();
        let limit = self.limit.clone();
        let done = self.done.clone();
        let waker = self.waker.clone();
        self.client.spawn(async move {
            let mut sink = Sink {
                jobs: &part.jobs,
                next: 0,
                job_end: part.jobs.first().map_or(0, |j| j.len),
                done: &done,
                waker: &waker,
            };
            match limit.acquire().await {
                Ok(_permit) => get_into(&*store, &part, &mut sink).await,
                Err(_) => sink.fail_rest(0, -libc::EIO),
            }
        });
    }
}

/// Answers a part's jobs in order as its bytes land.
struct Sink<'a> {
    jobs: &'a [Job],
    /// The first job not answered yet, and where in the part it ends.
    next: usize,
    job_end: usize,
    done: &'a Sender<Completion>,
    waker: &'a Waker,
}

impl Sink<'_> {
    fn send(&self, user_data: u64, result: i32) {
        let _ = self.done.send(Completion { user_data, result });
        self.waker.wake();
    }

    /// Answers every job that `written` bytes of the part complete.
    fn landed(&mut self, written: usize) {
        while self.next < self.jobs.len() && self.job_end <= written {
            let j = self.jobs[self.next];
            self.send(j.user_data, j.len as i32);
            self.next += 1;
            self.job_end += self.jobs.get(self.next).map_or(0, |j| j.len);
        }
    }

    /// Answers the jobs left once the part stops at `written` bytes: the job cut short gets what
    /// landed in it (the engine asks again for its rest), the ones after it `errno`.
    fn fail_rest(&mut self, written: usize, errno: i32) {
        let mut start = self.job_end - self.jobs.get(self.next).map_or(0, |j| j.len);
        for j in &self.jobs[self.next..] {
            let got = written.saturating_sub(start).min(j.len);
            self.send(j.user_data, if got > 0 { got as i32 } else { errno });
            start += j.len;
        }
        self.next = self.jobs.len();
    }
}

/// The part's ranged GET, streamed into its destination. A body cut short after some bytes is
/// asked again from where it stopped (a dropped connection costs one more GET, not the part);
/// with no progress, the jobs left get the error.
async fn get_into(store: &dyn ObjectStore, part: &Part, sink: &mut Sink<'_>) {
    let mut written = 0usize;
    while written < part.len {
        match get_from(store, part, written).await {
            Ok(n) if n > 0 => {
                written += n;
                sink.landed(written);
            }
            Ok(_) => return sink.fail_rest(written, 0),
            Err((n, errno)) => {
                written += n;
                sink.landed(written);
                if n == 0 {
                    return sink.fail_rest(written, errno);
                }
            }
        }
    }
}

/// One ranged GET of the part from byte `from` on: Ok(bytes) when the body ended (short of the
/// part: the server sent less), Err((bytes that landed, errno)) when it failed.
async fn get_from(
    store: &dyn ObjectStore,
    part: &Part,
    from: usize,
) -> Result<usize, (usize, i32)> {
    let object = &part.object;
    let start = part.offset + from as u64;
    let opts = GetOptions {
        range: Some(GetRange::Bounded(start..part.offset + part.len as u64)),
        if_match: object.etag.clone(),
        ..Default::default()
    };
    let result = match store.get_opts(&object.key, opts).await {
        Ok(r) => r,
        Err(e) => return Err((0, errno_of(&object.key, &e))),
    };
    // Servers that ignore If-Match still name what they sent: the bytes must be this version's.
    if !object.same_version(&result.meta) {
        return Err((0, -CHANGED_ERRNO));
    }
    let room = part.len - from;
    let mut body = result.into_stream();
    let mut got = 0usize;
    while let Some(piece) = body.next().await {
        match piece {
            Ok(bytes) => {
                let n = bytes.len().min(room - got);
                // SAFETY: the part's destination is its jobs' alone (see `Fetcher::submit`), and
                // `from + got + n` never passes the part's length.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), part.ptr.add(from + got), n);
                }
                got += n;
                if got == room {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!("GET {} cut at {} bytes: {e}", object.key, from + got);
                return Err((got, -libc::EIO));
            }
        }
    }
    Ok(got)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs of 3, 5 and 2 bytes answered by a part that lands in pieces.
    fn answers(pieces: &[usize], stop: Option<i32>) -> Vec<(u64, i32)> {
        let ring = nitro_ring::Ring::new(8).expect("io_uring");
        let waker = ring.waker();
        let (tx, rx) = crossbeam_channel::unbounded();
        let jobs = [
            Job {
                len: 3,
                user_data: 10,
            },
            Job {
                len: 5,
                user_data: 11,
            },
            Job {
                len: 2,
                user_data: 12,
            },
        ];
        let mut sink = Sink {
            jobs: &jobs,
            next: 0,
            job_end: 3,
            done: &tx,
            waker: &waker,
        };
        let mut written = 0;
        for p in pieces {
            written += p;
            sink.landed(written);
        }
        if let Some(errno) = stop {
            sink.fail_rest(written, errno);
        }
        rx.try_iter().map(|c| (c.user_data, c.result)).collect()
    }

    #[test]
    fn each_job_completes_when_its_last_byte_lands() {
        assert_eq!(answers(&[2], None), vec![]);
        assert_eq!(answers(&[2, 1], None), vec![(10, 3)]);
        assert_eq!(answers(&[4, 4], None), vec![(10, 3), (11, 5)]);
        assert_eq!(answers(&[10], None), vec![(10, 3), (11, 5), (12, 2)]);
    }

    #[test]
    fn a_part_cut_short_answers_every_job_once() {
        // Cut inside the second job: it gets what landed, the third the error.
        assert_eq!(
            answers(&[4], Some(-libc::EIO)),
            vec![(10, 3), (11, 1), (12, -libc::EIO)]
        );
        // Cut on a job boundary: the rest get the error.
        assert_eq!(
            answers(&[3], Some(-libc::EIO)),
            vec![(10, 3), (11, -libc::EIO), (12, -libc::EIO)]
        );
        // Nothing landed: every job gets the error (0 = the object ended early).
        assert_eq!(answers(&[], Some(0)), vec![(10, 0), (11, 0), (12, 0)]);
    }
}
