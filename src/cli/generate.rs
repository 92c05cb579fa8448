//! Shell completions (clap_complete) and man pages (clap_mangen), both generated from the one clap
//! definition in `main.rs`, so they never drift from the real flags.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

const BIN: &str = "nitro-uring";

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    write_stdout(&out)
}

/// `man`: nitro-uring.1 on stdout; `man --dir D`: every page into D.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let cmd = crate::Cli::command();
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the man page")?;
            out.extend_from_slice(extra_sections().as_bytes());
            write_stdout(&out)
        }
        Some(dir) => {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("--dir {} is not a directory", dir.display()),
                Err(e) => bail!("--dir {}: {}", dir.display(), super::plain(&e)),
            }
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))?;
            // The main page gets the operating recipes the per-command pages do not need.
            let main = dir.join(format!("{BIN}.1"));
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&main)
                .with_context(|| format!("opening {}", main.display()))?;
            f.write_all(extra_sections().as_bytes())
                .with_context(|| format!("writing {}", main.display()))?;
            let mut pages: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(BIN) && n.ends_with(".1"))
                .collect();
            pages.sort();
            println!("wrote {} man pages into {}", pages.len(), dir.display());
            Ok(())
        }
    }
}

/// Sections clap does not know about: fstab, systemd, files. Plain roff, escaped by hand.
fn extra_sections() -> String {
    let mut s = String::new();
    let mut section = |title: &str, paras: &[&str]| {
        s.push_str(&format!(".SH {title}\n"));
        for p in paras {
            if p.starts_with("$ ") {
                let code: Vec<&str> = p.lines().map(|l| l.trim_start_matches("$ ")).collect();
                s.push_str(".PP\n.nf\n");
                s.push_str(&roff_escape(&code.join("\n")));
                s.push_str("\n.fi\n");
            } else {
                s.push_str(".PP\n");
                s.push_str(&roff_escape(p));
                s.push('\n');
            }
        }
    };
    section(
        "FSTAB",
        &[
            "With the helper installed (nitro-uring install-helper, or ln -s $(command -v nitro-uring) /sbin/mount.fuse.nitro-uring), an /etc/fstab line mounts at boot or with mount(8):",
            "$ /data/models  /mnt/models  fuse.nitro-uring  pool=8G,allow_other,_netdev  0 0",
            "Options: pool=, chunk=, readahead=, threads=, cache_mode=, compress=, allow_other, lock (the mount flags without the dashes), and log=FILE for the daemon's log (default: syslog). Generic options (defaults, rw, ro, auto, noauto, nofail, _netdev, user, x-*) are ignored; any other option is an error. The daemon detaches once the mount answers; umount(8) unmounts it and the daemon exits.",
        ],
    );
    section(
        "SYSTEMD",
        &[
            "nitro-uring systemd-unit SOURCE MOUNTPOINT [MOUNT FLAGS] prints a Type=notify service: the daemon sends READY=1 once the mount answers.",
            "$ nitro-uring systemd-unit /data/models /mnt/models --pool 8G > /etc/systemd/system/nitro-uring-mnt-models.service\n$ systemctl daemon-reload && systemctl enable --now nitro-uring-mnt-models.service",
        ],
    );
    section(
        "TUNING",
        &[
            "nitro-uring tune --check lists the kernel settings that matter (fs.fuse.max_pages_limit, read_ahead_kb of a mount, FUSE passthrough, io_uring, transparent huge pages, RLIMIT_MEMLOCK, vm.swappiness); tune --apply writes /etc/sysctl.d/60-nitro-uring.conf and applies it.",
        ],
    );
    section(
        "SEE ALSO",
        &["mount(8), fstab(5), mount.fuse3(8), systemd.service(5), sysctl.d(5)"],
    );
    s
}

fn roff_escape(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// stdout closed early (`| head`) is not an error worth a message.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
}
