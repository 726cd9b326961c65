//! `cairn`: the command-line interface. Only this crate uses `anyhow`.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's, and only
//! those), 3 completed with warnings (for example unreadable files skipped
//! during a backup).

mod commands;
mod history_html;
mod stack;
mod util;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Exit code for "completed, with warnings".
pub const EXIT_WARNINGS: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version = commands::long_version(),
    about = "Encrypted, deduplicating backups for service fleets",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 3 completed with warnings."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Cmd,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Repository location: a directory path, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX
    #[arg(short = 'r', long = "repo", env = "CAIRN_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Backend option KEY=VALUE (repeatable), e.g. endpoint=http://127.0.0.1:9000, region=eu-west-1, allow_http=true, connections=16
    #[arg(short = 'o', long = "option", global = true)]
    pub options: Vec<String>,
    /// Cache directory for remote repositories [default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn]
    #[arg(long, env = "CAIRN_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Do not use the local cache
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// File holding the password
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Shell command that prints the password
    #[arg(long, env = "CAIRN_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Refuse to walk a snapshot whose tree holds more entries than this
    /// (restore, ls, check; mount lists no more of one snapshot; default
    /// 1000000000)
    #[arg(long, global = true, value_name = "N")]
    pub max_tree_entries: Option<u64>,
    /// … more directory levels than this (default 1024)
    #[arg(long, global = true, value_name = "N")]
    pub max_tree_depth: Option<u32>,
    /// Key file to try first (id or prefix; default: the one this host
    /// used last for this repository)
    #[arg(long, global = true, env = "CAIRN_KEY_HINT", value_name = "ID")]
    pub key_hint: Option<String>,
    /// Also try key files whose Argon2id settings are above the ceiling
    /// (1 GiB, 16 passes, 16 lanes; skipped by default: a planted one would
    /// cost every open that much)
    #[arg(long, global = true)]
    pub allow_expensive_kdf: bool,
    /// … files adding up to more than this apparent size (default 1PiB)
    #[arg(long, global = true, value_name = "SIZE", value_parser = crate::util::parse_size64)]
    pub max_tree_size: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a repository
    Init(commands::InitArgs),
    /// Back up files, directories, stdin or a command's output
    Backup(commands::BackupArgs),
    /// List snapshots
    Snapshots(commands::SnapshotsArgs),
    /// List the entries of a snapshot
    Ls(commands::LsArgs),
    /// Write a file of a snapshot to stdout
    Dump(commands::DumpArgs),
    /// What changed between two snapshots (by content, not mtimes)
    Diff(commands::DiffArgs),
    /// Find entries by pattern across snapshots
    Find(commands::FindArgs),
    /// Copies of snapshots without some entries (a secret backed up by mistake)
    Rewrite(commands::RewriteArgs),
    /// Copy snapshots from another repository (an off-site copy)
    Copy(commands::CopyArgs),
    /// Restore a snapshot
    Restore(commands::RestoreArgs),
    /// Remove snapshots by keep rules (or by id)
    Forget(commands::ForgetArgs),
    /// Verify the repository (structure; --read-data for every byte)
    Check(commands::CheckArgs),
    /// Repair a damaged repository
    Repair {
        #[command(subcommand)]
        cmd: commands::RepairCmd,
    },
    /// Remove data no snapshot uses (two phases, safe alongside backups)
    Prune(commands::PruneCmdArgs),
    /// Change snapshot tags; --protect keeps a snapshot from forget
    Tag(commands::TagArgs),
    /// Repository statistics
    Stats,
    /// Print a decoded object (for debugging)
    Cat(commands::CatArgs),
    /// Mount the repository as a read-only filesystem (FUSE)
    Mount(commands::MountArgs),
    /// Service catalog: group backups, restore plans, ordered restores
    Stack {
        #[command(subcommand)]
        cmd: stack::StackCmd,
    },
    /// Manage keys (passwords)
    Key {
        #[command(subcommand)]
        cmd: commands::KeyCmd,
    },
    /// The release, commit and format versions of this binary
    Version,
    /// Shell completions (bash, zsh, fish, elvish, powershell) on stdout
    Completion(commands::CompletionArgs),
    /// Manual pages (roff)
    Man(commands::ManArgs),
}

