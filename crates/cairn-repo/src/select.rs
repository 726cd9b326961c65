//! Which paths a backup takes and a restore writes: the pattern language of
//! `--exclude`, `--include` and the catalog's `exclude = [...]`, and the
//! other backup exclusions (`--exclude-caches`, `--exclude-if-present`,
//! `--exclude-larger-than`, `--one-file-system`).
//!
//! Patterns are matched against absolute paths (a backup's source paths, a
//! snapshot's paths):
//! - a pattern starting with `/` is anchored: it must match from the root;
//! - any other pattern matches the end of a path, at a component boundary
//!   (`*.log` matches `/var/log/a.log`, `cache/tmp` matches `/a/cache/tmp`);
//! - `*` and `?` never match `/`; `**` matches any number of components;
//!   `[abc]`, `[!a-z]` and `{a,b}` are classes and alternatives; `\` escapes;
//! - a trailing `/` restricts the pattern to directories;
//! - a matched directory stands for everything beneath it;
//! - `--iexclude`/`--iinclude` patterns ignore case;
//! - a leading `!` (negation in gitignore) is refused, not read as a name.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{RepoError, Result};

/// One pattern as given, and how it was read.
#[derive(Clone, Debug)]
struct Source {
    text: String,
    ignore_case: bool,
    dir_only: bool,
    /// The literal leading directory of an anchored pattern ("/a/b" for
    /// "/a/b/*.c"): only paths on it can match.
    literal_prefix: Option<Vec<u8>>,
}

/// A compiled list of patterns, counting how often each matched.
/// Case-insensitive patterns are lowercased (Unicode) and matched against
/// the lowercased path, so that `--iexclude ÄRGER` matches `ärger`.
#[derive(Debug)]
pub struct Patterns {
    /// Case-sensitive patterns, and the index of each in `sources`.
    set: GlobSet,
    set_idx: Vec<usize>,
    /// Case-insensitive ones.
    iset: GlobSet,
    iset_idx: Vec<usize>,
    sources: Vec<Source>,
    hits: Vec<AtomicU64>,
}

impl Default for Patterns {
    fn default() -> Self {
        Patterns::new(&[]).expect("no patterns")
    }
}

impl Clone for Patterns {
    fn clone(&self) -> Self {
        Patterns {
            set: self.set.clone(),
            set_idx: self.set_idx.clone(),
            iset: self.iset.clone(),
            iset_idx: self.iset_idx.clone(),
            sources: self.sources.clone(),
            hits: self
                .hits
                .iter()
                .map(|h| AtomicU64::new(h.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// A pattern and whether it ignores case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern as written.
    pub text: String,
    /// Match regardless of case.
    pub ignore_case: bool,
}

impl Pattern {
    /// A case-sensitive pattern.
    pub fn new(text: impl Into<String>) -> Self {
        Pattern {
            text: text.into(),
            ignore_case: false,
        }
    }
    /// A pattern that ignores case.
    pub fn ignoring_case(text: impl Into<String>) -> Self {
        Pattern {
            text: text.into(),
            ignore_case: true,
        }
    }
}

const META: &[u8] = b"*?[{\\";

impl Patterns {
    /// Compile; a malformed pattern is an error naming it.
    pub fn new(patterns: &[Pattern]) -> Result<Self> {
        let (mut b, mut ib) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut set_idx, mut iset_idx) = (Vec::new(), Vec::new());
        let mut sources = Vec::new();
        for p in patterns {
            let lowered;
            let raw = p.text.trim_end_matches(['\r', '\n']);
            let raw = if p.ignore_case {
                lowered = raw.to_lowercase();
                lowered.as_str()
            } else {
                raw
            };
            let bad = |why: &str| {
                Err(RepoError::InvalidInput(format!(
                    "pattern {:?}: {why}",
                    p.text
                )))
            };
            if raw.trim().is_empty() {
                return bad("empty");
            }
            if raw.starts_with('!') {
                return bad(
                    "negation (a leading '!') is not supported; write the paths to keep out instead, or escape it as \\!",
                );
            }
            let dir_only = raw.len() > 1 && raw.ends_with('/');
            let body = if dir_only {
                raw.trim_end_matches('/')
            } else {
                raw
            };
            let anchored = body.starts_with('/');
            let glob = if anchored {
                body.to_string()
            } else {
                format!("**/{body}")
            };
            let g = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .empty_alternates(true)
                .build()
                .map_err(|e| {
                    RepoError::InvalidInput(format!("pattern {:?}: {}", p.text, e.kind()))
                })?;
            if p.ignore_case {
                ib.add(g);
                iset_idx.push(sources.len());
            } else {
                b.add(g);
                set_idx.push(sources.len());
            }
            let literal_prefix = anchored.then(|| {
                let bytes = body.as_bytes();
                let stop = bytes
                    .iter()
                    .position(|c| META.contains(c))
                    .unwrap_or(bytes.len());
                // Up to the last '/' before the first special character
                // (the whole pattern when it has none).
                let lit = if stop == bytes.len() {
                    bytes.to_vec()
                } else {
                    let cut = bytes[..stop].iter().rposition(|&c| c == b'/').unwrap_or(0);
                    bytes[..cut.max(1)].to_vec()
                };
                if p.ignore_case { b"/".to_vec() } else { lit }
            });
            sources.push(Source {
                text: p.text.clone(),
                ignore_case: p.ignore_case,
                dir_only,
                literal_prefix,
            });
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| RepoError::InvalidInput(format!("patterns: {e}")))
        };
        let hits = sources.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Patterns {
            set: build(b)?,
            set_idx,
            iset: build(ib)?,
            iset_idx,
            sources,
            hits,
        })
    }

    /// No patterns at all.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Whether `path` (absolute, bytes) matches a pattern by itself (not
    /// through an ancestor); counts the hit.
    pub fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        if self.sources.is_empty() {
            return false;
        }
        let p = Path::new(std::ffi::OsStr::from_bytes(path));
        let mut hit: Vec<usize> = self
            .set
            .matches(p)
            .into_iter()
            .map(|i| self.set_idx[i])
            .collect();
        if !self.iset_idx.is_empty() {
            let lower = match std::str::from_utf8(path) {
                Ok(s) => s.to_lowercase().into_bytes(),
                Err(_) => path.to_ascii_lowercase(),
            };
            let lp = Path::new(std::ffi::OsStr::from_bytes(&lower));
            hit.extend(self.iset.matches(lp).into_iter().map(|i| self.iset_idx[i]));
        }
        let mut any = false;
        for i in hit {
            if self.sources[i].dir_only && !is_dir {
                continue;
            }
            self.hits[i].fetch_add(1, Ordering::Relaxed);
            any = true;
        }
        any
    }

