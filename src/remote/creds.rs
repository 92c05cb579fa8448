//! The AWS shared files (`~/.aws/credentials`, `~/.aws/config`), which `object_store` does not
//! read. Hand-written because it is twenty lines of INI: the profile's section, three keys.

use std::path::PathBuf;

pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

#[derive(Default)]
pub struct FromFiles {
    pub credentials: Option<Keys>,
    pub region: Option<String>,
}

/// Keys and region of profile `AWS_PROFILE` (or `default`) from the shared files, where present.
pub fn from_files() -> FromFiles {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
            .and_then(|p| std::fs::read_to_string(p).ok())
    };
    let mut out = FromFiles::default();
    if let Some(text) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
        let get = |k: &str| section_value(&text, &profile, k);
        if let (Some(id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
            out.credentials = Some(Keys {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("aws_session_token"),
            });
        }
    }
    if let Some(text) = file("AWS_CONFIG_FILE", "config") {
        // The config file names sections "[profile NAME]", except "[default]".
        let section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        out.region = section_value(&text, &section, "region");
    }
    out
}

/// `key = value` in section `[name]` of an INI text.
fn section_value(text: &str, name: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = s.trim() == name;
            continue;
        }
        if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::section_value;

    #[test]
    fn values_come_from_the_named_section_only() {
        let text = "[default]\naws_access_key_id = A\n# c\n[profile x]\nregion=eu-west-1\n[x]\naws_access_key_id=B\n";
        assert_eq!(
            section_value(text, "default", "aws_access_key_id").as_deref(),
            Some("A")
        );
        assert_eq!(
            section_value(text, "x", "aws_access_key_id").as_deref(),
            Some("B")
        );
        assert_eq!(
            section_value(text, "profile x", "region").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(section_value(text, "default", "region"), None);
    }
}
