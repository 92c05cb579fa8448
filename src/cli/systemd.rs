//! `nitro-uring systemd-unit SOURCE MOUNTPOINT [MOUNT FLAGS]`: a service unit users can install.
//! `Type=notify`: the daemon sends READY=1 once the mount answers (`ready.rs`), so units ordered
//! after it start only when the models can be read. The mount flags are checked by the real
//! `mount` parser and copied into ExecStart as given.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use clap::Parser;

#[derive(clap::Args)]
pub struct UnitArgs {
    /// The nitro-uring binary ExecStart runs (default: this one)
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
    source: PathBuf,
    mountpoint: PathBuf,
    /// Flags for `nitro-uring mount` (--pool 8G --allow-other ...), checked and copied into ExecStart
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "MOUNT FLAGS"
    )]
    flags: Vec<OsString>,
}

pub fn run(a: UnitArgs) -> Result<()> {
    let unit = render(&a)?;
    print!("{unit}");
    Ok(())
}

fn absolute_dir(what: &str, p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| anyhow!("{what} {}: {e}", p.display()))?;
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{what} {} is not a directory", p.display()),
        Err(e) => bail!("{what} {}: {}", p.display(), super::plain(&e)),
    }
    check_unit_text(what, abs.as_os_str())?;
    Ok(abs)
}

/// A unit file is line-based text: no control characters, and UTF-8 so systemd reads the path
/// back as it was.
fn check_unit_text(what: &str, s: &OsStr) -> Result<()> {
    let Some(text) = s.to_str() else {
        bail!("{what} {} is not valid UTF-8", s.display());
    };
    if text.chars().any(char::is_control) {
        bail!("{what} {text:?} contains a control character");
    }
    Ok(())
}

fn render(a: &UnitArgs) -> Result<String> {
    let source = absolute_dir("source", &a.source)?;
    let mountpoint = absolute_dir("mountpoint", &a.mountpoint)?;
    let bin = match &a.bin {
        Some(b) => std::path::absolute(b).map_err(|e| anyhow!("--bin {}: {e}", b.display()))?,
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| anyhow!("cannot find this binary's path: {e}"))?,
    };
    check_unit_text("--bin", bin.as_os_str())?;
    for f in &a.flags {
        check_unit_text("mount flag", f)?;
    }
    // The real parser decides whether the flags are valid mount flags.
    let mut argv: Vec<OsString> = vec!["nitro-uring".into(), "mount".into()];
    argv.push(source.clone().into());
    argv.push(mountpoint.clone().into());
    argv.extend(a.flags.iter().cloned());
    if let Err(e) = crate::Cli::try_parse_from(&argv) {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid mount flags");
        bail!("mount flags: {}", first.trim_start_matches("error: "));
    }
    let lock = a.flags.iter().any(|f| f == "--lock");

    let s = |p: &Path| p.to_str().map(str::to_string).unwrap_or_default();
    let (src, mp, bin_s) = (s(&source), s(&mountpoint), s(&bin));
    let mut exec = vec![quote(&bin_s), "mount".into(), quote(&src), quote(&mp)];
    exec.extend(a.flags.iter().map(|f| quote(&f.to_string_lossy())));
    let name = format!("nitro-uring-{}.service", escape_path(&mp));
    let flags_shown: Vec<String> = a.flags.iter().map(|f| sh(&f.to_string_lossy())).collect();
    let mut u = String::new();
    let w = &mut u;
    let _ = writeln!(w, "# nitro-uring: {src} served from RAM at {mp}.");
    let _ = writeln!(w, "# Install:");
    let _ = writeln!(
        w,
        "#   nitro-uring systemd-unit {} {}{}{} > {}",
        sh(&src),
        sh(&mp),
        if flags_shown.is_empty() { "" } else { " " },
        flags_shown.join(" "),
        sh(&format!("/etc/systemd/system/{name}"))
    );
    let _ = writeln!(
        w,
        "#   systemctl daemon-reload && systemctl enable --now {}",
        sh(&name)
    );
    let _ = writeln!(
        w,
        "# Services that read {mp}: add Requires= and After={name} to them."
    );
    let _ = writeln!(w, "[Unit]");
    let _ = writeln!(
        w,
        "Description=nitro-uring RAM cache of {} at {}",
        spec_escape(&src),
        spec_escape(&mp)
    );
    let _ = writeln!(w, "Documentation=man:nitro-uring(1)");
    let _ = writeln!(
        w,
        "RequiresMountsFor={} {}",
        quote_path(&src),
        quote_path(&mp)
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "[Service]");
    let _ = writeln!(
        w,
        "# READY=1 comes once the mount answers (sd_notify from the daemon)."
    );
    let _ = writeln!(w, "Type=notify");
    let _ = writeln!(w, "ExecStart={}", exec.join(" "));
    let _ = writeln!(
        w,
        "# `-`: when a reader holds a file open umount fails (busy); the SIGTERM that follows makes\n\
         # the daemon detach the mount and exit."
    );
    let _ = writeln!(w, "ExecStop=-{} umount {}", quote(&bin_s), quote(&mp));
    let _ = writeln!(w, "Restart=on-failure");
    let _ = writeln!(w, "RestartSec=2s");
    let _ = writeln!(
        w,
        "# Allocating (and with --lock, pinning) a large pool takes a while."
    );
    let _ = writeln!(w, "TimeoutStartSec=5min");
    let _ = writeln!(w, "LimitNOFILE=1048576");
    if lock {
        let _ = writeln!(w, "LimitMEMLOCK=infinity");
    }
    let _ = writeln!(w);
    w.push_str(HARDENING);
    let _ = writeln!(w);
    let _ = writeln!(w, "[Install]");
    let _ = writeln!(w, "WantedBy=multi-user.target");
    Ok(u)
}