    /// Whether a directory could hold paths that match (so a walk must go
    /// into it): false only when every pattern is anchored elsewhere.
    pub fn may_match_below(&self, dir: &[u8]) -> bool {
        self.sources.iter().any(|s| match &s.literal_prefix {
            None => true,
            Some(pre) => is_ancestor_or_self(pre, dir) || is_ancestor_or_self(dir, pre),
        })
    }

    /// The patterns that have matched nothing so far, and whether each
    /// ignores case.
    pub fn unmatched(&self) -> Vec<(&str, bool)> {
        self.sources
            .iter()
            .zip(&self.hits)
            .filter(|(_, h)| h.load(Ordering::Relaxed) == 0)
            .map(|(s, _)| (s.text.as_str(), s.ignore_case))
            .collect()
    }
}

/// `a` is `b` or one of its ancestors (paths as bytes, `/`-separated).
pub fn is_ancestor_or_self(a: &[u8], b: &[u8]) -> bool {
    let a = if a.len() > 1 {
        a.strip_suffix(b"/").unwrap_or(a)
    } else {
        a
    };
    a == b"/" || b == a || (b.starts_with(a) && b.get(a.len()) == Some(&b'/'))
}

/// Read patterns from a file, one per line, each trimmed of surrounding
/// white space (as restic does); empty lines and lines starting with `#`
/// are skipped, and a byte-order mark is ignored.
pub fn patterns_from_file(path: &Path, ignore_case: bool) -> Result<Vec<Pattern>> {
    let text = std::fs::read_to_string(path).map_err(|e| RepoError::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Pattern {
            text: l.to_string(),
            ignore_case,
        })
        .collect())
}

/// The marker of `--exclude-caches` (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: (&str, &[u8]) = (
    "CACHEDIR.TAG",
    b"Signature: 8a477f597d28d172789f06886806bc55",
);

/// What a backup leaves out, besides what it cannot read.
#[derive(Clone, Debug, Default)]
pub struct Exclusions {
    /// `--exclude`, `--iexclude`, the exclude files.
    pub patterns: Patterns,
    /// Directories holding a file of this name (whose content starts with
    /// the header, if one is given) are left out (`--exclude-if-present`,
    /// `--exclude-caches`).
    pub if_present: Vec<(String, Option<Vec<u8>>)>,
    /// Files larger than this are left out.
    pub larger_than: Option<u64>,
    /// Do not descend into directories on another filesystem than their
    /// parent (the mount point itself is kept, empty).
    pub one_file_system: bool,
}

