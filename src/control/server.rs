//! The control socket's accept loop and one thread per connection.
//!
//! Why a thread per connection: a warm keeps its connection for minutes (progress lines, a
//! cancel), while `stats --watch` asks once a second; a handful of clients at most. Every wait is
//! bounded (200 ms), so an unmount stops them all promptly.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::proto::{self, Reply, Request};
use super::sock::{self, Bound};
use super::{Ctx, ops, report, warm};

const TICK: Duration = Duration::from_millis(200);
/// Connections served at once; more get an error line.
const MAX_CLIENTS: usize = 16;
/// A request line longer than this is refused.
const MAX_LINE: u64 = 1 << 20;

pub(super) fn accept_loop(ctx: &Arc<Ctx>, bound: Bound) {
    let owner = rustix::process::geteuid().as_raw();
    if let Err(e) = bound.listener.set_nonblocking(true) {
        tracing::warn!("control socket: {e}");
        return;
    }
    tracing::info!("CONTROL {}", bound.path.display());
    let active = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !ctx.stopping() {
        ctx.rates.lock().tick(&ctx.shared, &ctx.telemetry);
        threads.retain(|t| !t.is_finished());
        let ready = {
            use rustix::event::{PollFd, PollFlags, Timespec, poll};
            let mut fds = [PollFd::new(&bound.listener, PollFlags::IN)];
            let timeout = Timespec {
                tv_sec: 0,
                tv_nsec: TICK.as_nanos() as i64,
            };
            poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0
        };
        if !ready {
            continue;
        }
        let Ok((stream, _)) = bound.listener.accept() else {
            continue;
        };
        if active.load(Ordering::Relaxed) >= MAX_CLIENTS {
            refuse(stream, "too many control connections; try again");
            continue;
        }
        match sock::peer_uid(&stream) {
            Ok(uid) if sock::allowed(uid, owner) => {}
            Ok(uid) => {
                refuse(
                    stream,
                    &format!("uid {uid} may not control this mount (it belongs to uid {owner})"),
                );
                continue;
            }
            Err(e) => {
                refuse(stream, &format!("cannot tell who is asking: {e}"));
                continue;
            }
        }
        let (c, a) = (ctx.clone(), active.clone());
        a.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("nitro-ctl-conn".into())
            .spawn(move || {
                serve(&c, stream);
                a.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                active.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!("control connection: {e}");
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    drop(bound); // removes the socket
}

fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream.write_all(proto::line(&Reply::Error { error: why.into() }).as_bytes());
}

/// One client connection: its reader (for requests and a cancel) and its writer.
pub(super) struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    /// Writes a reply line; false when the client is gone.
    pub(super) fn send(&mut self, reply: &Reply) -> bool {
        self.writer.write_all(proto::line(reply).as_bytes()).is_ok()
    }

    /// During a warm: whether the client asked to stop (a line, or it closed the connection).
    pub(super) fn cancelled(&mut self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let fd = self.reader.get_ref();
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) => false,
            Ok(_) => {
                // A `cancel` line, anything else, or end of file: all mean stop.
                let mut buf = [0u8; 256];
                let _ = self.reader.get_mut().read(&mut buf);
                true
            }
            Err(_) => true,
        }
    }
}

fn serve(ctx: &Ctx, stream: UnixStream) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    if stream.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let mut conn = Conn {
        reader: BufReader::new(stream),
        writer,
    };
    let mut line = String::new();
    while !ctx.stopping() {
        match (&mut conn.reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE => {
                conn.send(&Reply::Error {
                    error: "request too long".into(),
                });
                return;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue; // a partial line stays in `line`
            }
            Err(_) => return,
        }
        let reply = match proto::parse_request(line.trim()) {
            Ok(req) => answer(ctx, &mut conn, req),
            Err(error) => Some(Reply::Error { error }),
        };
        line.clear();
        if let Some(r) = reply
            && !conn.send(&r)
        {
            return;
        }
    }
}

/// Handles one request; a warm streams its own replies and returns the last one.
fn answer(ctx: &Ctx, conn: &mut Conn, req: Request) -> Option<Reply> {
    Some(match req {
        Request::Hello => Reply::Hello {
            version: proto::VERSION,
            pid: std::process::id(),
            source: ctx.source.display().to_string(),
            mountpoint: ctx.mountpoint.display().to_string(),
        },
        Request::Stats { top } => Reply::Stats(Box::new(report::gather(ctx, top.min(1000)))),
        Request::Warm { paths, check } => {
            let mode = if check {
                warm::Mode::Check
            } else {
                warm::Mode::Warm
            };
            warm::run(ctx, conn, &paths, mode)
        }
        Request::Pin { paths } => warm::run(ctx, conn, &paths, warm::Mode::Pin),
        Request::Unpin { paths } => ops::unpin(ctx, &paths),
        Request::Evict { paths } => ops::evict(ctx, &paths),
        Request::Cancel => Reply::Error {
            error: "nothing to cancel".into(),
        },
    })
}
