//! The io_uring fill engine: positional reads into memory the caller owns, and a wake-up that lets
//! other threads interrupt the ring's one blocking wait.
//!
//! Why a crate of its own: the engine must stay ignorant of FUSE so it can be tested, benchmarked and
//! replaced (a future FUSE-over-io_uring transport) without touching the front end. It knows about
//! file descriptors, offsets, lengths and `user_data` tags, nothing else.
//!
//! Why registered buffers: the cache arena is one long-lived mapping, so registering it once lets
//! every read use `READ_FIXED`, which skips the per-I/O page pinning the kernel does for plain reads.
//! Registration can fail (RLIMIT_MEMLOCK for non-root, odd kernels); reads then fall back to `READ`.
//!
//! Why an eventfd polled *inside* the ring: the ring thread blocks in `io_uring_enter` waiting for
//! completions; a request from another thread must be able to end that wait. Arming a `POLL_ADD` on
//! an eventfd makes "a message arrived" just another completion, so there is exactly one place the
//! thread sleeps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, types};

/// `user_data` reserved for the wake-up poll; callers must not use it.
pub const WAKE_TAG: u64 = u64::MAX;

/// Largest single registered buffer the kernel accepts (1 GiB); longer regions are split.
const REGISTER_PIECE_MAX_BYTES: usize = 1 << 30;

/// One completed read: the caller's tag and the kernel's result (bytes read, or `-errno`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
}

/// Wakes the ring thread from any thread. Cheap to clone (an `Arc` around the eventfd).
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Makes the ring's pending wait return. Never blocks; an overflowing counter (impossible in
    /// practice: 2^64-1 wakes unread) would be harmless since the ring is already awake.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd we own; the fd stays open for the
        // lifetime of `self.fd`.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// A registered memory region: reads into it use `READ_FIXED` with this index.
#[derive(Clone, Copy, Debug)]
struct Region {
    base: usize,
    len: usize,
}

/// The submission/completion engine, driven by exactly one thread.
pub struct Ring {
    ring: IoUring,
    waker: Waker,
    regions: Vec<Region>,
    /// Reads submitted whose completion has not been returned yet (the wake poll is not counted).
    in_flight: usize,
    wake_armed: bool,
    /// Scratch target for draining the eventfd.
    wake_drain: Box<u64>,
}

