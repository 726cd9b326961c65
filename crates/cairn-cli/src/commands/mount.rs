//! `cairn mount`: the repository as a read-only filesystem.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::GlobalArgs;
use crate::commands::{location, open_with_password};
use crate::util::{parse_size64, read_password};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Empty directory to mount on
    pub mountpoint: PathBuf,
    /// Only snapshots of this service (repeatable)
    #[arg(long = "service")]
    pub services: Vec<String>,
    /// Only snapshots with this tag (repeatable: all must match)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots from this host (repeatable)
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Memory for decoded chunks (e.g. 256MiB)
    #[arg(long, default_value = "256MiB", value_parser = parse_size64)]
    pub cache_size: u64,
    /// Re-list snapshots every this many seconds (they are also re-listed when
    /// a directory of the mount's top levels is read)
    #[arg(long, value_name = "SECONDS")]
    pub refresh: Option<u64>,
    /// Threads answering the kernel
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Chunks fetched ahead of a sequential reader
    #[arg(long, default_value_t = 4)]
    pub readahead: usize,
    /// Let other users read the mount (checked against the stored modes)
    #[arg(long)]
    pub allow_other: bool,
    /// Stay in the foreground until unmounted or interrupted (the default)
    #[arg(long, conflicts_with = "daemon")]
    pub foreground: bool,
    /// Return once mounted and serve from a background process
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: where the background process writes its messages
    #[arg(long, requires = "daemon")]
    pub log: Option<PathBuf>,
}

pub fn mount_cmd(g: &GlobalArgs, a: MountArgs) -> Result<i32> {
    if a.daemon {
        return daemonize(g, &a);
    }
    let repo = crate::commands::open_indexed(g)?;
    let opts = cairn_mount::MountOptions {
        filter: cairn_mount::Filter {
            services: a.services.clone(),
            tags: a.tags.clone(),
            hosts: a.hosts.clone(),
        },
        cache_bytes: a.cache_size as usize,
        threads: a.threads.max(1),
        prefetch_threads: 4,
        readahead_chunks: a.readahead,
        refresh: a.refresh.map(Duration::from_secs),
        allow_other: a.allow_other,
    };
    let quiet = g.quiet;
    let ended = cairn_mount::mount(repo, &a.mountpoint, &opts, |p| {
        if !quiet {
            println!(
                "mounted at {} (read-only); stop with Ctrl-C or `umount {}`",
                p.display(),
                p.display()
            );
        }
    })?;
    if !quiet {
        match ended {
            cairn_mount::Ended::Signal(_) => println!("unmounted"),
            cairn_mount::Ended::Unmounted => println!("unmounted from outside"),
        }
    }
    Ok(0)
}

/// Check what can be checked here (repository, password, mountpoint), then
/// start a background `cairn mount` and return once its mount is in place.
fn daemonize(g: &GlobalArgs, a: &MountArgs) -> Result<i32> {
    let repo_loc = location(g)?;
    let password = read_password(g, false)?;
    // Fail here, on the terminal, for a missing repository or wrong password.
    open_with_password(g, &password)?;
    let path = cairn_mount::mountpoint::absolute(&a.mountpoint)?;

    // The log is created private and never through a symlink: a default
    // under the state directory (0700), not a guessable name in /tmp where
    // another user could plant a link to a file root owns.
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut open = std::fs::OpenOptions::new();
    open.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    let log = match &a.log {
        Some(l) => {
            open.create(true).truncate(true);
            l.clone()
        }
        None => {
            let dir = crate::util::state_dir().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("cairn-{}", std::process::id()))
            });
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            open.create_new(true);
            dir.join(format!(
                "mount-{}-{}.log",
                std::process::id(),
                cairn_repo::now_ns()
            ))
        }
    };
    let logf = open.open(&log).with_context(|| {
        format!(
            "creating log file {} (not through a symlink)",
            log.display()
        )
    })?;
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--repo")
        .arg(&repo_loc)
        .arg("--password-file")
        .arg("/dev/stdin");
    for o in &g.options {
        cmd.arg("--option").arg(o);
    }
    if let Some(c) = &g.cache_dir {
        cmd.arg("--cache-dir").arg(c);
    }
    if g.no_cache {
        cmd.arg("--no-cache");
    }
    cmd.arg("mount")
        .arg(&path)
        .arg("--cache-size")
        .arg(a.cache_size.to_string())
        .arg("--threads")
        .arg(a.threads.to_string())
        .arg("--readahead")
        .arg(a.readahead.to_string());
    for s in &a.services {
        cmd.arg("--service").arg(s);
    }
    for t in &a.tags {
        cmd.arg("--tag").arg(t);
    }
    for h in &a.hosts {
        cmd.arg("--host").arg(h);
    }
    if let Some(r) = a.refresh {
        cmd.arg("--refresh").arg(r.to_string());
    }
    if a.allow_other {
        cmd.arg("--allow-other");
    }
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::piped())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        // Its own process group: the terminal's Ctrl-C does not reach it.
        .process_group(0);
    let mut child = cmd.spawn().context("starting the background mount")?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(&password)?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "the background mount exited with {status}:\n{}",
                text.trim_end()
            );
        }
        if cairn_mount::mountpoint::mounted_at(&path).is_some_and(|m| m.is_cairn())
            // A stale mount being replaced is listed too but cannot be stat'ed.
            && std::fs::read_dir(&path).is_ok()
        {
            if !g.quiet {
                println!(
                    "mounted at {} (read-only) by process {}; stop with `umount {}` or `kill {}`; log: {}",
                    path.display(),
                    child.id(),
                    path.display(),
                    child.id(),
                    log.display()
                );
            }
            return Ok(0);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the background mount did not come up within 5 minutes; log: {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
