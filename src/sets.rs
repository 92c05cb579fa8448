//! Model sets: which files a loader reads together, from names and small JSON files alone.
//!
//! Why: multi-file models are loaded whole, in a known order (gguf-split's numbered shards, a
//! safetensors index's weight map, an ollama manifest's layers), and loaded again and again. The
//! first open of one member says the others are next, so the FUSE front queues them for prefetch
//! (`fuse/set_prefetch.rs`). Everything here is pure — names and bytes in, names out — so it is
//! tested without a mount, and nothing here touches the filesystem.
//!
//! Why so strict: the JSON files are written by whoever can write the source tree and read by a
//! daemon running as root. Sizes are capped before parsing, and a member name is only ever one
//! path component (no `/`, `.` or `..`, no NUL): it is resolved below a directory descriptor the
//! daemon already holds, never joined into a path.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

/// A JSON file (index, manifest) larger than this is not read.
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// A set is cut to this many members (the rest are not prefetched).
pub const MAX_MEMBERS: usize = 256;
/// Numbered shard counts above this are not a set we believe.
const MAX_SHARDS: u32 = 99_999;

/// Whether `name` can name a member: one path component, and nothing odd.
pub fn valid_member_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.contains('\0')
}

/// `<stem>-<k>-of-<n>.<ext>` with k and n of one width (`model-00001-of-00005.safetensors`,
/// llama.cpp's gguf-split `x-00001-of-00004.gguf`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardName {
    pub stem: String,
    pub k: u32,
    pub n: u32,
    pub width: usize,
    pub ext: String,
}

impl ShardName {
    pub fn parse(name: &str) -> Option<ShardName> {
        if !valid_member_name(name) {
            return None;
        }
        let of = name.rfind("-of-")?;
        let (head, tail) = (&name[..of], &name[of + 4..]);
        let dash = head.rfind('-')?;
        let (stem, k_str) = (&head[..dash], &head[dash + 1..]);
        let dot = tail.find('.')?;
        let (n_str, ext) = (&tail[..dot], &tail[dot + 1..]);
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        if stem.is_empty() || ext.is_empty() || !digits(k_str) || !digits(n_str) {
            return None;
        }
        if k_str.len() != n_str.len() {
            return None;
        }
        let k: u32 = k_str.parse().ok()?;
        let n: u32 = n_str.parse().ok()?;
        if !(2..=MAX_SHARDS).contains(&n) || k == 0 || k > n {
            return None;
        }
        Some(ShardName {
            stem: stem.to_string(),
            k,
            n,
            width: k_str.len(),
            ext: ext.to_string(),
        })
    }

    /// The name of shard `k` of this set.
    pub fn member(&self, k: u32) -> String {
        format!(
            "{}-{:0w$}-of-{:0w$}.{}",
            self.stem,
            k,
            self.n,
            self.ext,
            w = self.width
        )
    }

    /// Every member, in shard order (the order loaders read them), at most `MAX_MEMBERS`.
    pub fn members(&self) -> Vec<String> {
        (1..=self.n)
            .take(MAX_MEMBERS)
            .map(|k| self.member(k))
            .collect()
    }

    /// How the set is named in log lines: `x-*-of-00004.gguf`.
    pub fn label(&self) -> String {
        format!(
            "{}-*-of-{:0w$}.{}",
            self.stem,
            self.n,
            self.ext,
            w = self.width
        )
    }

    fn same_set(&self, other: &ShardName) -> bool {
        self.stem == other.stem && self.n == other.n && self.ext == other.ext
    }
}

/// Whether `name` is a safetensors index (`model.safetensors.index.json`).
pub fn is_safetensors_index(name: &str) -> bool {
    name.len() > ".safetensors.index.json".len() && name.ends_with(".safetensors.index.json")
}

/// Why a JSON file gave no set.
#[derive(Debug, PartialEq, Eq)]
pub enum JsonError {
    TooLarge(u64),
    Parse(String),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::TooLarge(n) => write!(f, "{n} bytes, more than {MAX_JSON_BYTES}"),
            JsonError::Parse(e) => write!(f, "{e}"),
        }
    }
}

fn check_len(bytes: &[u8]) -> Result<(), JsonError> {
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(JsonError::TooLarge(bytes.len() as u64));
    }
    Ok(())
}

/// The values of a JSON object in the order they first appear (serde_json's own map sorts keys).
struct FirstSeen(Vec<String>);

