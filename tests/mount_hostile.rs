//! A mount serving other users (`--allow-other`, daemon as root) against a hostile or fast-changing
//! source: symlink and parent-directory swaps must never expose what the caller could not read
//! itself, a held handle keeps reading the version it opened (or fails), inode numbers of deleted
//! files never alias newer files, an open that raced a write converges to the source's bytes, a
//! truncation under an open handle does not break the engine, and a daemon limited to 1024 fds
//! still serves 1000 open files.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
/// A little more than the mount's attribute/entry TTL (1 s).
const PAST_TTL: Duration = Duration::from_millis(1100);
const WATCHDOG: Duration = Duration::from_secs(240);

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

fn lchown_nobody(p: &Path) {
    std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
}

/// `Dirs` that `nobody` can use: the temp root and the mountpoint traversable, the source
/// writable by everyone.
fn world_dirs() -> Dirs {
    let d = Dirs::new();
    chmod(d.root.path(), 0o755);
    chmod(&d.src, 0o777);
    chmod(&d.mnt, 0o755);
    d
}

/// A root-only file outside any source: a 0755 temp dir holding `secret` (0600, root) with
/// distinctive content.
struct Secret {
    _dir: tempfile::TempDir,
    path: PathBuf,
    text: String,
}

fn secret() -> Secret {
    let dir = tempfile::Builder::new()
        .prefix("nitro-secret-")
        .tempdir()
        .unwrap();
    chmod(dir.path(), 0o755);
    let path = dir.path().canonicalize().unwrap().join("secret");
    let text = format!(
        "ROOT-ONLY-SECRET-{}-{}",
        std::process::id(),
        Rng::new(7).next_u64()
    );
    write_file(&path, text.as_bytes());
    chmod(&path, 0o600);
    Secret {
        _dir: dir,
        path,
        text,
    }
}

fn nobody_cmd(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Wait for a child's output, at most `limit` (then SIGKILL it and panic).
fn output_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: wait: {e}")),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what}: did not finish within {limit:?} (hung?)")
        }
    }
}

/// Run `sh -c script` as nobody (no supplementary groups), bounded.
fn as_nobody(script: &str) -> Output {
    let child = nobody_cmd(script)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sh as nobody: {e}"));
    output_within(
        child,
        Duration::from_secs(30),
        &format!("as nobody: {script}"),
    )
}

