//! Metadata through a real mount: stat/readdir/readlink/xattr equality with the source, inode
//! numbers that follow the source's (st_dev, st_ino) (hardlinks share one), and EROFS for every
//! write-type operation.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A source tree with every kind of entry the mirror shows.
fn build_tree(src: &Path) -> bool {
    let w = |rel: &str, seed: u64, len: usize, mode: u32| {
        let p = src.join(rel);
        write_file(&p, &pattern(seed, len));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("file_644", 1, 1000, 0o644);
    w("file_600", 2, 70_000, 0o600);
    w("exec_755", 3, 5, 0o755);
    w("ro_400", 4, 4096, 0o400);
    w("setgid_2755", 5, 10, 0o2755);
    w("empty", 6, 0, 0o644);
    w("name with spaces & ünïcode", 7, 321, 0o640);
    fs::create_dir(src.join("sub")).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    w("sub/nested.txt", 8, 12_345, 0o644);
    fs::create_dir(src.join("sub/deeper")).unwrap();
    w("sub/deeper/x.bin", 9, 200_000, 0o444);
    fs::create_dir(src.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("file_644", src.join("link_rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.join("link_abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", src.join("link_dangling")).unwrap();
    std::os::unix::fs::symlink("sub", src.join("link_dir")).unwrap();
    std::os::unix::fs::symlink("../file_644", src.join("sub/link_up")).unwrap();
    w("hard_a", 10, 150_000, 0o644);
    fs::hard_link(src.join("hard_a"), src.join("hard_b")).unwrap();
    fs::hard_link(src.join("hard_a"), src.join("sub/hard_c")).unwrap();
    // distinctive mtimes, with nanoseconds
    set_mtime(&src.join("file_644"), 1_600_000_000, 123_456_789);
    set_mtime(&src.join("sub/deeper/x.bin"), 1_234_567_890, 987_654_321);
    set_mtime(&src.join("link_rel"), 1_500_000_000, 5);
    set_mtime(&src.join("emptydir"), 1_400_000_000, 42);
    // an extended attribute (if the filesystem under the temp dir supports user xattrs)
    let rc = unsafe {
        libc::lsetxattr(
            cpath(&src.join("file_644")).as_ptr(),
            c"user.nitro_test".as_ptr(),
            b"hello xattr".as_ptr().cast(),
            11,
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "setxattr on the source: {e}"
        );
        eprintln!("note: the temp filesystem has no user xattrs; xattr mirroring not checked");
        return false;
    }
    true
}

/// Every path under `root`, relative, depth first (without following symlinks).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

/// Name -> d_type kind from readdir.
fn listing(dir: &Path) -> BTreeMap<String, &'static str> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let k = if t.is_dir() {
                "dir"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_file() {
                "file"
            } else {
                "other"
            };
            (e.file_name().to_string_lossy().into_owned(), k)
        })
        .collect()
}

#[test]
fn stat_readdir_symlinks_hardlinks_match_source() {
    let dirs = Dirs::new();
    let has_xattr = build_tree(&dirs.src);
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);

    // the mount itself is listed as documented
    let e = mounts_at(&dirs.mnt);
    assert_eq!(e.len(), 1, "mountinfo entries at the mountpoint: {e:?}");
    assert_eq!(e[0].fstype, "fuse.nitro-uring");
    assert_eq!(e[0].source, format!("nitro-uring:{}", dirs.src.display()));

    // the root directory: mode/nlink/size as the source's
    let (rs, rm) = (
        fs::metadata(&dirs.src).unwrap(),
        fs::metadata(&dirs.mnt).unwrap(),
    );
    assert_eq!(rm.mode(), rs.mode(), "root dir st_mode");
    assert_eq!(rm.nlink(), rs.nlink(), "root dir st_nlink");

    let mut src_id_to_mnt_ino: HashMap<(u64, u64), (u64, PathBuf)> = HashMap::new();
    let mut mnt_ino_to_src_id: HashMap<u64, ((u64, u64), PathBuf)> = HashMap::new();
    let entries = walk(&dirs.src);
    assert!(entries.len() > 15);
    for rel in &entries {
        let s = fs::symlink_metadata(dirs.src.join(rel)).unwrap();
        let mp = dirs.mnt.join(rel);
        let m = fs::symlink_metadata(&mp).unwrap_or_else(|e| panic!("lstat {}: {e}", mp.display()));
        let what = rel.display();
        assert_eq!(m.file_type(), s.file_type(), "{what}: file type");
        assert_eq!(
            m.mode(),
            s.mode(),
            "{what}: st_mode {:o} vs source {:o}",
            m.mode(),
            s.mode()
        );
        assert_eq!(m.len(), s.len(), "{what}: st_size");
        assert_eq!(m.nlink(), s.nlink(), "{what}: st_nlink");
        assert_eq!(m.uid(), s.uid(), "{what}: st_uid");
        assert_eq!(m.gid(), s.gid(), "{what}: st_gid");
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (s.mtime(), s.mtime_nsec()),
            "{what}: st_mtime (sec, nsec)"
        );
        if s.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&mp).unwrap(),
                fs::read_link(dirs.src.join(rel)).unwrap(),
                "{what}: symlink target"
            );
        }
        if s.file_type().is_dir() {
            assert_eq!(
                listing(&mp),
                listing(&dirs.src.join(rel)),
                "{what}/: readdir names and types"
            );
        }
        if s.file_type().is_file() {
            let got = fs::read(&mp).unwrap_or_else(|e| panic!("read {}: {e}", mp.display()));
            assert_bytes_eq(
                &got,
                &fs::read(dirs.src.join(rel)).unwrap(),
                &format!("{what}: contents"),
            );
        }
        // inode numbers: one per source (st_dev, st_ino), and the same for every name of it
        let sid = (s.dev(), s.ino());
        if let Some((ino, other)) = src_id_to_mnt_ino.get(&sid) {
            assert_eq!(
                m.ino(),
                *ino,
                "{what} and {} are hardlinks of one source inode but have different st_ino through the mount",
                other.display()
            );
        } else {
            src_id_to_mnt_ino.insert(sid, (m.ino(), rel.clone()));
        }
        if let Some((other_sid, other)) = mnt_ino_to_src_id.get(&m.ino()) {
            assert_eq!(
                *other_sid,
                sid,
                "{what} and {} are different source inodes but share st_ino {} through the mount",
                other.display(),
                m.ino()
            );
        } else {
            mnt_ino_to_src_id.insert(m.ino(), (sid, rel.clone()));
        }
    }
    assert_eq!(
        listing(&dirs.mnt),
        listing(&dirs.src),
        "root readdir names and types"
    );

    // hardlinks, explicitly
    let a = fs::metadata(dirs.mnt.join("hard_a")).unwrap();
    let b = fs::metadata(dirs.mnt.join("hard_b")).unwrap();
    let c = fs::metadata(dirs.mnt.join("sub/hard_c")).unwrap();
    assert_eq!(
        a.ino(),
        b.ino(),
        "hardlinks hard_a/hard_b: st_ino through the mount"
    );
    assert_eq!(
        a.ino(),
        c.ino(),
        "hardlinks hard_a/sub/hard_c: st_ino through the mount"
    );
    assert_eq!(a.nlink(), 3);
    assert_ne!(
        a.ino(),
        fs::metadata(dirs.mnt.join("file_644")).unwrap().ino()
    );

    // symlinks resolve inside the mirror
    assert_bytes_eq(
        &fs::read(dirs.mnt.join("link_rel")).unwrap(),
        &fs::read(dirs.src.join("file_644")).unwrap(),
        "reading through link_rel",
    );
    assert_bytes_eq(
        &fs::read(dirs.mnt.join("link_dir/nested.txt")).unwrap(),
        &fs::read(dirs.src.join("sub/nested.txt")).unwrap(),
        "reading through link_dir/",
    );
    let e = fs::metadata(dirs.mnt.join("link_dangling")).unwrap_err();
    assert_eq!(
        errno(&e),
        libc::ENOENT,
        "stat through a dangling symlink: {e}"
    );
    let e = fs::symlink_metadata(dirs.mnt.join("no_such_file")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT, "lstat of a missing name: {e}");

    // inode numbers stay the same after the kernel forgets its inodes
    let before: Vec<(PathBuf, u64)> = entries
        .iter()
        .map(|r| {
            (
                r.clone(),
                fs::symlink_metadata(dirs.mnt.join(r)).unwrap().ino(),
            )
        })
        .collect();
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "2") {
        eprintln!(
            "note: cannot drop the kernel's dentry/inode caches ({e}); inode stability checked without it"
        );
    }
    for (r, ino) in before {
        assert_eq!(
            fs::symlink_metadata(dirs.mnt.join(&r)).unwrap().ino(),
            ino,
            "{}: st_ino changed after the kernel dropped its dentries/inodes",
            r.display()
        );
    }

    // xattrs
    if has_xattr {
        let p = cpath(&dirs.mnt.join("file_644"));
        let mut buf = [0u8; 256];
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c"user.nitro_test".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(
            n >= 0,
            "getxattr(user.nitro_test) through the mount: {}",
            io::Error::last_os_error()
        );
        assert_eq!(&buf[..n as usize], b"hello xattr", "getxattr value");
        let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(
            n >= 0,
            "listxattr through the mount: {}",
            io::Error::last_os_error()
        );
        let names: BTreeSet<&[u8]> = buf[..n as usize]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .collect();
        assert!(
            names.contains(&b"user.nitro_test"[..]),
            "listxattr: {names:?}"
        );
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c"user.absent".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA),
            "getxattr of a missing name"
        );
    }

    // statfs and access(R_OK)
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(cpath(&dirs.mnt).as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "statvfs on the mount: {}",
        io::Error::last_os_error()
    );
    assert_ne!(
        st.f_flag & libc::ST_RDONLY,
        0,
        "statvfs: the mount should be ST_RDONLY"
    );
    let rc = unsafe { libc::access(cpath(&dirs.mnt.join("file_644")).as_ptr(), libc::R_OK) };
    assert_eq!(rc, 0, "access(R_OK): {}", io::Error::last_os_error());
}

