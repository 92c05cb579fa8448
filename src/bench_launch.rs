//! `nitro-uring bench ARGS` runs `nitro-uring-bench ARGS`, the program next to this one.
//!
//! Why a second program: the benchmark mounts in-process, so it needs this library, and this
//! binary lives in the library's package; Cargo refuses the package cycle a dependency on the
//! benchmark would make. As its own package (`bench/`) the benchmark also keeps its progress bars,
//! histograms and null filesystem out of the daemon. This module only finds it and `exec`s it, so
//! Ctrl+C and the exit status are the benchmark's own, exactly as when it ran in this process.
//!
//! Why it may build it first: `cargo run` builds only the binary it runs, so on a fresh checkout
//! `cargo run --release -- bench` would find no benchmark, and after a change to the library it
//! would run a stale one and measure old code. When Cargo started this program for this package,
//! `cargo build -p nitro-uring-bench` with the same profile and target directory runs first (a
//! no-op when it is up to date).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow};

const BENCH_BIN: &str = "nitro-uring-bench";
const BENCH_PACKAGE: &str = "nitro-uring-bench";

/// Replaces this process with the benchmark, passing `-v` × `verbose`, `-q` and `args`. Returns
/// only on failure.
pub fn exec(verbose: u8, quiet: bool, args: Vec<OsString>) -> Result<()> {
    let me = std::env::current_exe().context("locating the nitro-uring executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", me.display()))?;
    let bench = dir.join(BENCH_BIN);
    if let Some(cargo) = started_by_cargo() {
        build_with_cargo(&cargo, dir, bench.exists());
    }
    if !bench.exists() {
        return Err(anyhow!(
            "{} not found next to {}: build it with `cargo build --release --workspace`",
            BENCH_BIN,
            me.display()
        ));
    }
    let mut cmd = Command::new(&bench);
    cmd.args(std::iter::repeat_n("-v", usize::from(verbose)));
    if quiet {
        cmd.arg("-q");
    }
    let err = cmd.args(args).exec();
    Err(anyhow!("running {}: {err}", bench.display()))
}

/// The `cargo` that ran this program for this package (`cargo run`, or a test of this package),
/// with the package's manifest.
fn started_by_cargo() -> Option<(PathBuf, PathBuf)> {
    if std::env::var_os("CARGO_PKG_NAME")? != env!("CARGO_PKG_NAME") {
        return None;
    }
    let cargo = PathBuf::from(std::env::var_os("CARGO")?);
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    manifest.is_file().then_some((cargo, manifest))
}

/// Builds the benchmark into `dir` (this executable's directory), quietly when it is already there
/// (then it only refreshes it). A failed build is reported; the caller then runs what there is.
fn build_with_cargo((cargo, manifest): &(PathBuf, PathBuf), dir: &Path, present: bool) {
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--package", BENCH_PACKAGE, "--bin", BENCH_BIN])
        .arg("--manifest-path")
        .arg(manifest);
    cmd.args(profile_args(dir));
    cmd.args(target_args(dir));
    if present {
        cmd.arg("--quiet");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("nitro-uring: building {BENCH_BIN} failed ({s})"),
        Err(e) => eprintln!("nitro-uring: could not run {}: {e}", cargo.display()),
    }
}

/// Cargo's profile from the name of the directory it put this executable in.
fn profile_args(dir: &Path) -> Vec<OsString> {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => Vec::new(),
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
    }
}

/// `--target-dir` (and `--target` for a cross build's `TARGET_DIR/TRIPLE/PROFILE`) so that the
/// build lands next to this executable; Cargo marks its target directory with `CACHEDIR.TAG`.
fn target_args(dir: &Path) -> Vec<OsString> {
    let Some(up) = dir.parent() else {
        return Vec::new();
    };
    if up.join("CACHEDIR.TAG").is_file() {
        return vec!["--target-dir".into(), up.into()];
    }
    match (up.parent(), up.file_name()) {
        (Some(root), Some(triple)) if root.join("CACHEDIR.TAG").is_file() => vec![
            "--target-dir".into(),
            root.into(),
            "--target".into(),
            triple.into(),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_from_directory() {
        assert!(profile_args(Path::new("/t/target/debug")).is_empty());
        assert_eq!(
            profile_args(Path::new("/t/target/release")),
            vec![OsString::from("--release")]
        );
        assert_eq!(
            profile_args(Path::new("/t/target/fast")),
            vec![OsString::from("--profile"), OsString::from("fast")]
        );
    }

    #[test]
    fn target_dir_from_cachedir_tag() -> std::io::Result<()> {
        let t = std::env::temp_dir().join(format!("nitro-launch-{}", std::process::id()));
        let plain = t.join("target/release");
        let cross = t.join("target/x86_64-unknown-linux-gnu/release");
        std::fs::create_dir_all(&plain)?;
        std::fs::create_dir_all(&cross)?;
        std::fs::write(
            t.join("target/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )?;
        let root = OsString::from(t.join("target"));
        assert_eq!(
            target_args(&plain),
            vec!["--target-dir".into(), root.clone()]
        );
        assert_eq!(
            target_args(&cross),
            vec![
                "--target-dir".into(),
                root,
                "--target".into(),
                OsString::from("x86_64-unknown-linux-gnu")
            ]
        );
        assert!(target_args(&t.join("elsewhere/bin")).is_empty());
        std::fs::remove_dir_all(&t)
    }
}
