//! Passwords, sizes, times and progress display.

use std::io::IsTerminal;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::GlobalArgs;

/// Where the password comes from, in order of precedence.
pub fn read_password(g: &GlobalArgs, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = &g.password_file {
        let s =
            std::fs::read(f).with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(trim_newline(s));
    }
    if let Some(cmd) = &g.password_command {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running password command {cmd:?}"))?;
        if !out.status.success() {
            bail!("password command {cmd:?} failed with {}", out.status);
        }
        return Ok(trim_newline(out.stdout));
    }
    if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
        return Ok(p.into_bytes());
    }
    prompt_password("enter repository password: ", confirm)
}

/// Ask on the terminal (twice when `confirm`).
pub fn prompt_password(prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    if !std::io::stderr().is_terminal() && !std::io::stdin().is_terminal() {
        bail!(
            "no password given: use --password-file, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND or CAIRN_PASSWORD (no terminal to prompt on)"
        );
    }
    let p = rpassword::prompt_password(prompt).context("reading password from the terminal")?;
    if confirm {
        let again = rpassword::prompt_password("enter the password again: ")?;
        if again != p {
            bail!("the passwords do not match");
        }
    }
    if p.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(p.into_bytes())
}

fn trim_newline(mut s: Vec<u8>) -> Vec<u8> {
    while matches!(s.last(), Some(b'\n') | Some(b'\r')) {
        s.pop();
    }
    s
}

/// Parse "4M", "256KiB", "1048576" (at most 4 GiB - 1).
pub fn parse_size(s: &str) -> Result<u32, String> {
    u32::try_from(parse_size64(s)?).map_err(|_| format!("size {s:?} too large"))
}

/// Parse "256MiB", "2G", "1048576".
pub fn parse_size64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// "1.5 MiB".
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// UTC time as "YYYY-MM-DD HH:MM:SS" (or RFC 3339 with `rfc`).
pub fn format_time(ns: i64, rfc: bool) -> String {
    format_secs(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
        rfc,
    )
}

/// A tree entry's time in RFC 3339, from its seconds and nanoseconds (any
/// year a tree may hold, not only those nanoseconds in an i64 reach).
pub fn format_node_time(t: &cairn_format::tree::Time) -> String {
    format_secs(t.sec, t.nsec.min(999_999_999), true)
}

fn format_secs(secs: i64, nsec: u32, rfc: bool) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = cairn_repo::forget::civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if rfc {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{nsec:09}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
    }
}

/// A progress display on a terminal, polling a closure; nothing otherwise.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    /// Start polling `msg` every 100 ms if stderr is a terminal and `enabled`.
    pub fn start(enabled: bool, msg: impl Fn() -> (u64, u64, String) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Ticker { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            while !s.load(Ordering::Relaxed) {
                let (pos, total, m) = msg();
                bar.set_length(total.max(pos));
                bar.set_position(pos);
                bar.set_message(m);
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Ticker {
            stop,
            handle: Some(handle),
        }
    }
}

impl Ticker {
    /// A spinner with a changing message (for work without a byte count).
    pub fn stage(enabled: bool, stage: cairn_repo::Stage) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Ticker { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("template"),
            );
            while !s.load(Ordering::Relaxed) {
                bar.set_message(stage.lock().expect("stage").clone());
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Ticker {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// This host's private cairn state (`$XDG_STATE_HOME/cairn`, else
/// `~/.local/state/cairn`); `None` without either variable.
pub fn state_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            Some(std::path::PathBuf::from(std::env::var_os("HOME")?).join(".local/state"))
        })?;
    Some(base.join("cairn"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes_and_times() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("5X").is_err());
        assert_eq!(format_time(0, false), "1970-01-01 00:00:00");
        assert_eq!(
            format_time(1_795_000_000_000_000_000, false),
            "2026-11-18 11:06:40"
        );
    }
}