impl<'de> Deserialize<'de> for FirstSeen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstSeen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of tensor name -> file name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FirstSeen, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some((_, file)) = map.next_entry::<serde::de::IgnoredAny, String>()? {
                    if seen.len() < 4 * MAX_MEMBERS && seen.insert(file.clone()) {
                        out.push(file);
                    }
                }
                Ok(FirstSeen(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct SafetensorsIndex {
    weight_map: FirstSeen,
}

/// The files a safetensors index names, in loader order: by shard number when they are numbered
/// shards of one set, else in order of first appearance in `weight_map`. Names that are not one
/// plain path component are dropped (returned as the second value, counted).
pub fn index_members(json: &[u8]) -> Result<(Vec<String>, usize), JsonError> {
    check_len(json)?;
    let idx: SafetensorsIndex =
        serde_json::from_slice(json).map_err(|e| JsonError::Parse(e.to_string()))?;
    let all = idx.weight_map.0;
    let total = all.len();
    let mut names: Vec<String> = all.into_iter().filter(|n| valid_member_name(n)).collect();
    let rejected = total - names.len();
    let shards: Option<Vec<ShardName>> = names.iter().map(|n| ShardName::parse(n)).collect();
    if let Some(shards) = shards
        && shards.windows(2).all(|w| w[0].same_set(&w[1]))
    {
        let mut keyed: Vec<(u32, String)> = shards.iter().map(|s| s.k).zip(names).collect();
        keyed.sort_by_key(|(k, _)| *k);
        names = keyed.into_iter().map(|(_, n)| n).collect();
    }
    names.truncate(MAX_MEMBERS);
    Ok((names, rejected))
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// The media type of the weights layer in an ollama manifest.
pub const OLLAMA_MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// `sha256:<64 hex>` -> the blob's file name `sha256-<64 hex>`; None for anything else.
pub fn blob_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| format!("sha256-{hex}"))
}

/// Whether `name` is an ollama blob file name.
pub fn is_blob_name(name: &str) -> bool {
    name.strip_prefix("sha256-")
        .is_some_and(|hex| blob_name(&format!("sha256:{hex}")).is_some())
}

/// The blob files an ollama manifest lists, in the order ollama reads them: the config, then the
/// layers as listed. Digests that are not `sha256:<hex>` are dropped (counted).
pub fn manifest_blobs(json: &[u8]) -> Result<(Vec<String>, usize), JsonError> {
    check_len(json)?;
    let m: Manifest = serde_json::from_slice(json).map_err(|e| JsonError::Parse(e.to_string()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut rejected = 0;
    for d in m.config.iter().chain(m.layers.iter()) {
        match blob_name(&d.digest) {
            Some(n) if seen.insert(n.clone()) => out.push(n),
            Some(_) => {}
            None => rejected += 1,
        }
    }
    out.truncate(MAX_MEMBERS);
    Ok((out, rejected))
}

/// Whether a manifest lists a weights layer at all (anything else is not a model set).
pub fn manifest_has_model(json: &[u8]) -> bool {
    serde_json::from_slice::<Manifest>(json)
        .is_ok_and(|m| m.layers.iter().any(|l| l.media_type == OLLAMA_MODEL_LAYER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_shards_parse_and_name_their_siblings() {
        let s = ShardName::parse("x-00002-of-00004.gguf").expect("a shard");
        assert_eq!(
            (s.stem.as_str(), s.k, s.n, s.ext.as_str()),
            ("x", 2, 4, "gguf")
        );
        assert_eq!(
            s.members(),
            [
                "x-00001-of-00004.gguf",
                "x-00002-of-00004.gguf",
                "x-00003-of-00004.gguf",
                "x-00004-of-00004.gguf"
            ]
        );
        assert_eq!(s.label(), "x-*-of-00004.gguf");
        let st = ShardName::parse("model-00001-of-00005.safetensors").expect("safetensors shard");
        assert_eq!(st.member(5), "model-00005-of-00005.safetensors");
        let dashed = ShardName::parse("Llama-3-70B-Q4-00001-of-00002.gguf").expect("dashes");
        assert_eq!(dashed.stem, "Llama-3-70B-Q4");
        assert_eq!(
            ShardName::parse("a-1-of-3.bin").map(|s| s.member(3)),
            Some("a-3-of-3.bin".into())
        );
    }

    #[test]
    fn names_that_are_not_shards_are_refused() {
        for n in [
            "x.gguf",
            "x-00001-of-00001.gguf",   // a set of one
            "x-00005-of-00004.gguf",   // k > n
            "x-00000-of-00004.gguf",   // k = 0
            "x-1-of-00004.gguf",       // widths differ
            "x-00001-of-00004",        // no extension
            "-00001-of-00004.gguf",    // no stem
            "x-0001a-of-00004.gguf",   // not digits
            "x-000001-of-000004.gguf", // too wide
            "../x-00001-of-00004.gguf",
            "a/x-00001-of-00004.gguf",
        ] {
            assert_eq!(ShardName::parse(n), None, "{n}");
        }
    }

    #[test]
    fn a_safetensors_index_gives_its_files_in_shard_order() {
        let json = br#"{"metadata":{"total_size":1},"weight_map":{
            "b.weight":"model-00002-of-00003.safetensors",
            "a.weight":"model-00001-of-00003.safetensors",
            "c.weight":"model-00002-of-00003.safetensors",
            "z.weight":"model-00003-of-00003.safetensors"}}"#;
        let (names, rejected) = index_members(json).expect("parse");
        assert_eq!(rejected, 0);
        assert_eq!(
            names,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors"
            ]
        );
        assert!(is_safetensors_index("model.safetensors.index.json"));
        assert!(!is_safetensors_index(".safetensors.index.json"));
    }

    #[test]
    fn unnumbered_index_files_keep_their_first_appearance_order() {
        let json = br#"{"weight_map":{"z":"text.safetensors","a":"vision.safetensors","b":"text.safetensors"}}"#;
        let (names, _) = index_members(json).expect("parse");
        assert_eq!(names, ["text.safetensors", "vision.safetensors"]);
    }

    #[test]
    fn hostile_index_names_are_dropped_and_huge_json_refused() {
        let json = br#"{"weight_map":{"a":"../../etc/shadow","b":"sub/x.safetensors","c":"..","d":"","e":"ok.safetensors"}}"#;
        let (names, rejected) = index_members(json).expect("parse");
        assert_eq!(names, ["ok.safetensors"]);
        assert_eq!(rejected, 4);
        let huge = vec![b' '; MAX_JSON_BYTES as usize + 1];
        assert!(matches!(index_members(&huge), Err(JsonError::TooLarge(_))));
        assert!(matches!(manifest_blobs(&huge), Err(JsonError::TooLarge(_))));
        assert!(index_members(b"{\"weight_map\": [1,2]}").is_err());
        assert!(index_members(b"not json").is_err());
        assert!(index_members(b"{\"weight_map\":{\"a\":").is_err());
    }

    #[test]
    fn an_index_naming_many_files_is_cut_to_the_member_cap() {
        let mut json = String::from("{\"weight_map\":{");
        for i in 0..(MAX_MEMBERS * 8) {
            json.push_str(&format!("\"t{i}\":\"f{i}.safetensors\","));
        }
        json.push_str("\"last\":\"f0.safetensors\"}}");
        let (names, _) = index_members(json.as_bytes()).expect("parse");
        assert_eq!(names.len(), MAX_MEMBERS);
        assert_eq!(names[0], "f0.safetensors");
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn an_ollama_manifest_lists_config_then_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":1}},
            "layers":[{{"mediaType":"{OLLAMA_MODEL_LAYER}","digest":"{}","size":9}},
                      {{"mediaType":"application/vnd.ollama.image.template","digest":"{}","size":1}},
                      {{"mediaType":"application/vnd.ollama.image.license","digest":"../../../etc/passwd","size":1}}]}}"#,
            digest('c'),
            digest('a'),
            digest('b')
        );
        let (blobs, rejected) = manifest_blobs(json.as_bytes()).expect("parse");
        assert_eq!(
            blobs,
            [
                format!("sha256-{}", "c".repeat(64)),
                format!("sha256-{}", "a".repeat(64)),
                format!("sha256-{}", "b".repeat(64))
            ]
        );
        assert_eq!(rejected, 1);
        assert!(manifest_has_model(json.as_bytes()));
        assert!(!manifest_has_model(br#"{"layers":[]}"#));
    }

    #[test]
    fn blob_names_are_exactly_sha256_hex() {
        assert!(is_blob_name(&format!("sha256-{}", "0f".repeat(32))));
        assert!(!is_blob_name(&format!("sha256-{}", "0F".repeat(32))));
        assert!(!is_blob_name("sha256-abc"));
        assert!(!is_blob_name(&format!("sha256-{}/x", "0".repeat(64))));
        assert_eq!(blob_name("sha256:../x"), None);
        assert_eq!(blob_name(&format!("sha512:{}", "0".repeat(64))), None);
    }
}