impl Exclusions {
    /// Parse `NAME[:HEADER]` of `--exclude-if-present`.
    pub fn parse_if_present(spec: &str) -> Result<(String, Option<Vec<u8>>)> {
        let (name, header) = match spec.split_once(':') {
            Some((n, h)) => (n, Some(h.as_bytes().to_vec())),
            None => (spec, None),
        };
        if name.is_empty() || name.contains('/') {
            return Err(RepoError::InvalidInput(format!(
                "--exclude-if-present {spec:?}: expected a file name, optionally followed by :HEADER"
            )));
        }
        Ok((name.to_string(), header))
    }

    /// Whether the directory `dir` holds one of the `if_present` markers.
    /// A marker with a header must be a regular file, opened without
    /// following a symlink and without blocking: a FIFO planted under the
    /// name cannot stall the backup.
    pub fn tagged(&self, dir: &Path) -> bool {
        self.if_present.iter().any(|(name, header)| {
            let p = dir.join(name);
            match header {
                None => std::fs::symlink_metadata(&p).is_ok(),
                Some(h) => {
                    use std::io::Read;
                    use std::os::unix::fs::OpenOptionsExt;
                    let Ok(f) = std::fs::File::options()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(&p)
                    else {
                        return false;
                    };
                    if !f.metadata().is_ok_and(|m| m.is_file()) {
                        return false;
                    }
                    let mut buf = vec![0u8; h.len()];
                    f.take(h.len() as u64).read_exact(&mut buf).is_ok() && &buf == h
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str], path: &str, dir: bool) -> bool {
        let p: Vec<Pattern> = patterns.iter().map(|s| Pattern::new(*s)).collect();
        Patterns::new(&p).unwrap().matches(path.as_bytes(), dir)
    }

    #[test]
    fn the_pattern_language_reads_as_documented() {
        // (patterns, path, is_dir, matches)
        let table: &[(&[&str], &str, bool, bool)] = &[
            (&["*.log"], "/var/log/a.log", false, true),
            (&["*.log"], "/a.log", false, true),
            (&["*.log"], "/var/log/a.log.gz", false, false),
            (&["*.log"], "/var/log", true, false),
            (&["cache/tmp"], "/a/cache/tmp", true, true),
            (&["cache/tmp"], "/a/xcache/tmp", true, false),
            (&["/cache"], "/cache", true, true),
            (&["/cache"], "/a/cache", true, false),
            (&["/home/*/.cache"], "/home/ann/.cache", true, true),
            (&["/home/*/.cache"], "/home/ann/x/.cache", true, false),
            (&["/home/**/.cache"], "/home/ann/x/.cache", true, true),
            (&["/home/**/.cache"], "/home/.cache", true, true),
            (&["**/node_modules"], "/src/app/node_modules", true, true),
            (&["a?c"], "/x/abc", false, true),
            (&["a?c"], "/x/a/c", false, false),
            (&["[ab].txt"], "/x/b.txt", false, true),
            (&["{x,y}.txt"], "/q/y.txt", false, true),
            (&["build/"], "/p/build", true, true),
            (&["build/"], "/p/build", false, false),
            (&["\\*literal"], "/p/*literal", false, true),
            (&["\\*literal"], "/p/xliteral", false, false),
            (&["*.LOG"], "/p/a.log", false, false),
        ];
        for (pats, path, dir, want) in table {
            assert_eq!(
                m(pats, path, *dir),
                *want,
                "{pats:?} against {path} (dir {dir})"
            );
        }
        let ci = Patterns::new(&[Pattern::ignoring_case("*.LOG")]).unwrap();
        assert!(ci.matches(b"/p/a.log", false));
        assert!(ci.matches(b"/p/A.Log", false));
        let ci = Patterns::new(&[Pattern::ignoring_case("ÄRGER")]).unwrap();
        assert!(ci.matches("/p/ärger".as_bytes(), false));
        assert!(ci.matches("/p/Ärger".as_bytes(), false));
        assert!(!ci.matches(b"/p/arger", false));
    }

    #[test]
    fn negation_and_empty_patterns_are_refused_by_name() {
        let e = Patterns::new(&[Pattern::new("!keep")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"!keep\"") && e.contains("negation"), "{e}");
        let e = Patterns::new(&[Pattern::new("a[")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a[\""), "{e}");
    }

    #[test]
    fn unmatched_patterns_are_reported_and_anchored_ones_prune_the_walk() {
        let p = Patterns::new(&[Pattern::new("/a/b/*.c"), Pattern::new("/zz")]).unwrap();
        assert!(p.may_match_below(b"/a"));
        assert!(p.may_match_below(b"/a/b"));
        assert!(!p.may_match_below(b"/q"));
        assert!(p.matches(b"/a/b/x.c", false));
        assert_eq!(p.unmatched(), vec![("/zz", false)]);
    }
}
