//! The mount(8) helper: this binary invoked as `mount.fuse.nitro-uring` (a symlink in /sbin, made
//! by `nitro-uring install-helper`), so an fstab line such as
//!
//! ```text
//! /data/models  /mnt/models  fuse.nitro-uring  pool=8G,allow_other,_netdev  0 0
//! ```
//!
//! works with `mount /mnt/models` and at boot. mount(8) runs
//! `/sbin/mount.fuse.nitro-uring SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`, having
//! dropped what only it uses (`noauto`, `x-systemd.*`, `defaults`) and added `rw`/`ro`.
//!
//! The options are the `mount` flags without dashes (`pool=8G` is `--pool 8G`, `allow_other` is
//! `--allow-other`), looked up in the clap definition so every mount flag works here too and an
//! unknown one is an error. Generic options mount.fuse(8) also ignores (`_netdev`, `nofail`,
//! `user`, ...) are ignored. The daemon then forks: the child mounts and serves; the parent waits
//! on a pipe until the child says the mount answers (`OK`) or why it failed (`ERR ...`), so
//! mount(8)'s exit status and stderr tell the truth. The daemon logs to syslog (`/dev/log`, the
//! journal on systemd machines) or to the file in `log=`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::JoinHandle;

use anyhow::{Result, bail};
use clap::{CommandFactory, Parser};

pub const HELPER_NAME: &str = "mount.fuse.nitro-uring";
/// Where the daemon logs when `log=` is not given and there is no syslog socket.
pub const FALLBACK_LOG: &str = "/var/log/nitro-uring.log";

/// mount(8) exit codes: bad invocation, and mount failure.
const EXIT_USAGE: u8 = 1;
const EXIT_MOUNT_FAILED: u8 = 32;

/// Options mount(8) or mount.fuse(8) own, or that describe what the mount always is
/// (read-only, nosuid, nodev, default_permissions): accepted and ignored.
const IGNORED: &[&str] = &[
    "",
    "defaults",
    "rw",
    "ro",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "sync",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "default_permissions",
    "silent",
    "loud",
];
const IGNORED_PREFIXES: &[&str] = &["x-", "X-", "comment=", "fsname=", "subtype="];

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Directory for the link (mount(8) looks for helpers in /sbin)
    #[arg(long, default_value = "/sbin")]
    dir: PathBuf,
    /// Remove the link instead
    #[arg(long)]
    remove: bool,
}

/// `nitro-uring install-helper`: `DIR/mount.fuse.nitro-uring -> this binary`.
pub fn install(a: InstallArgs) -> Result<()> {
    match std::fs::metadata(&a.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("--dir {} is not a directory", a.dir.display()),
        Err(e) => bail!("--dir {}: {}", a.dir.display(), super::plain(&e)),
    }
    let link = a.dir.join(HELPER_NAME);
    let existing = std::fs::symlink_metadata(&link);
    if a.remove {
        return match existing {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("{} is not there; nothing to remove", link.display());
                Ok(())
            }
            Err(e) => bail!("{}: {}", link.display(), super::plain(&e)),
            Ok(m) if !m.file_type().is_symlink() => {
                bail!("{} is not a symlink; not removing it", link.display())
            }
            Ok(_) => {
                std::fs::remove_file(&link).map_err(|e| {
                    anyhow::anyhow!("cannot remove {}: {}", link.display(), super::plain(&e))
                })?;
                println!("removed {}", link.display());
                Ok(())
            }
        };
    }
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| anyhow::anyhow!("cannot find this binary's path: {e}"))?;
    match existing {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(&link).unwrap_or_default();
            if target == exe {
                println!("{} -> {} is already there", link.display(), exe.display());
                return Ok(());
            }
            bail!(
                "{} already exists (-> {}); remove it first (install-helper --remove)",
                link.display(),
                target.display()
            )
        }
        Ok(_) => bail!("{} already exists and is not a symlink", link.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("{}: {}", link.display(), super::plain(&e)),
    }
    std::os::unix::fs::symlink(&exe, &link)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {}", link.display(), super::plain(&e)))?;
    println!("linked {} -> {}", link.display(), exe.display());
    Ok(())
}