/// Whether the command prints only a report of what it did (silenced by
/// `-q`), not output that was asked for (a listing, a dump).
fn reports_only(c: &Cmd) -> bool {
    match c {
        Cmd::Init(_)
        | Cmd::Backup(_)
        | Cmd::Restore(_)
        | Cmd::Forget(_)
        | Cmd::Check(_)
        | Cmd::Repair { .. }
        | Cmd::Prune(_)
        | Cmd::Tag(_)
        | Cmd::Rewrite(_)
        | Cmd::Copy(_)
        | Cmd::Mount(_) => true,
        Cmd::Key { cmd } => !matches!(cmd, commands::KeyCmd::List),
        Cmd::Stack { cmd } => !matches!(
            cmd,
            stack::StackCmd::Plan(_) | stack::StackCmd::History(_) | stack::StackCmd::Audit(_)
        ),
        Cmd::Snapshots(_)
        | Cmd::Ls(_)
        | Cmd::Diff(_)
        | Cmd::Find(_)
        | Cmd::Dump(_)
        | Cmd::Stats
        | Cmd::Cat(_)
        | Cmd::Version
        | Cmd::Completion(_)
        | Cmd::Man(_) => false,
    }
}

/// The whole command line's definition (for completions and manual pages).
pub fn cli_command() -> clap::Command {
    Cli::command()
}

fn main() {
    let cli = Cli::parse();
    // Listings end quietly when their reader goes away (`| head`); commands
    // that feed child processes through pipes (stack) or hold state that
    // must be cleaned up (restore, mount, prune) keep handling EPIPE.
    if matches!(
        cli.command,
        Cmd::Snapshots(_)
            | Cmd::Ls(_)
            | Cmd::Diff(_)
            | Cmd::Find(_)
            | Cmd::Forget(_)
            | Cmd::Check(_)
            | Cmd::Stats
            | Cmd::Cat(_)
            | Cmd::Tag(_)
            | Cmd::Version
            | Cmd::Completion(_)
            | Cmd::Man(_)
    ) {
        cairn_repo::sys::default_sigpipe();
    }
    // -q: nothing but errors (and warnings, on stderr) from the commands
    // whose output is a report of what they did; a listing's output is
    // what was asked for, and --json is asked for too.
    if cli.global.quiet && !cli.global.json && reports_only(&cli.command) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if let Err(e) = cairn_repo::sys::silence_stdout() {
            eprintln!("cairn: error: -q: {e}");
            std::process::exit(1);
        }
    }
    cairn_repo::sys::tune_allocator(matches!(
        cli.command,
        Cmd::Backup(_) | Cmd::Stack { .. } | Cmd::Dump(_) | Cmd::Forget(_) | Cmd::Prune(_)
    ));
    let r = match cli.command {
        Cmd::Init(a) => commands::init(&cli.global, a),
        Cmd::Backup(a) => commands::backup(&cli.global, a),
        Cmd::Snapshots(a) => commands::snapshots(&cli.global, a),
        Cmd::Ls(a) => commands::ls(&cli.global, a),
        Cmd::Dump(a) => commands::dump(&cli.global, a),
        Cmd::Diff(a) => commands::diff_cmd(&cli.global, a),
        Cmd::Find(a) => commands::find_cmd(&cli.global, a),
        Cmd::Rewrite(a) => commands::rewrite_cmd(&cli.global, a),
        Cmd::Copy(a) => commands::copy_cmd(&cli.global, a),
        Cmd::Restore(a) => commands::restore(&cli.global, a),
        Cmd::Stats => commands::stats(&cli.global),
        Cmd::Forget(a) => commands::forget_cmd(&cli.global, a),
        Cmd::Tag(a) => commands::tag_cmd(&cli.global, a),
        Cmd::Prune(a) => commands::prune_cmd(&cli.global, a),
        Cmd::Check(a) => commands::check_cmd(&cli.global, a),
        Cmd::Repair { cmd } => commands::repair_cmd(&cli.global, cmd),
        Cmd::Cat(a) => commands::cat(&cli.global, a),
        Cmd::Key { cmd } => commands::key(&cli.global, cmd),
        Cmd::Mount(a) => commands::mount_cmd(&cli.global, a),
        Cmd::Stack { cmd } => stack::stack(&cli.global, cmd),
        Cmd::Version => commands::version_cmd(&cli.global),
        Cmd::Completion(a) => commands::completion_cmd(a),
        Cmd::Man(a) => commands::man_cmd(a),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cairn: error: {}", error_chain(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes. An error whose message already ends with its
/// cause's (the convention of errors that print their source) is not
/// followed by the cause again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.ends_with(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}