impl Ring {
    /// A ring with room for `entries` submissions at once (rounded up to a power of two by the kernel).
    pub fn new(entries: u32) -> io::Result<Ring> {
        assert!(
            entries >= 2,
            "ring needs room for the wake poll and one read"
        );
        let ring = IoUring::builder().build(entries)?;
        // SAFETY: eventfd(2) has no memory preconditions; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Ring {
            ring,
            waker: Waker { fd: Arc::new(fd) },
            regions: Vec::new(),
            in_flight: 0,
            wake_armed: false,
            wake_drain: Box::new(0),
        })
    }

    /// A handle other threads use to interrupt [`Ring::wait`].
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Registers `[base, base+len)` so reads into it use `READ_FIXED`. Returns the number of
    /// registered pieces. On error nothing is registered and reads use plain `READ`.
    ///
    /// # Safety
    /// The memory must stay mapped, and must not be unmapped or remapped, for as long as this `Ring`
    /// lives: the kernel holds page references to it.
    pub unsafe fn register_region(&mut self, base: *mut u8, len: usize) -> io::Result<usize> {
        assert!(self.regions.is_empty(), "register_region is called once");
        let mut iovecs = Vec::new();
        let mut offset = 0usize;
        while offset < len {
            let piece = REGISTER_PIECE_MAX_BYTES.min(len - offset);
            iovecs.push(libc::iovec {
                // SAFETY: offset < len, so the pointer stays inside the caller's region.
                iov_base: unsafe { base.add(offset) }.cast(),
                iov_len: piece,
            });
            offset += piece;
        }
        // SAFETY: the iovecs describe memory the caller promised outlives the ring.
        unsafe { self.ring.submitter().register_buffers(&iovecs) }?;
        self.regions = iovecs
            .iter()
            .map(|v| Region {
                base: v.iov_base as usize,
                len: v.iov_len,
            })
            .collect();
        Ok(self.regions.len())
    }

    /// Number of reads submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Room left in the submission queue for reads (one slot kept for the wake poll).
    pub fn can_push(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.capacity() - sq.len() > 1
    }

    /// Queues a read of `len` bytes at `offset` of `fd` into `buf`. Returns false (nothing queued)
    /// when the submission queue is full; call [`Ring::wait`] to make room.
    ///
    /// # Safety
    /// `buf..buf+len` must be valid for writes and not otherwise accessed until the completion tagged
    /// `user_data` is returned by [`Ring::wait`], and `fd` must stay open until then.
    pub unsafe fn push_read(
        &mut self,
        fd: RawFd,
        offset: u64,
        buf: *mut u8,
        len: u32,
        user_data: u64,
    ) -> bool {
        assert_ne!(user_data, WAKE_TAG, "WAKE_TAG is reserved");
        let addr = buf as usize;
        let fixed = self
            .regions
            .iter()
            .position(|r| addr >= r.base && addr + len as usize <= r.base + r.len);
        let entry = match fixed {
            Some(index) => opcode::ReadFixed::new(types::Fd(fd), buf, len, index as u16)
                .offset(offset)
                .build(),
            None => opcode::Read::new(types::Fd(fd), buf, len)
                .offset(offset)
                .build(),
        }
        .user_data(user_data);
        if !self.can_push() {
            return false;
        }
        // SAFETY: the caller guarantees the buffer and fd outlive the operation (see above).
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if pushed {
            self.in_flight += 1;
        }
        pushed
    }

    /// Submits everything queued, then blocks until at least one completion or a wake-up arrives
    /// (`block = false` only submits and collects what is ready). Completed reads are appended to
    /// `out`; returns whether a wake-up was seen (the caller should then look at its message queue).
    pub fn wait(&mut self, block: bool, out: &mut Vec<Completion>) -> io::Result<bool> {
        if !self.wake_armed {
            let poll =
                opcode::PollAdd::new(types::Fd(self.waker.fd.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE_TAG);
            // SAFETY: the eventfd lives as long as `self`, which outlives the ring's operations.
            if unsafe { self.ring.submission().push(&poll) }.is_ok() {
                self.wake_armed = true;
            }
        }
        let want = usize::from(block && self.ring.completion().is_empty());
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        let mut woke = false;
        for cqe in self.ring.completion() {
            if cqe.user_data() == WAKE_TAG {
                woke = true;
                self.wake_armed = false;
            } else {
                self.in_flight -= 1;
                out.push(Completion {
                    user_data: cqe.user_data(),
                    result: cqe.result(),
                });
            }
        }
        if woke {
            // Reset the counter before the caller drains its queue, so a message sent after the
            // drain re-arms a fresh wake-up rather than being lost.
            // SAFETY: reads 8 bytes into a live heap slot we own; the eventfd is non-blocking.
            let _ = unsafe {
                libc::read(
                    self.waker.fd.as_raw_fd(),
                    (&mut *self.wake_drain as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
        Ok(woke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_land_in_registered_and_plain_buffers() {
        let mut file = tempfile();
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
        file.write_all(&data).expect("write temp file");
        let mut registered = vec![0u8; 8192];
        let mut ring = Ring::new(8).expect("io_uring available");
        // SAFETY: `registered` is declared before `ring`, so it is dropped after it, and not moved.
        let pieces = unsafe { ring.register_region(registered.as_mut_ptr(), registered.len()) }
            .expect("register");
        assert_eq!(pieces, 1);
        let mut plain = vec![0u8; 4096];
        // SAFETY: both buffers live until the completions are collected below.
        unsafe {
            assert!(ring.push_read(file.as_raw_fd(), 4096, registered.as_mut_ptr(), 8192, 1));
            assert!(ring.push_read(file.as_raw_fd(), 100, plain.as_mut_ptr(), 4096, 2));
        }
        let mut done = Vec::new();
        while done.len() < 2 {
            ring.wait(true, &mut done).expect("wait");
        }
        done.sort_by_key(|c| c.user_data);
        assert_eq!(
            done[0],
            Completion {
                user_data: 1,
                result: 8192
            }
        );
        assert_eq!(
            done[1],
            Completion {
                user_data: 2,
                result: 4096
            }
        );
        assert_eq!(&registered[..], &data[4096..4096 + 8192]);
        assert_eq!(&plain[..], &data[100..100 + 4096]);
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn waker_ends_a_blocking_wait_from_another_thread() {
        let mut ring = Ring::new(4).expect("io_uring available");
        let waker = ring.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            waker.wake();
        });
        let mut done = Vec::new();
        let woke = ring.wait(true, &mut done).expect("wait");
        assert!(woke);
        assert!(done.is_empty());
        t.join().expect("join");
        // A second wake after the drain is not lost.
        ring.waker().wake();
        assert!(ring.wait(true, &mut done).expect("wait"));
    }

    #[test]
    fn read_error_is_reported_as_negative_errno() {
        let mut ring = Ring::new(4).expect("io_uring available");
        let mut buf = vec![0u8; 16];
        // SAFETY: buf outlives the completion; fd -1 is invalid on purpose.
        unsafe { assert!(ring.push_read(-1, 0, buf.as_mut_ptr(), 16, 9)) };
        let mut done = Vec::new();
        while done.is_empty() {
            ring.wait(true, &mut done).expect("wait");
        }
        assert_eq!(done[0].result, -libc::EBADF);
    }

    fn tempfile() -> std::fs::File {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nitro-ring-test-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create temp file");
        let _ = std::fs::remove_file(&path);
        f
    }
}