/// When this process was started as `mount.fuse.nitro-uring`, runs the helper and returns its
/// exit code; otherwise None (the normal CLI runs).
pub fn run_if_invoked_as_helper() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    if Path::new(&argv0).file_name()? != OsStr::new(HELPER_NAME) {
        return None;
    }
    Some(helper_main(args.collect()))
}

/// What mount(8) asked for.
struct Invocation {
    cli: crate::Cli,
    source: PathBuf,
    mountpoint: PathBuf,
    fake: bool,
    verbose: bool,
    log: Option<PathBuf>,
    warnings: Vec<String>,
}

enum ParseError {
    Usage(String),
    Help,
}

fn usage_line() -> String {
    format!("usage: {HELPER_NAME} SOURCE MOUNTPOINT [-sfnv] [-o OPTION[,OPTION...]]")
}

fn helper_main(args: Vec<OsString>) -> ExitCode {
    let inv = match parse(args) {
        Ok(inv) => inv,
        Err(ParseError::Help) => {
            println!("{}", usage_line());
            println!(
                "OPTIONS are the `nitro-uring mount` flags without dashes (pool=8G, allow_other, ...), \
                 plus log=FILE; see `nitro-uring mount --help`."
            );
            return ExitCode::SUCCESS;
        }
        Err(ParseError::Usage(msg)) => {
            eprintln!("nitro-uring: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for w in &inv.warnings {
        eprintln!("nitro-uring: {w}");
    }
    if inv.fake {
        return ExitCode::SUCCESS;
    }
    daemonize_and_mount(inv)
}

/// The `mount` flags by long name, and whether each takes a value.
fn mount_flags() -> Vec<(String, bool)> {
    let cmd = crate::Cli::command();
    let Some(mount) = cmd.find_subcommand("mount") else {
        return Vec::new();
    };
    mount
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_global_set())
        .filter_map(|a| {
            let long = a.get_long()?;
            (!matches!(long, "help" | "version"))
                .then(|| (long.to_string(), a.get_action().takes_values()))
        })
        .collect()
}

fn parse(args: Vec<OsString>) -> std::result::Result<Invocation, ParseError> {
    let usage = |msg: String| ParseError::Usage(msg);
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut sloppy, mut fake, mut verbose) = (false, false, false);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let bytes = arg.as_encoded_bytes();
        if arg == "-h" || arg == "--help" {
            return Err(ParseError::Help);
        }
        if arg == "-o" || arg == "-t" || arg == "-N" {
            let Some(value) = it.next() else {
                return Err(usage(format!("{} needs a value", arg.display())));
            };
            let value = value
                .into_string()
                .map_err(|v| usage(format!("option {} is not valid UTF-8", v.display())))?;
            match arg.to_str() {
                Some("-o") => options.extend(value.split(',').map(str::to_string)),
                Some("-t") => {
                    if !matches!(value.as_str(), "fuse.nitro-uring" | "nitro-uring") {
                        return Err(usage(format!(
                            "-t {value}: this helper mounts fuse.nitro-uring only"
                        )));
                    }
                }
                _ => {
                    return Err(usage(
                        "-N (mount in another namespace) is not supported".into(),
                    ));
                }
            }
        } else if let Some(rest) = bytes.strip_prefix(b"-o")
            && !rest.is_empty()
        {
            let value = std::str::from_utf8(rest)
                .map_err(|_| usage(format!("option {} is not valid UTF-8", arg.display())))?;
            options.extend(value.split(',').map(str::to_string));
        } else if bytes.len() > 1 && bytes[0] == b'-' {
            for &c in &bytes[1..] {
                match c {
                    b's' => sloppy = true,
                    b'f' => fake = true,
                    b'v' => verbose = true,
                    b'n' => {}
                    _ => {
                        return Err(usage(format!(
                            "unknown flag {} ({})",
                            arg.display(),
                            usage_line()
                        )));
                    }
                }
            }
        } else {
            positional.push(arg);
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        usage(if p.len() < 2 {
            format!("SOURCE and MOUNTPOINT are needed ({})", usage_line())
        } else {
            format!(
                "too many arguments: {} ({})",
                p[2..]
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
                usage_line()
            )
        })
    })?;
    // The daemon changes to / once detached; relative paths (a direct call) must survive that.
    let abs =
        |p: &OsString| std::path::absolute(p).map_err(|e| usage(format!("{}: {e}", p.display())));
    let source = abs(&source)?;
    let mountpoint = abs(&mountpoint)?;

    let known = mount_flags();
    let mut flags: Vec<OsString> = Vec::new();
    let mut warnings = Vec::new();
    let mut log = None;
    for opt in options {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        if IGNORED.contains(&opt.as_str()) || IGNORED_PREFIXES.iter().any(|p| opt.starts_with(p)) {
            continue;
        }
        if opt == "noexec" {
            warnings.push(
                "noexec is not applied (the mount is always read-only, nosuid and nodev)".into(),
            );
            continue;
        }
        if key == "log" {
            match value {
                Some(v) if !v.is_empty() => log = Some(PathBuf::from(v)),
                _ => return Err(usage("mount option log needs a value (log=FILE)".into())),
            }
            continue;
        }
        let long = key.replace('_', "-");
        match known.iter().find(|(l, _)| *l == long) {
            Some((_, true)) => match value {
                Some(v) if !v.is_empty() => {
                    flags.push(format!("--{long}").into());
                    flags.push(v.into());
                }
                _ => {
                    return Err(usage(format!(
                        "mount option {key} needs a value ({key}=...)"
                    )));
                }
            },
            Some((_, false)) => {
                if value.is_some() {
                    return Err(usage(format!("mount option {key} takes no value")));
                }
                flags.push(format!("--{long}").into());
            }
            None if sloppy => warnings.push(format!("ignoring unknown mount option {opt} (-s)")),
            None => {
                let names: Vec<String> = known
                    .iter()
                    .map(|(l, v)| format!("{}{}", l.replace('-', "_"), if *v { "=" } else { "" }))
                    .collect();
                return Err(usage(format!(
                    "unknown mount option {opt} (known: {}, log=)",
                    names.join(", ")
                )));
            }
        }
    }
    let mut argv: Vec<OsString> = vec!["nitro-uring".into()];
    if verbose {
        argv.push("-v".into());
    }
    argv.push("mount".into());
    argv.push(source.clone().into());
    argv.push(mountpoint.clone().into());
    argv.extend(flags);
    let cli = crate::Cli::try_parse_from(&argv).map_err(|e| usage(clap_error_line(&e)))?;
    if !matches!(cli.cmd, crate::Cmd::Mount(_)) {
        return Err(usage("internal error: options did not make a mount".into()));
    }
    Ok(Invocation {
        cli,
        source,
        mountpoint,
        fake,
        verbose,
        log,
        warnings,
    })
}

