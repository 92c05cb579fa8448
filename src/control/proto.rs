//! The control protocol's messages (version 1), shared by the daemon and the commands.
//!
//! One JSON object per line each way. A request carries `"v":1` and a `"cmd"`; every reply line
//! carries `"v":1` and an `"event"`. A daemon refuses a request of another version with an
//! `error` event naming the versions it speaks, so an old client and a new daemon fail with one
//! clear line rather than a misread field.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

/// A request line: `{"v":1,"cmd":"warm","paths":["a/b.gguf"],"check":false}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub req: Request,
}

/// Paths are relative to the mount's root (the client strips the mountpoint), `/`-separated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Who is there: answered with `hello`.
    Hello,
    /// Counters, gauges, percentiles and the `top` files by resident bytes: `stats`.
    Stats {
        top: usize,
    },
    /// Fill these files (directories: every file below) at full depth: `plan`, `progress`...,
    /// `done`. With `check`, only `done` with the residency, nothing changed.
    Warm {
        paths: Vec<String>,
        check: bool,
    },
    /// Warm, and keep resident until unpinned; refused (`error`) beyond the pin cap.
    Pin {
        paths: Vec<String>,
    },
    Unpin {
        paths: Vec<String>,
    },
    Evict {
        paths: Vec<String>,
    },
    /// Stops the warm or pin running on this connection (closing the connection does too).
    Cancel,
}

/// A reply line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Reply {
    Error {
        error: String,
    },
    Hello {
        version: u32,
        pid: u32,
        source: String,
        mountpoint: String,
    },
    Stats(Box<crate::control::report::Report>),
    /// What a warm will do, before it starts.
    Plan(Plan),
    Progress {
        /// Bytes of the set resident now, of `total_bytes`.
        resident_bytes: u64,
        total_bytes: u64,
        /// The file being filled (index into the plan's `files`).
        file: usize,
    },
    Done {
        files: Vec<FileInfo>,
        skipped: Vec<Skipped>,
        cancelled: bool,
    },
    /// Per file, what pin, unpin or evict did.
    Outcomes {
        outcomes: Vec<Outcome>,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    /// Bytes of the current version in RAM (store file or arena chunks, logical).
    pub resident_bytes: u64,
    /// Of those, held compressed in the arena (logical bytes).
    pub compressed_bytes: u64,
    /// Kept whole in the store (complete: opens are passthrough).
    pub stored: bool,
    pub pinned: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub why: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    pub files: Vec<FileInfo>,
    pub skipped: Vec<Skipped>,
    pub total_bytes: u64,
    pub resident_bytes: u64,
    pub pool_bytes: u64,
    pub pool_free_bytes: u64,
    pub pinned_bytes: u64,
    /// Set when the set does not fit: the numbers, in words.
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub path: String,
    pub ok: bool,
    pub message: String,
}

/// One line of JSON for a reply (a serialization failure becomes an `error` line).
pub fn line(reply: &Reply) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        v: u32,
        #[serde(flatten)]
        reply: &'a Reply,
    }
    let mut s = serde_json::to_string(&Out { v: VERSION, reply }).unwrap_or_else(|e| {
        format!("{{\"v\":{VERSION},\"event\":\"error\",\"error\":\"cannot encode reply: {e}\"}}")
    });
    s.push('\n');
    s
}

/// Parses a reply line, checking its version.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    #[derive(Deserialize)]
    struct In {
        v: u32,
        #[serde(flatten)]
        reply: Reply,
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("unreadable reply ({e})"))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "the daemon speaks protocol {v}, this client {VERSION}"
            ));
        }
        None => return Err("the reply has no protocol version".into()),
    }
    serde_json::from_value::<In>(value)
        .map(|i| {
            let _ = i.v;
            i.reply
        })
        .map_err(|e| format!("unreadable reply ({e})"))
}

/// Parses a request line; Err is the text of the `error` reply.
pub fn parse_request(text: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON request ({e})"))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(format!("protocol {v} is not spoken here (only {VERSION})")),
        None => {
            return Err(format!(
                "request without \"v\" (this daemon speaks {VERSION})"
            ));
        }
    }
    serde_json::from_value::<Envelope>(value)
        .map(|e| e.req)
        .map_err(|e| format!("bad request ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_with_their_version() {
        let req = Envelope {
            v: VERSION,
            req: Request::Warm {
                paths: vec!["a/b".into()],
                check: true,
            },
        };
        let text = serde_json::to_string(&req).expect("encode");
        assert!(
            text.contains("\"v\":1") && text.contains("\"cmd\":\"warm\""),
            "{text}"
        );
        assert!(matches!(
            parse_request(&text),
            Ok(Request::Warm { check: true, .. })
        ));
        assert!(parse_request(r#"{"v":2,"cmd":"hello"}"#).is_err());
        assert!(parse_request(r#"{"cmd":"hello"}"#).is_err());
        let l = line(&Reply::Error { error: "x".into() });
        assert!(l.ends_with('\n'));
        assert!(matches!(parse_reply(l.trim()), Ok(Reply::Error { .. })));
        assert!(parse_reply(r#"{"v":9,"event":"error","error":"x"}"#).is_err());
    }
}