#[track_caller]
fn expect_erofs<T: std::fmt::Debug>(what: &str, r: io::Result<T>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) on a read-only mount, expected EROFS"),
        Err(e) => assert_eq!(
            errno(&e),
            libc::EROFS,
            "{what}: expected EROFS, got {}",
            errno_name(errno(&e))
        ),
    }
}

fn rc(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[test]
fn every_write_type_op_fails_with_erofs() {
    let dirs = Dirs::new();
    let _ = build_tree(&dirs.src);
    let before = walk(&dirs.src);
    let file_before = fs::read(dirs.src.join("file_644")).unwrap();
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);
    let m = |r: &str| dirs.mnt.join(r);

    expect_erofs(
        "create (O_CREAT|O_EXCL)",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m("new_file")),
    );
    expect_erofs("create (O_CREAT, O_RDONLY)", {
        let p = cpath(&m("new_file2"));
        rc(unsafe { libc::open(p.as_ptr(), libc::O_CREAT | libc::O_RDONLY, 0o644) })
    });
    expect_erofs(
        "open O_WRONLY",
        OpenOptions::new().write(true).open(m("file_644")),
    );
    expect_erofs(
        "open O_RDWR",
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(m("file_644")),
    );
    expect_erofs(
        "open O_WRONLY|O_TRUNC",
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m("file_644")),
    );
    expect_erofs(
        "open O_APPEND",
        OpenOptions::new().append(true).open(m("file_644")),
    );
    expect_erofs("open O_RDONLY|O_TRUNC", {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(m("file_644"))
    });
    expect_erofs("mkdir", fs::create_dir(m("new_dir")));
    expect_erofs("mkdir in subdir", fs::create_dir(m("sub/new_dir")));
    expect_erofs("unlink", fs::remove_file(m("file_644")));
    expect_erofs("unlink symlink", fs::remove_file(m("link_rel")));
    expect_erofs("rmdir", fs::remove_dir(m("emptydir")));
    expect_erofs("rename", fs::rename(m("file_644"), m("file_644.renamed")));
    expect_erofs(
        "rename into subdir",
        fs::rename(m("file_600"), m("sub/file_600")),
    );
    expect_erofs(
        "chmod",
        fs::set_permissions(m("file_644"), fs::Permissions::from_mode(0o600)),
    );
    expect_erofs(
        "chown",
        rc(unsafe { libc::chown(cpath(&m("file_644")).as_ptr(), 1, 1) }),
    );
    expect_erofs(
        "truncate",
        rc(unsafe { libc::truncate(cpath(&m("file_644")).as_ptr(), 10) }),
    );
    expect_erofs("utimensat (setattr of times)", {
        rc(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(&m("file_644")).as_ptr(),
                std::ptr::null(),
                0,
            )
        })
    });
    expect_erofs(
        "symlink",
        std::os::unix::fs::symlink("file_644", m("new_link")),
    );
    expect_erofs("link", fs::hard_link(m("file_644"), m("new_hardlink")));
    expect_erofs(
        "mknod (fifo)",
        rc(unsafe { libc::mkfifo(cpath(&m("new_fifo")).as_ptr(), 0o644) }),
    );
    expect_erofs("setxattr", {
        rc(unsafe {
            libc::lsetxattr(
                cpath(&m("file_644")).as_ptr(),
                c"user.x".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            )
        })
    });
    expect_erofs("removexattr", {
        rc(unsafe {
            libc::lremovexattr(cpath(&m("file_644")).as_ptr(), c"user.nitro_test".as_ptr())
        })
    });
    expect_erofs(
        "access(W_OK)",
        rc(unsafe { libc::access(cpath(&m("file_644")).as_ptr(), libc::W_OK) }),
    );

    // and nothing changed in the source
    assert_eq!(walk(&dirs.src), before, "the source tree changed");
    assert_eq!(
        fs::read(dirs.src.join("file_644")).unwrap(),
        file_before,
        "file_644 changed in the source"
    );
    assert_eq!(
        fs::metadata(dirs.src.join("file_644")).unwrap().mode() & 0o7777,
        0o644
    );
    // and the mount still reads
    assert_eq!(fs::read(m("file_644")).unwrap(), file_before);
    let _ = File::open(m("file_644")).unwrap();
}