/// A clap error about `--pool <POOL>` reworded for fstab, where it was `pool=`.
fn clap_error_line(e: &clap::Error) -> String {
    use clap::error::ContextKind;
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid mount options")
        .trim_start_matches("error: ");
    let arg = e
        .get(ContextKind::InvalidArg)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let Some(long) = arg
        .strip_prefix("--")
        .and_then(|a| a.split([' ', '=']).next())
    else {
        return format!("bad mount options: {first}");
    };
    let key = long.replace('-', "_");
    if e.kind() == clap::error::ErrorKind::ArgumentConflict {
        return format!("mount option {key} is given more than once");
    }
    match (
        e.get(ContextKind::InvalidValue),
        e.get(ContextKind::ValidValue),
    ) {
        (Some(v), Some(valid)) => format!("bad value {key}={v} (possible values: {valid})"),
        (Some(v), None) => {
            let why = first.rsplit_once(": ").map_or(first, |(_, w)| w);
            format!("bad value {key}={v}: {why}")
        }
        _ => format!("mount option {key}: {}", fstab_words(first)),
    }
}

/// A message about `--chunk` says `chunk` to someone who wrote `chunk=` in fstab.
fn fstab_words(msg: &str) -> String {
    let mut msg = msg.to_string();
    for (long, _) in mount_flags() {
        msg = msg.replace(&format!("--{long}"), &long.replace('-', "_"));
    }
    msg
}

/// Where the detached daemon's stderr (its log) goes.
enum LogSink {
    File(File),
    Syslog(UnixDatagram),
}

