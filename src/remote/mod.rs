//! An S3 bucket (or any S3-protocol store) as the source: the RAM tier of each node in a fleet.
//!
//! Why the engine stays the one owner of fills: a remote miss is a fill like a local one — the
//! same fill table, destination (arena block or store file), publish-after-check rule and
//! waiters — only its bytes come from a ranged GET run on a small tokio runtime (`fetch`) instead
//! of an io_uring read. So the budget, the store and passthrough, compression of cold chunks and
//! restart survival are the local source's own code, not a second cache.
//!
//! Why the ETag is the version and GETs carry `If-Match`: an object can be overwritten at any
//! time. A fill publishes bytes only when the server vouched they belong to the ETag the open saw
//! (412 otherwise: the version goes stale and its misses fail with EIO, exactly as a local file
//! changed under open handles), so no reply ever mixes two versions.
//!
//! Why `object_store` and not a home-made client: signing (SigV4), retries with backoff,
//! multi-part listing, the credential chain (environment, web identity, instance metadata) are
//! solved there and kept up by the Arrow project. The shared credentials file is read here
//! (`creds`), since `object_store` reads only the environment.

mod catalog;
mod creds;
mod fetch;
pub mod fs;
mod sets;
mod tree;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as KeyPath;
use object_store::{ObjectStore, ObjectStoreExt};

pub use fetch::{CHANGED_ERRNO, Fetcher};
pub use fs::RemoteFs;

/// `s3://BUCKET[/PREFIX]`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Key prefix without leading or trailing '/' ("" for the whole bucket).
    pub prefix: String,
}

impl Location {
    /// None when `text` is not an `s3://` address (a local directory, then).
    pub fn parse(text: &str) -> Option<Result<Location, String>> {
        let rest = text.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(format!("{text}: no bucket name")));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Some(Err(format!("{text}: '.' and '..' are not key parts")));
        }
        Some(Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }

    pub fn display(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// `--s3-part-size`'s default, measured with `nitro-uring bench --only s3 --s3-sweep` (README).
pub const DEFAULT_PART_BYTES: usize = 8 << 20;

/// The engine's fill slots for a bucket: enough chunks for every GET in flight to be a whole part,
/// plus the quarter the engine keeps for readers (a local source's engine has 64).
pub fn max_fills(opts: &RemoteOptions, chunk_bytes: u64) -> usize {
    let per_part = (opts.part_bytes as u64).div_ceil(chunk_bytes.max(1)).max(1) as usize;
    (opts.concurrency.max(1) * per_part * 4 / 3).clamp(64, 1024)
}

/// The `--s3-*` knobs and what the mount line gave.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Ranged GETs in flight at most, over every object.
    pub concurrency: usize,
    /// The most one GET asks for: chunks fetched together are merged up to this (see `fetch`).
    pub part_bytes: usize,
    /// Retries of a failed request (connection refused, 5xx, timeouts) before its read fails.
    pub retries: usize,
    /// Bound on one try of a request; a read that keeps failing fails after `retries` more.
    pub timeout: Duration,
    /// How long a directory listing is trusted.
    pub list_ttl: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            endpoint: None,
            region: None,
            concurrency: 32,
            part_bytes: DEFAULT_PART_BYTES,
            retries: 3,
            timeout: Duration::from_secs(30),
            list_ttl: Duration::from_secs(60),
        }
    }
}

/// One version of one object: what an open saw (HEAD or the listing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: KeyPath,
    pub etag: Option<String>,
    pub size: u64,
    /// Last-Modified, in ns since the epoch (whole seconds).
    pub mtime_ns: i64,
}

impl Object {
    pub fn of(meta: &object_store::ObjectMeta) -> Object {
        let t = meta.last_modified;
        Object {
            key: meta.location.clone(),
            etag: meta.e_tag.clone(),
            size: meta.size,
            // Whole seconds: a listing says milliseconds, a HEAD seconds, and both must name the
            // same version.
            mtime_ns: t.timestamp().saturating_mul(1_000_000_000),
        }
    }

