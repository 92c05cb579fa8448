//! A real S3-protocol server for the tests: moto's server (`python3 -m moto.server`, installed by
//! `.ci/run` with `pip install 'moto[server]'`) as a child process on 127.0.0.1, and a client for
//! the test's own side of the bucket (uploads, listings, overwrites) built on the `object_store`
//! crate, i.e. the same S3 code a real user's tools would speak to a real service.
//!
//! Why a server process and not a mock: the daemon must be tested through its real HTTP client
//! (SigV4 signing, ranged GETs, ETags, multipart ETags, retries and timeouts against a port that
//! goes away), and moto implements the S3 REST protocol including authentication.
//!
//! - [`S3Server::start`] picks a free port, starts moto there, waits until it answers, and kills
//!   it on drop (also when the test panics). [`S3Server::stop`] kills it, [`S3Server::restart`]
//!   starts a fresh one on the SAME port. moto keeps objects in memory, so a restarted server is
//!   empty: the test uploads the same bytes again (a single-part upload, or a multipart upload with
//!   the same part size, of the same bytes gives the same ETag, so the version is unchanged).
//! - [`S3Server::requests`] parses moto's request log (method, target, status), so a test can tell
//!   what a daemon asked the server for.
//! - [`S3Server::enforce_auth`] creates an IAM user with an access key allowed `s3:*` and turns
//!   moto's authentication on: from then on requests signed with any other key, or with a wrong
//!   secret, are refused.
//! - [`S3Client`] uploads (single-part and multipart, of `pattern()` bytes generated in pieces so
//!   a 1 GiB object is never held whole), lists, heads, reads ranges and deletes.
//!
//! If moto is not installed the tests fail (never skip) and say how to install it.
//!
//! Expects the including crate to have `mod common;` (for `fill_pattern`).

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};

/// The keys the test's own client uses while moto does not check authentication (moto accepts
/// any key then).
pub const TEST_KEY_ID: &str = "testing";
pub const TEST_SECRET: &str = "testing";
pub const REGION: &str = "us-east-1";