fn open_log(path: Option<&Path>) -> std::result::Result<LogSink, String> {
    let append = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    };
    if let Some(p) = path {
        return append(p)
            .map(LogSink::File)
            .map_err(|e| format!("log={}: {}", p.display(), super::plain(&e)));
    }
    if let Ok(sock) = UnixDatagram::unbound()
        && sock.connect("/dev/log").is_ok()
    {
        return Ok(LogSink::Syslog(sock));
    }
    match append(Path::new(FALLBACK_LOG)) {
        Ok(f) => Ok(LogSink::File(f)),
        Err(_) => File::options()
            .write(true)
            .open("/dev/null")
            .map(LogSink::File)
            .map_err(|e| format!("/dev/null: {e}")),
    }
}

/// The process has one thread (fork copies only the caller).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

fn daemonize_and_mount(inv: Invocation) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("nitro-uring: {msg}");
        ExitCode::from(EXIT_MOUNT_FAILED)
    };
    // Opened before forking, so a bad log= is reported by the process mount(8) waits for.
    let log = match open_log(inv.log.as_deref()) {
        Ok(l) => l,
        Err(msg) => return fail(msg),
    };
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    if !single_threaded() {
        return fail("internal error: threads are running before the daemon forks".into());
    }
    // SAFETY: the process has a single thread (checked just above), so the child is a complete
    // copy of it and may run any code; every descriptor the child keeps is one it owns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(reader);
        return daemon(inv, writer, log);
    }
    drop(writer);
    // EOF comes when the child reported (it closes the pipe at once) or died.
    let mut said = String::new();
    let _ = reader.read_to_string(&mut said);
    if said.starts_with("OK") {
        if inv.verbose {
            println!(
                "nitro-uring: {} mounted at {} (daemon pid {pid})",
                inv.source.display(),
                inv.mountpoint.display()
            );
        }
        return ExitCode::SUCCESS;
    }
    let status = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()).ok())
        .flatten()
        .map(|(_, st)| st);
    if let Some(msg) = said.strip_prefix("ERR ") {
        return fail(fstab_words(msg.trim()));
    }
    let how = match status {
        Some(st) if st.exited() => format!("exit status {}", st.exit_status().unwrap_or(-1)),
        Some(st) if st.signaled() => {
            format!("killed by signal {}", st.terminating_signal().unwrap_or(-1))
        }
        _ => "no status".into(),
    };
    fail(format!(
        "the daemon exited before the mount was ready ({how}); see its log"
    ))
}