    /// Whether a response's metadata (ETag and size) names this version. A response without an
    /// ETag is taken on the size alone (servers that send none give no more to check).
    pub fn same_version(&self, meta: &object_store::ObjectMeta) -> bool {
        meta.size == self.size
            && match (&self.etag, &meta.e_tag) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The store's name for this version: (source id, key hash, size, mtime, ETag hash). A new
    /// ETag is a new stamp, so an overwritten object never matches the old store file.
    pub fn stamp(&self, source_id: u64) -> crate::engine::Stamp {
        use xxhash_rust::xxh3::xxh3_64;
        let etag = self.etag.as_deref().unwrap_or("");
        (
            source_id,
            xxh3_64(self.key.as_ref().as_bytes()),
            self.size,
            self.mtime_ns,
            xxh3_64(etag.as_bytes()) as i64,
        )
    }
}

/// The connection to one bucket: the client, the runtime its requests run on, and the location.
pub struct Client {
    pub store: Arc<AmazonS3>,
    /// Two worker threads: the work is waiting on sockets and copying bodies.
    rt: tokio::runtime::Runtime,
    pub loc: Location,
    pub opts: RemoteOptions,
    /// Names this source's store directory: (hash of endpoint and bucket, hash of prefix).
    pub id: (u64, u64),
}

impl Client {
    /// Builds the client and checks it with one LIST of the prefix: bad credentials, a missing
    /// bucket or an unreachable endpoint fail here, before anything is mounted.
    pub fn connect(loc: Location, mut opts: RemoteOptions) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nitro-s3")
            .enable_all()
            .build()
            .map_err(|e| anyhow!("cannot start the S3 client's runtime: {e}"))?;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&loc.bucket);
        if opts.endpoint.is_none() {
            opts.endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
        }
        let allow_http = opts
            .endpoint
            .as_deref()
            .is_some_and(|ep| ep.starts_with("http://"));
        if let Some(ep) = &opts.endpoint {
            b = b.with_endpoint(ep);
        }
        let file = creds::from_files();
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            && let Some(c) = &file.credentials
        {
            b = b
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
            if let Some(t) = &c.session_token {
                b = b.with_token(t);
            }
        }
        let region = opts
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .or(file.region)
            .unwrap_or_else(|| "us-east-1".into());
        opts.region = Some(region.clone());
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: opts.retries,
            // Each try may take `timeout`; the retries come on top (a hung server is retried).
            retry_timeout: opts.timeout * (opts.retries as u32 + 1) + Duration::from_secs(5),
        };
        // (Client options replace the builder's: `allow_http` must be set here.)
        let client_opts = object_store::ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(opts.timeout)
            .with_connect_timeout(Duration::from_secs(5).min(opts.timeout))
            .with_pool_max_idle_per_host(opts.concurrency.max(8));
        let store = b
            .with_region(region)
            .with_retry(retry)
            .with_client_options(client_opts)
            .build()
            .map_err(|e| anyhow!("{}: {}", loc.display(), one_line(&e)))?;
        use xxhash_rust::xxh3::xxh3_64;
        let where_ = format!(
            "{}\n{}",
            opts.endpoint.as_deref().unwrap_or("aws"),
            loc.bucket
        );
        // The top bit marks a remote source, so no local (dev, ino) pair can name the same dir.
        let id = (
            xxh3_64(where_.as_bytes()) | 1 << 63,
            xxh3_64(loc.prefix.as_bytes()),
        );
        let client = Client {
            store: Arc::new(store),
            rt,
            loc,
            opts,
            id,
        };
        client.check()?;
        Ok(client)
    }

    /// One LIST of the prefix, with every failure turned into the line the user sees.
    fn check(&self) -> Result<()> {
        let prefix = self.dir_key("");
        match self.block_on(self.store.list_with_delimiter(prefix.as_ref())) {
            Ok(_) => Ok(()),
            Err(e) => Err(anyhow!("{}: {}", self.loc.display(), explain(&e))),
        }
    }

    /// Runs `f` on the client's runtime from a plain thread (a FUSE worker), waiting for it.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }

    /// The key prefix of directory `rel` ("" is the mount's root), or None for the bucket's root.
    pub fn dir_key(&self, rel: &str) -> Option<KeyPath> {
        let full = join(&self.loc.prefix, rel);
        (!full.is_empty()).then(|| key_path(&full))
    }

    /// The key of file `rel` below the prefix.
    pub fn file_key(&self, rel: &str) -> KeyPath {
        key_path(&join(&self.loc.prefix, rel))
    }

    /// The current version of `key` (HEAD).
    pub fn head(&self, key: &KeyPath) -> object_store::Result<Object> {
        self.block_on(self.store.head(key)).map(|m| Object::of(&m))
    }
}