const HARDENING: &str = "\
# Hardening that still lets a FUSE daemon work. It must mount into the host's mount table, so
# nothing here gives it a private mount namespace: no PrivateMounts=, PrivateTmp=,
# PrivateDevices=, ProtectSystem=, ProtectHome=, ProtectKernelTunables= (it raises
# fs.fuse.max_pages_limit and the mount's read_ahead_kb), ProtectControlGroups=, ReadOnlyPaths=
# and the like, and no PrivateUsers= (mount(2) needs CAP_SYS_ADMIN of the host).
# CAP_SYS_ADMIN: mount/umount. CAP_DAC_READ_SEARCH: read every source file, open_by_handle_at.
# CAP_IPC_LOCK: register the pool with io_uring and --lock it without a memlock limit.
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_READ_SEARCH CAP_IPC_LOCK
NoNewPrivileges=yes
# @system-service lacks open_by_handle_at (how the daemon reopens source inodes); the io_uring
# calls are named because older systemd versions leave them out of @system-service. A call
# outside the list fails with EPERM instead of killing the daemon.
SystemCallFilter=@system-service @mount open_by_handle_at io_uring_setup io_uring_enter io_uring_register
SystemCallErrorNumber=EPERM
DevicePolicy=closed
DeviceAllow=/dev/fuse rw
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
UMask=0077
";

/// `%` starts a specifier in unit files.
fn spec_escape(s: &str) -> String {
    s.replace('%', "%%")
}

/// One word of ExecStart=: plain when it is plain, else double-quoted with `\\` and `"` escaped;
/// `%` (specifiers) and `$` (environment variables) doubled.
fn quote(s: &str) -> String {
    quote_with(s, true)
}

/// One path of a path list (RequiresMountsFor=): as `quote`, but `$` is not special there.
fn quote_path(s: &str) -> String {
    quote_with(s, false)
}

fn quote_with(s: &str, dollar: bool) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:,+=@".contains(c));
    if plain {
        return s.to_string();
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            '%' => q.push_str("%%"),
            '$' if dollar => q.push_str("$$"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A word for a POSIX shell command line (the install comment).
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:,+=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `systemd-escape --path`: the unit-name form of a path.
fn escape_path(p: &str) -> String {
    let trimmed: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if trimmed.is_empty() {
        return "-".into();
    }
    let joined = trimmed.join("/");
    let mut out = String::new();
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_path_matches_systemd_escape() {
        assert_eq!(escape_path("/mnt/models"), "mnt-models");
        assert_eq!(escape_path("/mnt/my models/"), "mnt-my\\x20models");
        assert_eq!(escape_path("/.hidden/a-b"), "\\x2ehidden-a\\x2db");
        assert_eq!(escape_path("/"), "-");
    }

    #[test]
    fn quote_leaves_plain_words_and_escapes_the_rest() {
        assert_eq!(quote("/data/models"), "/data/models");
        assert_eq!(quote("--pool"), "--pool");
        assert_eq!(quote("/a b"), "\"/a b\"");
        assert_eq!(quote("/100%$x\"\\"), "\"/100%%$$x\\\"\\\\\"");
        assert_eq!(quote_path("/a $b"), "\"/a $b\"");
    }
}