/// dup2(`src`, `target`).
fn redirect(src: &impl AsRawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: both are open descriptors; dup2 touches no memory. `target` is one of 0..=2,
    // which std treats as always open and owned by the process, so replacing it is sound.
    if unsafe { libc::dup2(src.as_raw_fd(), target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The forked child: detach, point stdio at the log, mount and serve until unmounted.
fn daemon(inv: Invocation, ready_pipe: std::io::PipeWriter, log: LogSink) -> ExitCode {
    let report = |msg: String| {
        super::ready::failed(&msg);
        ExitCode::from(EXIT_MOUNT_FAILED)
    };
    super::ready::report_to_pipe(ready_pipe);
    // Own session: no controlling terminal, no signals from the shell that ran mount(8).
    let _ = rustix::process::setsid();
    let _ = std::env::set_current_dir("/");
    let null = match File::options().read(true).write(true).open("/dev/null") {
        Ok(f) => f,
        Err(e) => return report(format!("/dev/null: {e}")),
    };
    if let Err(e) = redirect(&null, 0).and_then(|()| redirect(&null, 1)) {
        return report(format!("redirecting stdio: {e}"));
    }
    let forwarder = match log {
        LogSink::File(f) => redirect(&f, 2).map(|()| None),
        LogSink::Syslog(sock) => forward_to_syslog(sock).map(Some),
    };
    let forwarder = match forwarder {
        Ok(f) => f,
        Err(e) => return report(format!("redirecting stderr to the log: {e}")),
    };
    let crate::Cli {
        verbose,
        quiet,
        cmd,
    } = inv.cli;
    nitro_uring::logging::init(verbose, quiet);
    let code = match cmd {
        crate::Cmd::Mount(a) => match crate::run_mount(*a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let msg = format!("{e:#}");
                super::ready::failed(&msg);
                eprintln!("nitro-uring: {msg}");
                ExitCode::FAILURE
            }
        },
        _ => report("internal error: not a mount".into()),
    };
    // Close the log pipe's last writer so the forwarder sends what is left and ends.
    if let Some(h) = forwarder {
        let _ = redirect(&null, 2);
        let _ = h.join();
    }
    code
}

/// Sends every line written to stderr to syslog (`/dev/log`) as `nitro-uring[PID]: line`.
fn forward_to_syslog(sock: UnixDatagram) -> std::io::Result<JoinHandle<()>> {
    let (reader, writer) = std::io::pipe()?;
    redirect(&writer, 2)?;
    drop(writer);
    let pid = std::process::id();
    std::thread::Builder::new()
        .name("nitro-log".into())
        .spawn(move || {
            for line in std::io::BufReader::new(reader)
                .lines()
                .map_while(Result::ok)
            {
                // daemon facility (3): err for the daemon's error lines, else info.
                let pri = if line.starts_with("nitro-uring:") {
                    3 * 8 + 3
                } else {
                    3 * 8 + 6
                };
                let _ = sock.send(format!("<{pri}>nitro-uring[{pid}]: {line}").as_bytes());
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn fstab_options_map_to_mount_flags() {
        let inv = match parse(args(&[
            "/src",
            "/mnt",
            "-n",
            "-v",
            "-o",
            "rw,pool=64M,chunk=64KiB,allow_other,cache_mode=keep,_netdev,nofail,x-systemd.after=a,log=/tmp/l",
        ])) {
            Ok(i) => i,
            Err(ParseError::Usage(m)) => panic!("{m}"),
            Err(ParseError::Help) => panic!("help"),
        };
        assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
        let crate::Cmd::Mount(m) = &inv.cli.cmd else {
            panic!("not a mount")
        };
        assert_eq!(m.pool, 64 << 20);
        assert_eq!(m.chunk, 64 << 10);
        assert!(m.allow_other);
        assert!(matches!(m.cache_mode, nitro_uring::mount::CacheMode::Keep));
        assert!(inv.verbose);
        assert_eq!(inv.log.as_deref(), Some(Path::new("/tmp/l")));
        assert_eq!(inv.source, Path::new("/src"));
    }

    fn err(a: &[&str]) -> String {
        match parse(args(a)) {
            Ok(_) => panic!("{a:?} parsed"),
            Err(ParseError::Usage(m)) => m,
            Err(ParseError::Help) => "help".into(),
        }
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        let m = err(&["/s", "/m", "-o", "pool=8G,frobnicate"]);
        assert!(m.starts_with("unknown mount option frobnicate"), "{m}");
        assert!(m.contains("pool="), "{m}");
        let m = err(&["/s", "/m", "-o", "pool=lots"]);
        assert!(m.starts_with("bad value pool=lots"), "{m}");
        let m = err(&["/s", "/m", "-o", "allow_other=1"]);
        assert_eq!(m, "mount option allow_other takes no value");
        let m = err(&["/s", "/m", "-o", "pool=1G,pool=2G"]);
        assert_eq!(m, "mount option pool is given more than once");
        let m = err(&["/s", "/m", "-o", "pool"]);
        assert_eq!(m, "mount option pool needs a value (pool=...)");
        let m = err(&["/s"]);
        assert!(m.starts_with("SOURCE and MOUNTPOINT are needed"), "{m}");
        let m = err(&["/s", "/m", "-t", "ext4"]);
        assert!(m.contains("fuse.nitro-uring only"), "{m}");
        for m in [
            err(&["/s", "/m", "-o", "pool=8G,frobnicate"]),
            err(&["/s", "/m", "-o", "cache_mode=sometimes"]),
        ] {
            assert_eq!(m.lines().count(), 1, "{m}");
        }
    }

    #[test]
    fn sloppy_turns_unknown_options_into_warnings() {
        let Ok(inv) = parse(args(&["/s", "/m", "-s", "-o", "frobnicate,pool=8G"])) else {
            panic!("sloppy parse failed")
        };
        assert_eq!(inv.warnings.len(), 1);
    }
}