fn text(o: &Output) -> String {
    format!(
        "status {}; stdout {:?}; stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn leaks(o: &Output, secret: &str) -> bool {
    String::from_utf8_lossy(&o.stdout).contains(secret)
        || String::from_utf8_lossy(&o.stderr).contains(secret)
}

fn mount(dirs: &Dirs, args: &[&str]) -> Daemon {
    Daemon::start_with(&dirs.src, &dirs.mnt, args, WATCHDOG, |_| {})
}

// ---------------------------------------------------------------------------------------------
// 1. symlink swap

/// nobody replaces a file it owns in the source by a symlink to a root-only file outside the
/// source, right after the mount looked the file up: the root daemon must not follow the symlink
/// and hand the secret's bytes to nobody (reported: the secret printed 3 of 3 times).
#[test]
fn symlink_swap_never_reveals_root_only_file() {
    let dirs = world_dirs();
    let sec = secret();
    let _d = mount(&dirs, &["--pool", "64M", "--allow-other"]);
    let (src, mnt, target) = (
        dirs.src.display().to_string(),
        dirs.mnt.display().to_string(),
        sec.path.display().to_string(),
    );

    // the set-up means something: root reads the secret, nobody cannot
    assert_eq!(fs::read_to_string(&sec.path).unwrap(), sec.text);
    let direct = as_nobody(&format!("cat '{target}'"));
    assert!(
        !leaks(&direct, &sec.text) && !direct.status.success(),
        "set-up: nobody can read the secret directly: {}",
        text(&direct)
    );

    let mut leaked = Vec::new();
    let rounds = 5;
    for r in 0..rounds {
        let out = as_nobody(&format!(
            "cd '{src}' || exit 9
             echo x{r} > a
             stat '{mnt}/a' > /dev/null
             rm a
             ln -s '{target}' a
             cat '{mnt}/a'
             exit 0"
        ));
        if leaks(&out, &sec.text) {
            leaked.push(format!("round {r}: {}", text(&out)));
        }
        let _ = fs::remove_file(dirs.src.join("a"));
    }

    // a plain cat after the swap, in a new process, once the TTL has passed
    let out = as_nobody(&format!(
        "cd '{src}' || exit 9
         echo y > a
         stat '{mnt}/a' > /dev/null
         rm a
         ln -s '{target}' a"
    ));
    assert!(out.status.success(), "swap as nobody: {}", text(&out));
    for (when, pause) in [("at once", Duration::ZERO), ("after the TTL", PAST_TTL)] {
        thread::sleep(pause);
        let out = as_nobody(&format!("cat '{mnt}/a'"));
        if leaks(&out, &sec.text) {
            leaked.push(format!("plain cat {when} after the swap: {}", text(&out)));
        }
    }
    assert!(
        leaked.is_empty(),
        "nobody read a root-only file through the mount by swapping in a symlink ({} times; \
         {rounds} swap rounds + 2 plain cats):\n{}",
        leaked.len(),
        leaked.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. parent directory swap

/// nobody sits in m/p/sub (its cwd) while s/p is replaced by a symlink to a root-only (0700)
/// directory with the same layout: reads relative to the cwd must not reach that directory.
#[test]
fn parent_dir_swap_under_held_cwd_never_reveals_root_only_dir() {
    let dirs = world_dirs();
    // s/p/sub/file, owned by nobody, world readable
    let p = dirs.src.join("p");
    fs::create_dir_all(p.join("sub")).unwrap();
    write_file(&p.join("sub/file"), b"harmless-file\n");
    for q in [p.clone(), p.join("sub"), p.join("sub/file")] {
        lchown_nobody(&q);
    }
    chmod(&p.join("sub/file"), 0o644);

    // a root-only directory with the same layout, outside the source
    let sec_root = tempfile::Builder::new()
        .prefix("nitro-secret-")
        .tempdir()
        .unwrap();
    chmod(sec_root.path(), 0o755);
    let sec_dir = sec_root.path().canonicalize().unwrap().join("secret");
    fs::create_dir_all(sec_dir.join("sub")).unwrap();
    let secret_text = format!("ROOT-ONLY-DIR-SECRET-{}", std::process::id());
    write_file(&sec_dir.join("sub/file"), secret_text.as_bytes());
    chmod(&sec_dir.join("sub/file"), 0o644);
    chmod(&sec_dir.join("sub"), 0o755);
    chmod(&sec_dir, 0o700);

    let _d = mount(&dirs, &["--pool", "64M", "--allow-other"]);
    let (src, mnt) = (
        dirs.src.display().to_string(),
        dirs.mnt.display().to_string(),
    );
    let flag = dirs.root.path().canonicalize().unwrap().join("go");

    let direct = as_nobody(&format!("cat '{}/sub/file'", sec_dir.display()));
    assert!(
        !leaks(&direct, &secret_text),
        "set-up: nobody can read the secret directly: {}",
        text(&direct)
    );

    let shell = nobody_cmd(&format!(
        "cd '{mnt}/p/sub' || exit 9
         cat file
         while [ ! -e '{flag}' ]; do sleep 0.05; done
         echo '--- after swap'
         cat file
         cat ../sub/file
         cat ./file
         ls -la . ..
         exit 0",
        flag = flag.display()
    ))
    .spawn()
    .expect("spawn the nobody shell");
    let pid = shell.id();

    // wait until the shell sits in m/p/sub
    let want_cwd = dirs.mnt.join("p/sub");
    let deadline = Instant::now() + Duration::from_secs(15);
    while fs::read_link(format!("/proc/{pid}/cwd")).ok().as_deref() != Some(want_cwd.as_path()) {
        if Instant::now() > deadline {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = output_within(shell, Duration::from_secs(10), "nobody shell");
            panic!(
                "the nobody shell never reached {}: {}",
                want_cwd.display(),
                text(&out)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }

    let swap = as_nobody(&format!(
        "cd '{src}' && mv p p.old && ln -s '{}' p",
        sec_dir.display()
    ));
    assert!(swap.status.success(), "swap as nobody: {}", text(&swap));
    thread::sleep(Duration::from_millis(1500));
    write_file(&flag, b"");
    let out = output_within(
        shell,
        Duration::from_secs(30),
        "nobody shell after the swap",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("harmless-file\n"),
        "set-up: the nobody shell did not read the harmless file first: {}",
        text(&out)
    );
    assert!(
        !leaks(&out, &secret_text),
        "nobody read a file of a root-only (0700) directory through the mount after swapping \
         its parent for a symlink: {}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. inode-number reuse

fn read_mnt(p: &Path) -> io::Result<Vec<u8>> {
    fs::read(p)
}

/// `echo A > s/a; stat m/a; rm s/a; echo B > s/b.new; mv s/b.new s/b; stat m/b; cat m/a`: the
/// last read must give ENOENT (or a's own bytes), never b's. Returns the failures and how many
/// rounds the source reused a's inode number for b.
fn inode_reuse_rounds(src: &Path, mnt: &Path, rounds: usize) -> (Vec<String>, usize) {
    let mut bad = Vec::new();
    let mut reused = 0;
    for r in 0..rounds {
        let a = format!("file a generation {r}\n");
        let b = format!("file b generation {r}\n");
        write_file(&src.join("a"), a.as_bytes());
        let a_ino = fs::metadata(src.join("a")).unwrap().ino();
        if let Err(e) = fs::metadata(mnt.join("a")) {
            bad.push(format!("round {r}: stat m/a: {e}"));
            continue;
        }
        fs::remove_file(src.join("a")).unwrap();
        write_file(&src.join("b.new"), b.as_bytes());
        fs::rename(src.join("b.new"), src.join("b")).unwrap();
        if fs::metadata(src.join("b")).unwrap().ino() == a_ino {
            reused += 1;
        }
        if let Err(e) = fs::metadata(mnt.join("b")) {
            bad.push(format!("round {r}: stat m/b: {e}"));
        }
        match read_mnt(&mnt.join("a")) {
            Err(e) if errno(&e) == libc::ENOENT => {}
            Ok(got) if got == a.as_bytes() => {}
            Ok(got) => bad.push(format!(
                "round {r}: cat m/a after rm s/a gave {:?}",
                String::from_utf8_lossy(&got)
            )),
            Err(e) => bad.push(format!("round {r}: cat m/a: unexpected error {e}")),
        }
    }
    (bad, reused)
}

/// Files named f0..f31 whose content is `file fK gen G\n` repeated: renamed over, deleted,
/// recreated, while readers read them through the mount. Returns (reads, wrong) where wrong lists
/// reads that got bytes of another file (or garbage).
fn rename_delete_stress(src: &Path, mnt: &Path, dur: Duration) -> (u64, u64, Vec<String>) {
    const N: u64 = 32;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let body = |k: u64, g: u64, len: usize| -> Vec<u8> {
        let line = format!("file f{k} gen {g}\n");
        line.as_bytes().iter().copied().cycle().take(len).collect()
    };
    for k in 0..N {
        write_file(&src.join(format!("f{k}")), &body(k, 0, 100));
    }
    let mut readers = Vec::new();
    for t in 0..2u64 {
        let (stop, reads, errors, wrong, mnt) = (
            stop.clone(),
            reads.clone(),
            errors.clone(),
            wrong.clone(),
            mnt.to_path_buf(),
        );
        readers.push(thread::spawn(move || {
            let mut rng = Rng::new(100 + t);
            while !stop.load(Ordering::Relaxed) {
                let k = rng.below(N);
                let got = match fs::read(mnt.join(format!("f{k}"))) {
                    Ok(g) => g,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                reads.fetch_add(1, Ordering::Relaxed);
                let prefix = format!("file f{k} gen ");
                let ok = if got.is_empty() {
                    true
                } else if !prefix
                    .as_bytes()
                    .starts_with(&got[..got.len().min(prefix.len())])
                {
                    false
                } else if let Some(nl) = got.iter().position(|&c| c == b'\n') {
                    let line = &got[..=nl];
                    let gen_ok = std::str::from_utf8(&line[prefix.len()..nl])
                        .ok()
                        .and_then(|g| g.parse::<u64>().ok())
                        .is_some();
                    gen_ok && got.iter().zip(line.iter().cycle()).all(|(a, b)| a == b)
                } else {
                    true
                };
                if !ok {
                    let mut w = wrong.lock().unwrap();
                    if w.len() < 10 {
                        let head = String::from_utf8_lossy(&got[..got.len().min(60)]).into_owned();
                        w.push(format!(
                            "open of f{k} read {} bytes: {head:?}...",
                            got.len()
                        ));
                    } else {
                        w.push(String::new());
                    }
                }
            }
        }));
    }
    let mut rng = Rng::new(5);
    let deadline = Instant::now() + dur;
    let mut g = 1;
    while Instant::now() < deadline {
        let k = rng.below(N);
        let name = src.join(format!("f{k}"));
        let len = 1 + rng.below(20_000) as usize;
        match rng.below(3) {
            0 => {
                let tmp = src.join(format!("tmp{k}"));
                write_file(&tmp, &body(k, g, len));
                fs::rename(&tmp, &name).unwrap();
            }
            1 => {
                let _ = fs::remove_file(&name);
            }
            _ => {
                let _ = fs::remove_file(&name);
                write_file(&name, &body(k, g, len));
            }
        }
        g += 1;
        // keep the churn comparable across filesystems (tmpfs would do 30k ops/s)
        thread::sleep(Duration::from_micros(300));
    }
    stop.store(true, Ordering::Relaxed);
    let joined = Instant::now();
    for r in readers {
        r.join().expect("reader thread");
    }
    eprintln!("readers stopped {:?} after the writer", joined.elapsed());
    let w = wrong.lock().unwrap();
    let shown: Vec<String> = w.iter().filter(|s| !s.is_empty()).cloned().collect();
    eprintln!(
        "rename/delete stress: {} writer ops, {} reads, {} failed opens/reads, {} wrong",
        g - 1,
        reads.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        w.len()
    );
    (reads.load(Ordering::Relaxed), w.len() as u64, shown)
}

fn check_inode_reuse(src: &Path, mnt: &Path, what: &str) {
    let (s, m) = (src.to_path_buf(), mnt.to_path_buf());
    let (bad, reused) = within(Duration::from_secs(180), "inode reuse rounds", move || {
        inode_reuse_rounds(&s, &m, 200)
    });
    eprintln!("{what}: the source reused a's inode number for b in {reused} of 200 rounds");
    let (s, m) = (src.join("stress"), mnt.join("stress"));
    fs::create_dir(&s).unwrap();
    let (reads, wrong, shown) = within(
        Duration::from_secs(120),
        "rename/delete stress",
        move || rename_delete_stress(&s, &m, Duration::from_secs(6)),
    );
    assert!(
        bad.is_empty() && wrong == 0,
        "{what}: reads through the mount got another file's bytes. \
         rm a + rename b over: {} of 200 rounds wrong (a's inode number reused {reused} times):\n{}\n\
         rename/delete stress: {wrong} of {reads} opens read another file's bytes:\n{}",
        bad.len(),
        bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n"),
        shown.join("\n")
    );
}

/// On the temp dir's filesystem (ext4 reuses a freed inode number at once).
#[test]
fn inode_number_reuse_never_aliases_another_file_tempdir() {
    let dirs = Dirs::new();
    let _d = mount(&dirs, &["--pool", "64M"]);
    check_inode_reuse(&dirs.src, &dirs.mnt, "temp dir source");
}

/// On a tmpfs source.
#[test]
fn inode_number_reuse_never_aliases_another_file_tmpfs() {
    let dirs = Dirs::new();
    let _t = Tmpfs::mount(&dirs.src);
    let _d = mount(&dirs, &["--pool", "64M"]);
    check_inode_reuse(&dirs.src, &dirs.mnt, "tmpfs source");
}

// ---------------------------------------------------------------------------------------------
// 4. an open racing a write()

/// A 128 MiB file on tmpfs rewritten in one write() while readers open and read it through the
/// mount: afterwards a fresh open must read the source's bytes within a few seconds (reported:
/// still different 35 s later).
#[test]
fn open_racing_a_write_converges_to_source_bytes_tmpfs() {
    const SIZE: usize = 128 << 20;
    let dirs = Dirs::new();
    let _t = Tmpfs::mount(&dirs.src);
    let path = dirs.src.join("big");
    write_file(&path, &pattern(1, SIZE));
    let _d = mount(&dirs, &["--pool", "256M"]);
    let mpath = dirs.mnt.join("big");
    let mut failures = Vec::new();
    for gen_ in 2..=5u64 {
        let new = pattern(gen_, SIZE);
        let stop = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for t in 0..2u64 {
            let (stop, opens, mpath) = (stop.clone(), opens.clone(), mpath.clone());
            readers.push(thread::spawn(move || {
                let mut rng = Rng::new(gen_ * 10 + t);
                let mut buf = vec![0u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(f) = File::open(&mpath) else { continue };
                    opens.fetch_add(1, Ordering::Relaxed);
                    if t == 0 {
                        // whole file, tail first (the writer writes front to back)
                        let bl = buf.len();
                        for i in (0..SIZE / bl).rev() {
                            if f.read_at(&mut buf, (i * bl) as u64).is_err() {
                                break;
                            }
                        }
                    } else {
                        for _ in 0..4 {
                            let off = rng.below((SIZE / buf.len()) as u64) << 20;
                            let _ = f.read_at(&mut buf, off);
                        }
                    }
                }
            }));
        }
        while opens.load(Ordering::Relaxed) < 2 {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(20));
        {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let n = f.write_at(&new, 0).unwrap();
            if n < SIZE {
                f.write_all_at(&new[n..], n as u64).unwrap();
            }
        }
        thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().expect("reader");
        }
        let want = fs::read(&path).unwrap();
        assert_bytes_eq(&want, &new, "set-up: the source after the write");
        let start = Instant::now();
        let mut last = String::new();
        let mut converged = false;
        while start.elapsed() < Duration::from_secs(8) {
            let p = mpath.clone();
            match within(
                Duration::from_secs(30),
                "read through the mount",
                move || fs::read(p),
            ) {
                Ok(got) if got == want => {
                    converged = true;
                    break;
                }
                Ok(got) => last = first_diff(&got, &want),
                Err(e) => last = format!("read error {e}"),
            }
            thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "generation {gen_}: {} racing opens; converged: {converged} after {:?}",
            opens.load(Ordering::Relaxed),
            start.elapsed()
        );
        if !converged {
            failures.push(format!(
                "generation {gen_}: a fresh open 8 s after the write still differs: {last}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. --cache-mode keep with a held handle

fn rewrite_in_place(path: &Path, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(data.len() as u64).unwrap();
    f.write_all_at(data, 0).unwrap();
}

/// A handle held on an old version must not make later opens in keep mode stale (reported: 39 of
/// 40 fresh opens stale).
#[test]
fn keep_mode_held_handle_does_not_make_new_opens_stale() {
    let dirs = Dirs::new();
    let path = dirs.src.join("f");
    write_file(&path, &pattern(50, 256 << 10));
    let ino = fs::metadata(&path).unwrap().ino();
    let _d = mount(
        &dirs,
        &["--pool", "64M", "--chunk", "64KiB", "--cache-mode", "keep"],
    );
    let mpath = dirs.mnt.join("f");
    let mut holder = File::open(&mpath).unwrap();
    let mut first = Vec::new();
    holder.read_to_end(&mut first).unwrap();
    assert_bytes_eq(&first, &pattern(50, 256 << 10), "held handle, first read");
    // the holder keeps reading all along (old bytes or an error are both fine for it)
    let stop = Arc::new(AtomicBool::new(false));
    let holder_thread = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut rng = Rng::new(3);
            let mut buf = vec![0u8; 16 << 10];
            while !stop.load(Ordering::Relaxed) {
                let _ = holder.read_at(&mut buf, rng.below(300_000));
                thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let check = |label: &str, want: &[u8], failures: &mut Vec<String>| {
        thread::sleep(PAST_TTL);
        let mut stale = 0;
        let mut errs = 0;
        let mut example = String::new();
        for _ in 0..40 {
            let p = mpath.clone();
            match within(Duration::from_secs(20), "fresh open", move || fs::read(p)) {
                Ok(got) if got == want => {}
                Ok(got) => {
                    stale += 1;
                    example = first_diff(&got, want);
                }
                Err(e) => {
                    errs += 1;
                    example = e.to_string();
                }
            }
        }
        if stale + errs > 0 {
            failures.push(format!(
                "{label}: {stale} of 40 fresh opens read other bytes, {errs} failed (e.g. {example})"
            ));
        }
    };
    let mut failures = Vec::new();
    for (gen_, len) in [
        (51u64, 256usize << 10),
        (52, 256 << 10),
        (53, 100_000),
        (54, 300_000),
        (55, 300_000),
    ] {
        let data = pattern(gen_, len);
        rewrite_in_place(&path, &data);
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            ino,
            "set-up: same inode"
        );
        check(
            &format!("rewrite to generation {gen_} ({len} bytes) while held"),
            &data,
            &mut failures,
        );
    }
    stop.store(true, Ordering::Relaxed);
    within(Duration::from_secs(30), "holder", move || {
        holder_thread.join().expect("holder thread")
    });
    check(
        "after the holder closed",
        &pattern(55, 300_000),
        &mut failures,
    );
    let data = pattern(56, 200_000);
    rewrite_in_place(&path, &data);
    check("rewrite after the holder closed", &data, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 6. fstat and reads on a held handle

const HELD_ARGS: &[&str] = &["--pool", "64M", "--chunk", "64KiB", "--readahead", "0"];

/// Read the held file from 0 to its end in 64 KiB preads: Ok if exactly `want`.
fn read_held_to_end(f: &File, want: &[u8]) -> Result<(), String> {
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    loop {
        match f.read_at(&mut buf, out.len() as u64) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("pread at {}: {e}", out.len())),
        }
        if out.len() > want.len() + (1 << 20) {
            break;
        }
    }
    if out == want {
        Ok(())
    } else {
        Err(format!("read to the end: {}", first_diff(&out, want)))
    }
}

fn open_held(mnt: &Path, old: &[u8]) -> File {
    let f = File::open(mnt.join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = pread_full(&f, &mut buf, 0).unwrap();
    assert_bytes_eq(&buf[..n], &old[..4096], "held handle before the change");
    f
}

fn check_fstat_and_old_bytes(f: &File, old: &[u8], what: &str) {
    thread::sleep(PAST_TTL); // the kernel's cached attributes have expired: fstat asks the daemon
    let mut failures = Vec::new();
    match f.metadata() {
        Ok(m) if m.len() == old.len() as u64 => {}
        Ok(m) => failures.push(format!(
            "fstat reports size {} (the old file had {})",
            m.len(),
            old.len()
        )),
        Err(e) => failures.push(format!("fstat failed: {e}")),
    }
    let g = f.try_clone().unwrap();
    let want = old.to_vec();
    if let Err(e) = within(Duration::from_secs(30), "read held fd", move || {
        read_held_to_end(&g, &want)
    }) {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "held handle after {what}: {}",
        failures.join("; ")
    );
}

/// After s/f is unlinked, a held handle still fstats to the old size and reads the old bytes.
#[test]
fn held_handle_after_unlink_fstats_and_reads_old_file() {
    let dirs = Dirs::new();
    let old = pattern(61, 300_000);
    write_file(&dirs.src.join("f"), &old);
    let _d = mount(&dirs, HELD_ARGS);
    let f = open_held(&dirs.mnt, &old);
    fs::remove_file(dirs.src.join("f")).unwrap();
    check_fstat_and_old_bytes(&f, &old, "unlink of s/f");
}

/// After a new file is renamed over s/f, a held handle still fstats to the old size and reads
/// the old bytes; a fresh open reads the new file.
#[test]
fn held_handle_after_rename_over_fstats_and_reads_old_file() {
    let dirs = Dirs::new();
    let old = pattern(61, 300_000);
    let new = pattern(62, 123_457);
    write_file(&dirs.src.join("f"), &old);
    let _d = mount(&dirs, HELD_ARGS);
    let f = open_held(&dirs.mnt, &old);
    write_file(&dirs.src.join("f.new"), &new);
    fs::rename(dirs.src.join("f.new"), dirs.src.join("f")).unwrap();
    check_fstat_and_old_bytes(&f, &old, "a rename over s/f");
    let got = read_or_panic(&dirs.mnt.join("f"));
    assert_bytes_eq(&got, &new, "fresh open after the rename");
}

/// After s/f is truncated and extended in place (same inode), reads on a held handle return old
/// bytes or an error, never the new bytes.
#[test]
fn held_handle_after_in_place_truncate_extend_reads_old_bytes_or_eio() {
    let dirs = Dirs::new();
    let old = pattern(61, 300_000);
    let new = pattern(63, 400_000);
    let path = dirs.src.join("f");
    write_file(&path, &old);
    let _d = mount(&dirs, HELD_ARGS);
    let f = open_held(&dirs.mnt, &old);
    {
        let w = OpenOptions::new().write(true).open(&path).unwrap();
        w.set_len(100_000).unwrap();
        w.write_all_at(&new[100_000..], 100_000).unwrap();
    }
    let g = f.try_clone().unwrap();
    let (bad, errs) = within(Duration::from_secs(30), "reads on the held fd", move || {
        let mut bad = Vec::new();
        let mut errs = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        for round in 0..2 {
            if round == 1 {
                thread::sleep(PAST_TTL);
            }
            let mut off = 0usize;
            while off < old.len() {
                match g.read_at(&mut buf, off as u64) {
                    Ok(0) => {
                        errs.push(format!("EOF at {off}"));
                        break;
                    }
                    Ok(n) => {
                        let end = (off + n).min(old.len());
                        if n > old.len() - off || buf[..end - off] != old[off..end] {
                            bad.push(format!(
                                "pass {round}: pread at {off} ({n} bytes): {}",
                                first_diff(&buf[..n], &old[off..end])
                            ));
                        }
                        off += n;
                    }
                    Err(e) => {
                        errs.push(format!("pread at {off}: {e}"));
                        off += buf.len();
                    }
                }
            }
        }
        (bad, errs)
    });
    eprintln!("errors on the held fd (allowed): {errs:?}");
    assert!(
        bad.is_empty(),
        "a held handle read bytes of another version after an in-place truncate+extend:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 7. truncation under an open handle

/// Truncating the source under an open handle and reading past the new end must not break the
/// engine (reported: the fill thread panicked and every uncached read of every file became EIO).
#[test]
fn truncate_under_open_handle_keeps_serving_other_files() {
    let dirs = Dirs::new();
    let old = pattern(71, 3 << 20);
    let other = pattern(72, 2 << 20);
    let path = dirs.src.join("f");
    write_file(&path, &old);
    write_file(&dirs.src.join("other"), &other);
    let mut d = mount(&dirs, &["--pool", "64M", "--readahead", "0"]);
    let f = File::open(dirs.mnt.join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = pread_full(&f, &mut buf, 0).unwrap();
    assert_bytes_eq(&buf[..n], &old[..4096], "pread at 0 before the truncation");

    let new_len = (1 << 20) + 100;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(new_len as u64)
        .unwrap();
    let mut failures = Vec::new();
    for off in [1usize << 20, 2 << 20] {
        let g = f.try_clone().unwrap();
        let r = within(
            Duration::from_secs(20),
            "pread on the held fd past the new end",
            move || {
                let mut buf = vec![0u8; 4096];
                g.read_at(&mut buf, off as u64).map(|n| buf[..n].to_vec())
            },
        );
        match r {
            Ok(got) if got[..] == old[off..off + got.len()] && !got.is_empty() => {}
            Ok(got) => failures.push(format!(
                "held fd pread(4096 at {off}) after the truncation: {}",
                first_diff(&got, &old[off..off + 4096])
            )),
            Err(e) => eprintln!("held fd pread at {off} after the truncation: {e} (allowed)"),
        }
    }
    let p = dirs.mnt.join("other");
    match within(
        Duration::from_secs(20),
        "read an uncached file",
        move || fs::read(p),
    ) {
        Ok(got) if got == other => {}
        Ok(got) => failures.push(format!(
            "uncached other file afterwards: {}",
            first_diff(&got, &other)
        )),
        Err(e) => failures.push(format!("uncached other file afterwards: read failed: {e}")),
    }
    thread::sleep(PAST_TTL);
    let p = dirs.mnt.join("f");
    match within(Duration::from_secs(20), "fresh open of f", move || {
        fs::read(p)
    }) {
        Ok(got) if got[..] == old[..new_len] => {}
        Ok(got) => failures.push(format!(
            "fresh open of f after the truncation: {}",
            first_diff(&got, &old[..new_len])
        )),
        Err(e) => failures.push(format!(
            "fresh open of f after the truncation: read failed: {e}"
        )),
    }
    drop(f);
    let alive = d.is_alive();
    let err = d.stderr();
    if !alive || err.contains("panicked") {
        failures.push(format!(
            "daemon {}; stderr:\n{err}",
            if alive { "logged a panic" } else { "died" }
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 9. 1000 files held open by a daemon limited to 1024 descriptors

fn raise_own_nofile(min: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    assert!(
        r.rlim_max >= min,
        "set-up: hard RLIMIT_NOFILE {} < {min}",
        r.rlim_max
    );
    if r.rlim_cur < min {
        r.rlim_cur = r.rlim_max;
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) },
            0,
            "setrlimit: {}",
            io::Error::last_os_error()
        );
    }
}

/// Reported: EMFILE after 507 open files.
#[test]
fn thousand_files_held_open_with_daemon_nofile_1024() {
    const FILES: usize = 1000;
    raise_own_nofile(4 * FILES as u64);
    let dirs = Dirs::new();
    let content = |i: usize| format!("held-open file {i:04}\n").into_bytes();
    for i in 0..FILES {
        write_file(&dirs.src.join(format!("h{i:04}")), &content(i));
    }
    let _d = Daemon::start_with(&dirs.src, &dirs.mnt, &["--pool", "64M"], WATCHDOG, |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let r = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 1024,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let mnt = dirs.mnt.clone();
    let (opened, first_err, bad_reads) = within(
        Duration::from_secs(120),
        "open and read 1000 files",
        move || {
            let mut held = Vec::new();
            let mut first_err = None;
            for i in 0..FILES {
                match File::open(mnt.join(format!("h{i:04}"))) {
                    Ok(f) => held.push((i, f)),
                    Err(e) => {
                        if first_err.is_none() {
                            first_err = Some(format!("open #{} (h{i:04}): {e}", held.len() + 1));
                        }
                    }
                }
            }
            let mut bad = Vec::new();
            for (i, f) in &held {
                let mut b = [0u8; 64];
                match f.read_at(&mut b, 0) {
                    Ok(n) if b[..n] == content(*i)[..] => {}
                    Ok(n) => bad.push(format!(
                        "h{i:04}: read {:?}",
                        String::from_utf8_lossy(&b[..n])
                    )),
                    Err(e) => bad.push(format!("h{i:04}: read: {e}")),
                }
            }
            (held.len(), first_err, bad)
        },
    );
    assert!(
        opened == FILES && bad_reads.is_empty(),
        "{opened} of {FILES} files opened (first failure: {}); {} reads failed{}",
        first_err.unwrap_or_default(),
        bad_reads.len(),
        bad_reads
            .first()
            .map(|s| format!(", e.g. {s}"))
            .unwrap_or_default()
    );
    let _ = io::stderr().flush();
}
