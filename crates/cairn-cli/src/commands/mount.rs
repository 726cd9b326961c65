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

impl MountArgs {
    /// The options of the background mount's own `cairn mount` (after its
    /// mount point): every option of these but `--daemon`, `--log` and
    /// `--foreground`, which concern only the process that starts it.
    fn child_args(&self) -> Vec<std::ffi::OsString> {
        let MountArgs {
            mountpoint: _,
            services,
            tags,
            hosts,
            cache_size,
            refresh,
            threads,
            readahead,
            allow_other,
            foreground: _,
            daemon: _,
            log: _,
        } = self;
        let mut v: Vec<std::ffi::OsString> = Vec::new();
        let mut opt = |name: &str, value: String| {
            v.push(name.into());
            v.push(value.into());
        };
        opt("--cache-size", cache_size.to_string());
        opt("--threads", threads.to_string());
        opt("--readahead", readahead.to_string());
        for s in services {
            opt("--service", s.clone());
        }
        for t in tags {
            opt("--tag", t.clone());
        }
        for h in hosts {
            opt("--host", h.clone());
        }
        if let Some(r) = refresh {
            opt("--refresh", r.to_string());
        }
        if *allow_other {
            v.push("--allow-other".into());
        }
        v
    }
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
    cmd.arg("mount").arg(&path).args(a.child_args());
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

#[cfg(test)]
mod tests {
    use super::MountArgs;
    use clap::{ArgAction, Args, Command, FromArgMatches};

    fn parse(argv: &[std::ffi::OsString]) -> MountArgs {
        let cmd = MountArgs::augment_args(Command::new("mount").no_binary_name(true));
        MountArgs::from_arg_matches(&cmd.try_get_matches_from(argv).unwrap()).unwrap()
    }

    /// Every option of `mount` set to a value other than its default (built
    /// from clap's own list, so a new option is included without editing
    /// this test) reaches the background mount's command line unchanged.
    #[test]
    fn the_background_mount_gets_every_option_it_was_given() {
        let cmd = MountArgs::augment_args(Command::new("mount"));
        let mut argv: Vec<std::ffi::OsString> = vec!["/mnt/x".into()];
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if ["daemon", "log", "foreground", "help"].contains(&long) {
                continue;
            }
            argv.push(format!("--{long}").into());
            if !matches!(a.get_action(), ArgAction::SetTrue) {
                argv.push("7".into());
            }
        }
        let given = parse(&argv);
        let mut child: Vec<std::ffi::OsString> = vec!["/mnt/x".into()];
        child.extend(given.child_args());
        assert_eq!(format!("{:?}", parse(&child)), format!("{given:?}"));
    }
}