/// A key as it is in the bucket. `Path::parse` keeps it byte for byte; `Path::from` would
/// percent-encode characters like `ü`, `+` or `#` into the key itself, naming another object.
/// Names only come from listings (key parts that already parsed), so the fallback is for keys a
/// server listed that object_store would not accept as a path.
fn key_path(key: &str) -> KeyPath {
    KeyPath::parse(key).unwrap_or_else(|_| KeyPath::from_iter(key.split('/')))
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// The first line of an error's text (object_store's messages nest their causes).
fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or("").trim().to_string()
}

/// What a failed check means to the user, in one line: the kind of failure in words, then the
/// innermost causes (object_store's and the HTTP client's messages), never a Debug dump.
fn explain(e: &object_store::Error) -> String {
    let debug = format!("{e:?}");
    let has = |s: &str| debug.contains(s);
    let why = causes(e);
    if has("169.254.169.254") || has("169.254.170.2") {
        // No keys in the environment or the shared files: object_store asked the instance
        // metadata service, which is not there.
        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in \
         ~/.aws/credentials (AWS_PROFILE); no instance metadata service answered"
            .into()
    } else if has("NoSuchBucket") {
        "no such bucket".into()
    } else if has("InvalidAccessKeyId")
        || has("SignatureDoesNotMatch")
        || has("AccessDenied")
        || has("ExpiredToken")
        || has("InvalidClientTokenId")
        || matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    {
        format!(
            "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials): {why}"
        )
    } else if has("imed out") || has("TimedOut") || has("Timeout") || has("deadline") {
        format!("endpoint unreachable: timed out ({why})")
    } else if has("onnect") || has("dns error") || has("error sending request") {
        format!("endpoint unreachable: {why}")
    } else if matches!(e, object_store::Error::NotFound { .. }) {
        "no such bucket".into()
    } else {
        why
    }
}

/// The last two messages of an error's source chain, joined: the specific part of a nested
/// error ("Connection refused", "operation timed out"), cut to fit a line.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        chain.push(c.to_string());
        cur = c.source();
    }
    let start = chain.len().saturating_sub(2);
    short(&chain[start..].join(": "))
}

/// A long Debug text cut to something that fits a line.
fn short(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.len() > 240 {
        let mut end = 240;
        while !flat.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &flat[..end])
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(Location::parse("/srv/models"), None);
        let l = Location::parse("s3://b/models/llama/").unwrap().unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("b", "models/llama")
        );
        let l = Location::parse("s3://b").unwrap().unwrap();
        assert_eq!(l.prefix, "");
        assert!(Location::parse("s3:///x").unwrap().is_err());
        assert!(Location::parse("s3://b/a/../c").unwrap().is_err());
    }

    #[test]
    fn keys_are_kept_byte_for_byte() {
        for k in ["a/ünïcödé.txt", "a/a+b [1] #2 %41 ~.bin", "x"] {
            assert_eq!(key_path(k).as_ref(), k);
        }
    }

    #[test]
    fn a_failed_check_is_one_line_naming_the_cause() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let opts = RemoteOptions {
            endpoint: Some("http://127.0.0.1:1".into()),
            retries: 0,
            timeout: Duration::from_secs(5),
            ..RemoteOptions::default()
        };
        let loc = Location::parse("s3://b/p").unwrap().unwrap();
        let err = match Client::connect(loc, opts) {
            Ok(_) => panic!("a closed port connected"),
            Err(e) => e.to_string(),
        };
        // Keys from the environment (or a shared file) are tried against the closed port; without
        // any, the client asks the (absent) instance metadata service first.
        let keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
            || creds::from_files().credentials.is_some();
        let want = if keys {
            "s3://b/p: endpoint unreachable"
        } else {
            "s3://b/p: no credentials"
        };
        assert!(err.starts_with(want), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn a_new_etag_is_a_new_stamp() {
        let o = Object {
            key: KeyPath::from("a/b.gguf"),
            etag: Some("\"1\"".into()),
            size: 10,
            mtime_ns: 5,
        };
        let mut p = o.clone();
        p.etag = Some("\"2\"".into());
        assert_ne!(o.stamp(7), p.stamp(7));
        assert_eq!(o.stamp(7), o.clone().stamp(7));
    }
}
