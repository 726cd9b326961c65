//! `cairn completion SHELL` and `cairn man`: shell completions and manual
//! pages, both generated from the command definitions themselves (so they
//! never disagree with `--help`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write cairn.1 and one page per command (cairn-backup.1,
    /// cairn-stack-restore.1, …) into this directory; without it, print
    /// cairn.1 to stdout
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Write the completion script for `a.shell` to stdout, e.g.
/// `cairn completion bash > /etc/bash_completion.d/cairn`.
pub fn completion_cmd(a: CompletionArgs) -> Result<i32> {
    let mut cmd = crate::cli_command();
    clap_complete::generate(a.shell, &mut cmd, "cairn", &mut std::io::stdout());
    Ok(0)
}

/// Render the manual pages.
pub fn man_cmd(a: ManArgs) -> Result<i32> {
    let cmd = crate::cli_command();
    let Some(dir) = a.dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(0);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    write_pages(&cmd, "cairn", &dir, &mut written)?;
    eprintln!("wrote {written} manual pages into {}", dir.display());
    Ok(0)
}

/// The page of `cmd` as `name.1`, then its subcommands' pages as
/// `name-sub.1`, recursively.
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    n: &mut usize,
) -> Result<()> {
    let page = cmd.clone().name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    *n += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, n)?;
    }
    Ok(())
}