/// A directory far larger than one readdir reply (so listing takes many requests with
/// offsets), with 255-byte names and a name that is not UTF-8: every entry appears once, with
/// its type, and every file reads back.
#[test]
fn large_directory_listing_is_complete() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dirs = Dirs::new();
    let big = dirs.src.join("big");
    fs::create_dir(&big).unwrap();
    let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
    for i in 0..2000u64 {
        let name = if i % 10 == 0 {
            // 255 bytes, the longest a name may be
            let mut n = format!("long_{i:05}_").into_bytes();
            n.resize(255, b'x');
            n
        } else {
            format!("entry_{i:05}.bin").into_bytes()
        };
        let p = big.join(OsStr::from_bytes(&name));
        if i % 100 == 7 {
            fs::create_dir(&p).unwrap();
        } else {
            write_file(&p, &pattern(i, (i % 5) as usize * 100));
        }
        names.insert(name);
    }
    let odd = b"caf\xe9 \xff.bin".to_vec(); // not UTF-8
    write_file(&big.join(OsStr::from_bytes(&odd)), b"odd name");
    names.insert(odd.clone());

    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);
    let mbig = dirs.mnt.join("big");
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for e in fs::read_dir(&mbig).unwrap_or_else(|e| panic!("readdir big/: {e}")) {
        let e = e.unwrap();
        let name = e.file_name().as_bytes().to_vec();
        let is_dir = e.file_type().unwrap().is_dir();
        assert_eq!(
            is_dir,
            big.join(e.file_name()).is_dir(),
            "d_type of {:?}",
            e.file_name()
        );
        seen.push(name);
    }
    let seen_set: BTreeSet<Vec<u8>> = seen.iter().cloned().collect();
    assert_eq!(
        seen.len(),
        seen_set.len(),
        "readdir returned duplicate entries"
    );
    let missing: Vec<String> = names
        .difference(&seen_set)
        .take(5)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let extra: Vec<String> = seen_set
        .difference(&names)
        .take(5)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "readdir of a 2001-entry directory: {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?})",
        names.difference(&seen_set).count(),
        seen_set.difference(&names).count()
    );
    assert_eq!(
        fs::read(mbig.join(OsStr::from_bytes(&odd))).unwrap(),
        b"odd name",
        "reading the non-UTF-8 name"
    );
    let mut long = b"long_01990_".to_vec();
    long.resize(255, b'x');
    assert_eq!(
        fs::read(mbig.join(OsStr::from_bytes(&long))).unwrap(),
        pattern(1990, 0),
        "reading a 255-byte name"
    );
    assert_eq!(
        fs::read(mbig.join("entry_01234.bin")).unwrap(),
        pattern(1234, 400)
    );
}