/// How long a (re)started server may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The interpreter that runs moto: `NITRO_TEST_PYTHON`, or `python3` from PATH.
pub fn python() -> String {
    std::env::var("NITRO_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

const INSTALL_HINT: &str = "the S3 tests need moto's S3 server: run `.ci/run` (as root), or \
                            `python3 -m pip install 'moto[server]>=5,<6'`";

/// moto's version; panics (never skips) with how to install it if it is missing.
pub fn moto_version() -> String {
    let py = python();
    let out = Command::new(&py)
        .args([
            "-c",
            "import moto, moto.server, flask, werkzeug, boto3; print(moto.__version__)",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}; {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "{py} cannot import moto's server ({}): {INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A port on 127.0.0.1 nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Runs `moto.server.main` (the same as `python3 -m moto.server ARGS`) after two changes that keep
/// the protocol as it is:
///
/// 1. Ranged reads cost their range. moto answers every GET by reading the whole object from its
///    buffer and slicing the range out of that copy, so a 1 MiB range of a 1 GiB object costs a
///    1 GiB read (about 0.6 s here: a daemon reading the object in chunks would take minutes per
///    pass). For a plain object GET with one `bytes=A-B` range, the body handed to moto's own
///    range handling is a view whose slice reads only those bytes, under the key's lock.
/// 2. With authentication on, signatures are checked against the request target as sent (its
///    query in SigV4's canonical form). moto checks them against the URL werkzeug rebuilt, in
///    which percent-escapes are decoded, and takes the query as it is, so any correctly signed
///    LIST with a prefix or a delimiter (`prefix=models%2F`, or `prefix=a+dir` from clients that
///    send a space as `+`) is refused with SignatureDoesNotMatch.
///
/// Everything else (authentication itself, `If-Match`, 206/416, headers) is moto's code. If moto's
/// internals no longer look as expected the server exits with a message rather than run unpatched
/// or half-patched.
pub const MOTO_LAUNCHER: &str = r#"
import os, re, sys, threading

class LineWriter:
    # Each line a thread writes reaches the log in one write(2) (the log is opened O_APPEND), so
    # lines of concurrent requests never interleave: print() writes its text and its newline
    # separately, and werkzeug's access log goes through colorama, which writes a styled line
    # (any status but 200, e.g. 206) in pieces around the escapes it strips. Interleaved, a
    # `nitro-get` line ran into the next one and S3Server::object_reads lost both ranges.
    closed = False
    encoding = "utf-8"
    errors = "replace"
    def __init__(self, fd):
        self.fd = fd
        self.pending = threading.local()
    def write(self, s):
        text = getattr(self.pending, "text", "") + s
        done, _, rest = text.rpartition("\n")
        self.pending.text = rest
        if done or text.endswith("\n"):
            os.write(self.fd, (done + "\n").encode("utf-8", "replace"))
        return len(s)
    def flush(self):
        pass
    def isatty(self):
        return False
    def fileno(self):
        return self.fd
    def writable(self):
        return True

# before anything (moto, werkzeug, logging) takes a reference to the streams
sys.stdout = LineWriter(1)
sys.stderr = LineWriter(2)
from urllib.parse import urlparse, parse_qs, parse_qsl, quote
try:
    import moto
    import moto.s3.models as models
    import moto.s3.responses as responses
    import moto.core.authorization as authorization
    from moto.server import main
    value_prop = models.FakeKey.value
    assert isinstance(value_prop, property) and value_prop.fget and value_prop.fset
    assert callable(responses.S3Response.key_response)
    assert callable(responses.S3Response._handle_range_header)
    assert isinstance(models.FakeKey.size, property)
    assert callable(responses.S3Response.setup_class)
    assert callable(authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action)
    assert "self.uri" in __import__("inspect").getsource(
        authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action)
except Exception as e:
    sys.exit("nitro test launcher: moto's S3 internals changed (%r); update MOTO_LAUNCHER in "
             "tests/support/s3_server.rs" % (e,))

_req = threading.local()

class RangeView:
    # len() is the object's size; a slice reads only those bytes
    def __init__(self, key):
        self.key = key
    def __len__(self):
        return self.key.size
    def __bool__(self):
        return self.key.size > 0
    def __getitem__(self, s):
        start, stop, step = s.indices(self.key.size)
        assert step == 1
        with self.key.lock:
            self.key._value_buffer.seek(start)
            return self.key._value_buffer.read(max(0, stop - start))

def value(self):
    if getattr(_req, "ranged", False):
        _req.ranged = False
        return RangeView(self)
    return value_prop.fget(self)

models.FakeKey.value = property(value, value_prop.fset)

orig_key_response = responses.S3Response.key_response

def key_response(self, request, *args, **kwargs):
    full_url = args[0] if args else kwargs.get("full_url", "")
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range") or "")
    if request.method == "GET":
        # which bytes a GET asked for (the access log has no Range): S3Server::object_reads
        print("nitro-get %s %s" % (request.environ.get("RAW_URI", "?"),
                                   request.headers.get("range") or "-"),
              file=sys.stderr, flush=True)
    query = parse_qs(urlparse(full_url).query, keep_blank_values=True)
    _req.ranged = bool(request.method == "GET" and m and int(m.group(1)) <= int(m.group(2))
                       and set(query) <= {"x-id"})
    try:
        return orig_key_response(self, request, *args, **kwargs)
    finally:
        _req.ranged = False

responses.S3Response.key_response = key_response

# With authentication on, moto rebuilds the request to check its signature from the URL werkzeug
# reconstructed, in which percent-escapes are decoded (`prefix=models%2F` becomes
# `prefix=models/`), so every correctly signed request with an escaped character in its path or
# query (any LIST with a prefix or a delimiter) fails with SignatureDoesNotMatch. Check it against
# the request target as it came over the wire instead.
orig_setup_class = responses.S3Response.setup_class

def setup_class(self, request, *args, **kwargs):
    r = orig_setup_class(self, request, *args, **kwargs)
    env = getattr(request, "environ", None)
    self._nitro_raw_uri = env.get("RAW_URI") if isinstance(env, dict) else None
    return r

orig_auth = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action

def authenticate(self, *args, **kwargs):
    raw = getattr(self, "_nitro_raw_uri", None)
    if not raw or not raw.startswith("/"):
        return orig_auth(self, *args, **kwargs)
    # SigV4's canonical query: every name and value decoded ('+' is a space) and escaped again
    path, _, query = raw.partition("?")
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                   for k, v in parse_qsl(query, keep_blank_values=True))
    saved = self.uri
    self.uri = "http://raw" + path + ("?" + "&".join(k + "=" + v for k, v in pairs) if pairs else "")
    try:
        return orig_auth(self, *args, **kwargs)
    finally:
        self.uri = saved

responses.S3Response.setup_class = setup_class
authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate
print("nitro test launcher: moto %s, ranged GETs read only their range, signatures checked "
      "against the raw request target" % moto.__version__,
      file=sys.stderr, flush=True)
main()
"#;

/// What the launcher writes to moto's log once the patch is in place.
pub const LAUNCHER_BANNER: &str = "nitro test launcher: moto ";

/// One request in moto's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent (percent-encoded).
    pub target: String,
    pub status: u16,
}

/// One GET of an object, from the launcher's log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRead {
    /// Path and query as sent (percent-encoded).
    pub target: String,
    /// The `bytes=A-B` range (inclusive, as in the header); None for a GET of the whole object
    /// or a range of another form.
    pub range: Option<(u64, u64)>,
}

/// A moto server process on 127.0.0.1:`port`.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    env: Vec<(String, String)>,
    /// Holds the log of every server started on this port (appended across restarts).
    dir: tempfile::TempDir,
    log: PathBuf,
    pub version: String,
}

impl S3Server {
    /// Starts moto on a free port and waits until it answers.
    pub fn start() -> S3Server {
        S3Server::start_env(&[])
    }

    /// Like `start`, with extra environment variables for moto (e.g. `S3_UPLOAD_PART_MIN_SIZE`).
    pub fn start_env(env: &[(&str, &str)]) -> S3Server {
        let version = moto_version();
        let dir = tempfile::Builder::new()
            .prefix("nitro-moto-")
            .tempdir()
            .expect("tempdir for moto");
        let log = dir.path().join("moto.log");
        let mut s = S3Server {
            child: None,
            port: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
            log,
            version,
        };
        // Another process may take the free port between our check and moto's bind: try again.
        let mut last = String::new();
        for _ in 0..5 {
            s.port = free_port();
            match s.spawn_and_wait() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("could not start moto: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let py = python();
        let mut cmd = Command::new(&py);
        cmd.args(["-c", MOTO_LAUNCHER, "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .env("PYTHONUNBUFFERED", "1")
            // spooled key buffers go to files here, gone with the directory
            .env("TMPDIR", self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // its own process group, so stop() reaches anything it starts
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {py} -m moto.server: {e}; {INSTALL_HINT}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "moto on port {} exited with {st} before answering; log:\n{}",
                    self.port,
                    self.log_tail(30)
                ));
            }
            // any HTTP answer will do: moto is up
            if self.http("GET", "/moto-api/data.json", b"").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "moto on port {} did not answer within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail(30)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            // SIGCONT too, in case a test paused it
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
                libc::kill(-pgid, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (SIGKILL: connections drop, nothing is flushed) and waits until its port
    /// refuses connections.
    pub fn stop(&mut self) {
        assert!(self.child.is_some(), "stop: moto is not running");
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still accepts connections after moto was killed",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new server on the same port (empty: moto keeps nothing across restarts).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // the old socket may linger a moment; moto's server sets SO_REUSEADDR
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "could not restart moto on port {}: {e}",
                    self.port
                ),
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing answers.
    pub fn pause(&self) {
        let pid = self.pid().expect("pause: moto is not running");
        assert_eq!(
            unsafe { libc::kill(-pid, libc::SIGSTOP) },
            0,
            "SIGSTOP moto"
        );
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        let pid = self.pid().expect("resume: moto is not running");
        assert_eq!(
            unsafe { libc::kill(-pid, libc::SIGCONT) },
            0,
            "SIGCONT moto"
        );
    }

    /// Everything moto wrote (all starts on this port).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Every request in the log, oldest first (werkzeug's access log:
    /// `127.0.0.1 - - [date] "GET /b/k HTTP/1.1" 206 -`).
    pub fn requests(&self) -> Vec<Request> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// Every GET of an object (key path, not a bucket listing), oldest first, with its range.
    pub fn object_reads(&self) -> Vec<ObjectRead> {
        self.log()
            .lines()
            .filter_map(|l| {
                let mut f = l.strip_prefix("nitro-get ")?.split(' ');
                let target = f.next()?.to_string();
                let range = f.next().and_then(|r| {
                    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                });
                Some(ObjectRead { target, range })
            })
            .collect()
    }

    /// A bare HTTP/1.1 request (no signature), `Connection: close`. Returns status and body.
    pub fn http(&self, method: &str, target: &str, body: &[u8]) -> io::Result<(u16, String)> {
        http_request(self.addr(), method, target, body, Duration::from_secs(30))
    }

    /// `PUT /NAME` (moto does not check authentication unless `enforce_auth` was called).
    pub fn create_bucket(&self, name: &str) {
        let (code, body) = self
            .http("PUT", &format!("/{name}"), b"")
            .unwrap_or_else(|e| panic!("PUT /{name} to moto: {e}"));
        assert_eq!(code, 200, "create bucket {name}: HTTP {code}: {body}");
    }

    /// Creates IAM user `nitro` with an access key and a policy allowing `s3:*`, then turns on
    /// authentication: every later request must be signed with that key and its secret. Returns
    /// (key id, secret). The test's `TEST_KEY_ID` client no longer works on this server after it.
    pub fn enforce_auth(&self) -> (String, String) {
        let script = r#"
import sys, json, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
iam.create_user(UserName="nitro")
iam.put_user_policy(UserName="nitro", PolicyName="s3all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
k = iam.create_access_key(UserName="nitro")["AccessKey"]
print(k["AccessKeyId"], k["SecretAccessKey"])
"#;
        let out = Command::new(python())
            .args(["-c", script, &self.endpoint()])
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run python for IAM setup");
        assert!(
            out.status.success(),
            "IAM setup against moto failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        let (id, secret) = match (it.next(), it.next()) {
            (Some(a), Some(b)) => (a.to_string(), b.to_string()),
            _ => panic!("IAM setup printed {text:?}"),
        };
        // from the next request on, every request is authenticated
        let (code, body) = self
            .http("POST", "/moto-api/reset-auth", b"0")
            .expect("POST /moto-api/reset-auth");
        assert_eq!(code, 200, "reset-auth: HTTP {code}: {body}");
        (id, secret)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_access_line(line: &str) -> Option<Request> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut req = rest[..end].split(' ');
    let method = req.next()?.to_string();
    let target = req.next()?.to_string();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(Request {
        method,
        target,
        status,
    })
}

/// A plain HTTP/1.1 request over a fresh connection, read to the end.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let _ = s.shutdown(Shutdown::Write);
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {text:.200}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

// ---------------------------------------------------------------------------------------------
// pattern bytes at any offset

/// `pattern(seed, len)[off..off + buf.len()]`, without generating the bytes before `off` (the
/// generator advances by a constant per 8-byte word, so any word can be computed directly).
pub fn fill_pattern_at(seed: u64, off: u64, buf: &mut [u8]) {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let s0 = seed.wrapping_mul(GAMMA) ^ 0xD1B5_4A32_D192_ED03;
    let word = |k: u64| -> [u8; 8] {
        let mut z = s0.wrapping_add(GAMMA.wrapping_mul(k + 1));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z.to_le_bytes()
    };
    let mut pos = off;
    let mut i = 0;
    while i < buf.len() {
        let w = word(pos / 8);
        let within = (pos % 8) as usize;
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[within..within + n]);
        i += n;
        pos += n as u64;
    }
}

pub fn pattern_at(seed: u64, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern_at(seed, off, &mut v);
    v
}

// ---------------------------------------------------------------------------------------------
// the test's client

/// The object_store path of an S3 key, as it is (`Path::from` would percent-encode non-ASCII
/// characters into the key itself).
fn obj_path(key: &str) -> ObjPath {
    ObjPath::parse(key).unwrap_or_else(|e| panic!("object key {key:?}: {e}"))
}

/// What a listing or HEAD says about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjInfo {
    pub key: String,
    pub size: u64,
    /// LastModified, in seconds since the epoch.
    pub mtime_s: i64,
    pub etag: Option<String>,
}

/// The test's side of a bucket on a moto server: `object_store`'s S3 client on its own runtime.
pub struct S3Client {
    rt: tokio::runtime::Runtime,
    store: Arc<AmazonS3>,
    pub bucket: String,
}

impl S3Client {
    pub fn new(endpoint: &str, bucket: &str) -> S3Client {
        S3Client::with_keys(endpoint, bucket, TEST_KEY_ID, TEST_SECRET)
    }

    pub fn with_keys(endpoint: &str, bucket: &str, key_id: &str, secret: &str) -> S3Client {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(30),
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(120)),
            )
            .build()
            .expect("AmazonS3Builder");
        S3Client {
            rt,
            store: Arc::new(store),
            bucket: bucket.to_string(),
        }
    }

    /// Single-part PUT; returns the ETag.
    pub fn try_put(&self, key: &str, data: Vec<u8>) -> object_store::Result<String> {
        let r = self
            .rt
            .block_on(self.store.put(&obj_path(key), PutPayload::from(data)))?;
        Ok(r.e_tag.unwrap_or_default())
    }

    pub fn put(&self, key: &str, data: Vec<u8>) -> String {
        self.try_put(key, data)
            .unwrap_or_else(|e| panic!("PUT {}/{key}: {e}", self.bucket))
    }

    /// Multipart upload of `pattern(seed, len)` in parts of `part` bytes (the last one shorter),
    /// generated a part at a time. Returns the ETag (`"md5-of-md5s-N"`).
    pub fn put_pattern_multipart(&self, key: &str, seed: u64, len: u64, part: usize) -> String {
        let path = obj_path(key);
        let r = self.rt.block_on(async {
            let upload = self.store.put_multipart(&path).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, part);
            let mut off = 0u64;
            let mut buf = vec![0u8; part];
            while off < len {
                let n = (len - off).min(part as u64) as usize;
                fill_pattern_at(seed, off, &mut buf[..n]);
                w.wait_for_capacity(4).await?;
                w.write(&buf[..n]);
                off += n as u64;
            }
            w.finish().await
        });
        let r = r.unwrap_or_else(|e| panic!("multipart PUT {}/{key}: {e}", self.bucket));
        r.e_tag.unwrap_or_default()
    }

    /// Every object under `prefix` (recursively; None: the whole bucket), sorted by key.
    pub fn try_list(&self, prefix: Option<&str>) -> object_store::Result<Vec<ObjInfo>> {
        let p = prefix.map(obj_path);
        let mut v: Vec<ObjInfo> = self.rt.block_on(async {
            let mut s = self.store.list(p.as_ref());
            let mut v = Vec::new();
            while let Some(m) = s.next().await {
                let m = m?;
                v.push(ObjInfo {
                    key: m.location.to_string(),
                    size: m.size,
                    mtime_s: m.last_modified.timestamp(),
                    etag: m.e_tag,
                });
            }
            Ok::<_, object_store::Error>(v)
        })?;
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    pub fn list(&self, prefix: Option<&str>) -> Vec<ObjInfo> {
        self.try_list(prefix)
            .unwrap_or_else(|e| panic!("LIST {}: {e}", self.bucket))
    }

    pub fn try_head(&self, key: &str) -> object_store::Result<ObjInfo> {
        let m = self.rt.block_on(self.store.head(&obj_path(key)))?;
        Ok(ObjInfo {
            key: m.location.to_string(),
            size: m.size,
            mtime_s: m.last_modified.timestamp(),
            etag: m.e_tag,
        })
    }

    pub fn head(&self, key: &str) -> ObjInfo {
        self.try_head(key)
            .unwrap_or_else(|e| panic!("HEAD {}/{key}: {e}", self.bucket))
    }

    /// GET of `range` of the object, with `If-Match: if_match` if given.
    pub fn try_get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> object_store::Result<Vec<u8>> {
        let path = obj_path(key);
        self.rt
            .block_on(async {
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: if_match.map(str::to_string),
                    ..Default::default()
                };
                let r = self.store.get_opts(&path, opts).await?;
                r.bytes().await
            })
            .map(|b| b.to_vec())
    }

    /// GET of `range` of the object.
    pub fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
        self.try_get_range(key, range.clone(), None)
            .unwrap_or_else(|e| panic!("GET {}/{key} {range:?}: {e}", self.bucket))
    }

    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(self.store.delete(&obj_path(key)))
            .unwrap_or_else(|e| panic!("DELETE {}/{key}: {e}", self.bucket));
    }
}

/// A file of the daemon's environment: `HOME` for a test, with no `.aws` unless the test writes
/// one.
pub fn write_credentials_file(path: &Path, text: &str) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
