//! Retention: which snapshots a policy keeps, and why.
//!
//! Semantics follow restic's `forget`: snapshots are grouped (default by
//! service, host and paths); within a group, newest first, `keep-last N` keeps
//! the N newest; `keep-hourly/daily/weekly/monthly/yearly N` keep the newest
//! snapshot of each of the last N hours/days/... that have a snapshot;
//! `keep-within D` keeps everything within D of the group's newest snapshot;
//! `keep-tag T` keeps every snapshot tagged T. A snapshot is kept if any rule
//! keeps it. A calendar rule that finds fewer buckets than it may keep also
//! keeps the group's oldest snapshot (restic 0.17+: "oldest daily", ...). Protected snapshots are always kept. Calendar buckets are in UTC
//! (cairn records snapshot times in UTC; restic uses local time).

use std::time::Duration;

use cairn_format::SnapshotId;
use cairn_format::snapshot::Snapshot;

pub use crate::duration::civil_from_days;
use crate::duration::days_from_civil;

/// Tag that marks a snapshot as protected from `forget`.
pub const PROTECTED_TAG: &str = "cairn:protected";

/// Keep rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the N newest.
    pub keep_last: Option<u32>,
    /// Keep the newest of each of the last N hours.
    pub keep_hourly: Option<u32>,
    /// Keep the newest of each of the last N days.
    pub keep_daily: Option<u32>,
    /// Keep the newest of each of the last N ISO weeks.
    pub keep_weekly: Option<u32>,
    /// Keep the newest of each of the last N months.
    pub keep_monthly: Option<u32>,
    /// Keep the newest of each of the last N years.
    pub keep_yearly: Option<u32>,
    /// Keep everything within this duration of the group's newest snapshot.
    pub keep_within: Option<Duration>,
    /// Keep every snapshot with one of these tags.
    pub keep_tags: Vec<String>,
}

impl RetentionPolicy {
    /// True if no rule is set (restic then removes nothing; so does cairn).
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }

    /// Refuse rules of 0 (`--keep-last 0`): read literally they keep
    /// nothing, and a retention template whose value came out empty or 0
    /// would remove every snapshot. (restic reads 0 as "no rule"; cairn
    /// refuses, so that the mistake is seen instead of guessed at.)
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "--{name} 0 keeps nothing: give 1 or more, or leave the rule out (to remove snapshots by id, name them)"
                ));
            }
        }
        if self.keep_within.is_some_and(|d| d.is_zero()) {
            return Err("--keep-within 0 keeps nothing but the newest: give a span such as 30d, or leave the rule out".into());
        }
        Ok(())
    }
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Kept or removed.
    pub keep: bool,
    /// The rules that keep it (e.g. "last", "daily", "tag nightly", "protected").
    pub reasons: Vec<String>,
}

/// Civil date and time (UTC) of a Unix time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: i64,
    /// Month 1..=12.
    pub month: u32,
    /// Day 1..=31.
    pub day: u32,
    /// Hour 0..=23.
    pub hour: u32,
    /// ISO 8601 week-numbering year.
    pub iso_year: i64,
    /// ISO 8601 week 1..=53.
    pub iso_week: u32,
}

impl Civil {
    /// From nanoseconds since the epoch.
    pub fn from_ns(ns: i64) -> Civil {
        let secs = ns.div_euclid(1_000_000_000);
        let days = secs.div_euclid(86_400);
        let hour = (secs.rem_euclid(86_400) / 3600) as u32;
        let (year, month, day) = civil_from_days(days);
        // ISO week: the week's Thursday decides the year.
        let weekday = (days + 3).rem_euclid(7); // 0 = Monday
        let thursday = days - weekday + 3;
        let (iso_year, _, _) = civil_from_days(thursday);
        let iso_week = ((thursday - days_from_civil(iso_year, 1, 1)) / 7 + 1) as u32;
        Civil {
            year,
            month,
            day,
            hour,
            iso_year,
            iso_week,
        }
    }
}

/// How far a snapshot's own time may be from when the storage received it
/// (minus the backup's duration) before retention stops trusting it.
pub const TIME_TOLERANCE_NS: i64 = 5 * 60 * 1_000_000_000;

/// The time retention uses for a snapshot whose object the storage received
/// at `stored_ns` (its `last_modified`, a time the writer cannot fake), and a
/// warning when the snapshot's own time is not plausible: in the future
/// relative to its storage, or (for a snapshot that is not a rewritten copy)
/// much older than its storage time less the backup's duration. Then the
/// storage's time less the duration is used instead.
pub fn retention_time(id: &SnapshotId, s: &Snapshot, stored_ns: i64) -> (i64, Option<String>) {
    let began = stored_ns.saturating_sub(s.summary.duration_ns as i64);
    let rewritten = s
        .extra
        .iter()
        .any(|(k, _)| k == "original" || k == "repaired_from");
    let ahead = s.time_ns - stored_ns;
    let behind = began - s.time_ns;
    let fmt = |ns: i64| {
        let c = Civil::from_ns(ns);
        let secs = ns.div_euclid(1_000_000_000).rem_euclid(86_400);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            c.year,
            c.month,
            c.day,
            secs / 3600,
            secs / 60 % 60
        )
    };
    if ahead > TIME_TOLERANCE_NS || (!rewritten && behind > TIME_TOLERANCE_NS) {
        let off = if ahead > 0 { ahead } else { behind };
        let w = format!(
            "snapshot {} from host {:?} says {} UTC but the storage received it at {} UTC ({} {}): the clock of its host was off; retention uses the storage's time",
            id.short(),
            s.hostname,
            fmt(s.time_ns),
            fmt(stored_ns),
            crate::duration::human(Duration::from_nanos(off.unsigned_abs())),
            if ahead > 0 {
                "in its future"
            } else {
                "earlier"
            }
        );
        return (began, Some(w));
    }
    (s.time_ns, None)
}

/// Decide for one group of snapshots (any order). Newest first in the result.
pub fn apply(policy: &RetentionPolicy, group: &[(SnapshotId, Snapshot)]) -> Vec<Decision> {
    let mut snaps: Vec<&(SnapshotId, Snapshot)> = group.iter().collect();
    snaps.sort_by(|a, b| b.1.time_ns.cmp(&a.1.time_ns).then(b.0.cmp(&a.0)));
    let newest = snaps.first().map(|s| s.1.time_ns).unwrap_or(0);
    type Bucket = fn(&Civil) -> i64;
    let rules: [(&str, Option<u32>, Bucket); 5] = [
        ("hourly", policy.keep_hourly, |c| {
            ((c.year * 100 + c.month as i64) * 100 + c.day as i64) * 100 + c.hour as i64
        }),
        ("daily", policy.keep_daily, |c| {
            (c.year * 100 + c.month as i64) * 100 + c.day as i64
        }),
        ("weekly", policy.keep_weekly, |c| {
            c.iso_year * 100 + c.iso_week as i64
        }),
        ("monthly", policy.keep_monthly, |c| {
            c.year * 100 + c.month as i64
        }),
        ("yearly", policy.keep_yearly, |c| c.year),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1.unwrap_or(0)).collect();
    let mut last: Vec<Option<i64>> = vec![None; rules.len()];
    let mut kept_last = 0u32;
    let mut out = Vec::with_capacity(snaps.len());
    for (id, s) in snaps {
        let mut reasons = Vec::new();
        if s.tags.iter().any(|t| t == PROTECTED_TAG) {
            reasons.push("protected".to_string());
        }
        if let Some(n) = policy.keep_last
            && kept_last < n
        {
            kept_last += 1;
            reasons.push("last".into());
        }
        let c = Civil::from_ns(s.time_ns);
        for (i, (name, _, bucket)) in rules.iter().enumerate() {
            let b = bucket(&c);
            if left[i] > 0 && last[i] != Some(b) {
                left[i] -= 1;
                last[i] = Some(b);
                reasons.push((*name).into());
            }
        }
        if let Some(w) = policy.keep_within
            && newest - s.time_ns <= w.as_nanos() as i64
        {
            reasons.push("within".into());
        }
        for t in &policy.keep_tags {
            if s.tags.contains(t) {
                reasons.push(format!("tag {t}"));
            }
        }
        out.push(Decision {
            id: *id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    // As restic (0.17+): a calendar rule that found fewer buckets than it may
    // keep also keeps the group's oldest snapshot ("oldest daily", ...).
    if let Some(oldest) = out.last_mut() {
        for (i, (name, n, _)) in rules.iter().enumerate() {
            if n.is_some_and(|n| n > 0) && left[i] > 0 {
                oldest.keep = true;
                oldest.reasons.push(format!("oldest {name}"));
            }
        }
    }
    out
}

/// What snapshots are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// Group by service.
    pub service: bool,
    /// Group by host.
    pub host: bool,
    /// Group by paths.
    pub paths: bool,
    /// Group by tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            service: true,
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl GroupBy {
    /// Parse "service,host,paths,tags" (any subset; "" groups everything together).
    pub fn parse(s: &str) -> Result<GroupBy, String> {
        let mut g = GroupBy {
            service: false,
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "service" => g.service = true,
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                o => {
                    return Err(format!(
                        "unknown group-by field {o:?} (service, host, paths, tags)"
                    ));
                }
            }
        }
        Ok(g)
    }

    /// The key of a snapshot's group: one string per distinct group (two
    /// snapshots share it only if the grouped fields are equal byte for
    /// byte). Plain values are written as they are (`paths=/srv/a:/srv/b`);
    /// a value holding a separator, a quote, a space or bytes that are not
    /// UTF-8 is quoted with its bytes escaped, so that `/g/\xff` and
    /// `/g/\xfe`, or the one path `/x/p:/x/q` and the two paths `/x/p` and
    /// `/x/q`, never fall into one group.
    pub fn key(&self, s: &Snapshot) -> String {
        let mut k = Vec::new();
        if self.service {
            k.push(format!("service={}", key_part(s.service.as_bytes())));
        }
        if self.host {
            k.push(format!("host={}", key_part(s.hostname.as_bytes())));
        }
        if self.paths {
            let p: Vec<String> = s.paths.iter().map(|p| key_part(p)).collect();
            k.push(format!("paths={}", p.join(":")));
        }
        if self.tags {
            let mut t: Vec<&String> = s.tags.iter().filter(|t| *t != PROTECTED_TAG).collect();
            t.sort();
            let t: Vec<String> = t.iter().map(|t| key_part(t.as_bytes())).collect();
            k.push(format!("tags={}", t.join(",")));
        }
        k.join(" ")
    }
}

/// One value of a group key: as it is when plain, else quoted and escaped.
fn key_part(b: &[u8]) -> String {
    let plain = std::str::from_utf8(b).is_ok()
        && !b.is_empty()
        && b.iter()
            .all(|&c| c > b' ' && c != 0x7f && !b"\"\\,:=[]".contains(&c));
    if plain {
        String::from_utf8_lossy(b).into_owned()
    } else {
        format!("\"{}\"", b.escape_ascii())
    }
}

/// Parse a `keep-within` duration the way restic users write it:
/// `1y6m`, `30d`, `12h`, `2y3m10d5h` (y = 365 days, m = 30 days: months, not minutes).
pub fn parse_keep_within(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s, crate::duration::Grammar::Retention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::ChunkId;

    fn at(y: i64, m: u32, d: u32, h: u32, min: i64) -> i64 {
        (days_from_civil(y, m, d) * 86_400 + h as i64 * 3600 + min * 60) * 1_000_000_000
    }

    fn snap(i: u8, t: i64, tags: &[&str]) -> (SnapshotId, Snapshot) {
        (
            SnapshotId([i; 32]),
            Snapshot {
                time_ns: t,
                tree: ChunkId::default(),
                parent: None,
                group: None,
                service: String::new(),
                hostname: "h".into(),
                username: "u".into(),
                paths: vec![],
                tags: tags.iter().map(|s| s.to_string()).collect(),
                summary: Default::default(),
                fingerprints: vec![],
                extra: vec![],
            },
        )
    }

    fn kept(p: &RetentionPolicy, g: &[(SnapshotId, Snapshot)]) -> Vec<u8> {
        let mut v: Vec<u8> = apply(p, g)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id.0[0])
            .collect();
        v.sort();
        v
    }

    /// A month of daily snapshots at 10:00 plus extra ones, as in restic's
    /// documentation examples: 2016-01-01 .. 2016-01-31, ids = day of month.
    fn january() -> Vec<(SnapshotId, Snapshot)> {
        let mut v: Vec<_> = (1..=31)
            .map(|d| snap(d as u8, at(2016, 1, d, 10, 0), &[]))
            .collect();
        // two more on Jan 31 (later the same day) and one on Jan 30 in the evening
        v.push(snap(100, at(2016, 1, 31, 11, 0), &[]));
        v.push(snap(101, at(2016, 1, 31, 12, 0), &["important"]));
        v.push(snap(102, at(2016, 1, 30, 22, 0), &[]));
        v
    }

    #[test]
    fn table_of_keep_rules() {
        let g = january();
        let p = |f: fn(&mut RetentionPolicy)| {
            let mut p = RetentionPolicy::default();
            f(&mut p);
            p
        };
        // (policy, expected kept ids)
        let cases: Vec<(RetentionPolicy, Vec<u8>)> = vec![
            // keep-last 3: the three newest.
            (p(|p| p.keep_last = Some(3)), vec![31, 100, 101]),
            // keep-daily 3: the newest snapshot of each of the last 3 days.
            (p(|p| p.keep_daily = Some(3)), vec![29, 101, 102]),
            // keep-hourly 2: the newest of each of the last 2 hours with snapshots.
            (p(|p| p.keep_hourly = Some(2)), vec![100, 101]),
            // keep-weekly 2 (ISO weeks, Monday first): Jan 31 2016 is a Sunday
            // (week 4, newest 101) and week 3 ends Sunday Jan 24.
            (p(|p| p.keep_weekly = Some(2)), vec![24, 101]),
            // keep-monthly / yearly with one month of data: the newest, and, as
            // the rule cannot be filled, the oldest (restic 0.17+).
            (p(|p| p.keep_monthly = Some(5)), vec![1, 101]),
            (p(|p| p.keep_yearly = Some(5)), vec![1, 101]),
            // keep-within 2 days of the newest (Jan 31 12:00): Jan 29 12:00 onwards.
            (
                p(|p| p.keep_within = Some(Duration::from_secs(2 * 86_400))),
                vec![30, 31, 100, 101, 102],
            ),
            // keep-tag.
            (p(|p| p.keep_tags = vec!["important".into()]), vec![101]),
            // rules combine: last 1 plus daily 2.
            (
                p(|p| {
                    p.keep_last = Some(1);
                    p.keep_daily = Some(2);
                }),
                vec![101, 102],
            ),
        ];
        for (policy, expected) in cases {
            assert_eq!(kept(&policy, &g), expected, "{policy:?}");
        }
    }

    /// restic's documentation, "Removing snapshots according to a policy":
    /// one backup every Sunday for 12 weeks; `--keep-daily 4` keeps the last four.
    #[test]
    fn restic_doc_example_twelve_sundays_keep_daily_4() {
        let g: Vec<_> = (0..12u8)
            .map(|w| {
                snap(
                    w,
                    at(2019, 9, 1, 11, 0) + w as i64 * 7 * 86_400 * 1_000_000_000,
                    &[],
                )
            })
            .collect();
        let p = RetentionPolicy {
            keep_daily: Some(4),
            ..Default::default()
        };
        assert_eq!(kept(&p, &g), vec![8, 9, 10, 11]);
        assert!(
            apply(&p, &g)
                .iter()
                .filter(|d| d.keep)
                .all(|d| d.reasons == vec!["daily"])
        );
    }

    /// The same page: a backup every day for 100 years, then
    /// `--keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75` keeps
    /// 7 dailies, 4 more weeklies, 12 or 11 more monthlies, 75 or 74 more yearlies.
    #[test]
    fn restic_doc_example_hundred_years_of_dailies() {
        let start = days_from_civil(1920, 1, 1);
        let g: Vec<(SnapshotId, Snapshot)> = (0..36_525i64)
            .map(|d| {
                let mut s = snap(0, ((start + d) * 86_400 + 10 * 3600) * 1_000_000_000, &[]);
                s.0 = SnapshotId(*blake3::hash(&d.to_le_bytes()).as_bytes());
                s
            })
            .collect();
        let p = RetentionPolicy {
            keep_daily: Some(7),
            keep_weekly: Some(5),
            keep_monthly: Some(12),
            keep_yearly: Some(75),
            ..Default::default()
        };
        let d = apply(&p, &g);
        let kept: Vec<&Decision> = d.iter().filter(|d| d.keep).collect();
        let only = |r: &str| {
            kept.iter()
                .filter(|d| d.reasons.iter().any(|x| x == r))
                .count()
        };
        assert_eq!(only("daily"), 7);
        assert_eq!(only("weekly"), 5);
        assert_eq!(only("monthly"), 12);
        assert_eq!(only("yearly"), 75);
        // Independently: the newest snapshot per bucket, N newest buckets per rule.
        let newest_per = |n: usize, f: &dyn Fn(&Civil) -> i64| -> Vec<SnapshotId> {
            let mut by: std::collections::BTreeMap<i64, (i64, SnapshotId)> = Default::default();
            for (id, s) in &g {
                let e = by
                    .entry(f(&Civil::from_ns(s.time_ns)))
                    .or_insert((s.time_ns, *id));
                if s.time_ns > e.0 {
                    *e = (s.time_ns, *id);
                }
            }
            by.values().rev().take(n).map(|x| x.1).collect()
        };
        let mut expected: std::collections::BTreeSet<SnapshotId> = Default::default();
        expected.extend(newest_per(7, &|c| {
            (c.year * 100 + c.month as i64) * 100 + c.day as i64
        }));
        expected.extend(newest_per(5, &|c| c.iso_year * 100 + c.iso_week as i64));
        expected.extend(newest_per(12, &|c| c.year * 100 + c.month as i64));
        expected.extend(newest_per(75, &|c| c.year));
        let got: std::collections::BTreeSet<SnapshotId> = kept.iter().map(|d| d.id).collect();
        assert_eq!(got, expected);
        // The documentation's arithmetic, allowing for where the week falls:
        // 7 dailies + 3..4 weeklies + 11..12 monthlies + 74..75 yearlies.
        assert!(
            (7 + 3 + 11 + 74..=7 + 4 + 12 + 75).contains(&got.len()),
            "kept {}",
            got.len()
        );
        assert!(
            d[..7]
                .iter()
                .all(|x| x.reasons.contains(&"daily".to_string()))
        );
    }

    /// Not enough buckets for a rule: the oldest snapshot is kept additionally.
    #[test]
    fn unfilled_rule_keeps_the_oldest_additionally() {
        let g = vec![
            snap(1, at(2024, 5, 1, 8, 0), &[]),
            snap(2, at(2024, 5, 1, 9, 0), &[]),
            snap(3, at(2024, 5, 1, 10, 0), &[]),
        ];
        let p = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&p, &g), vec![1, 3]);
        let d = apply(&p, &g);
        assert_eq!(
            d.iter().find(|x| x.id.0[0] == 1).unwrap().reasons,
            vec!["oldest daily"]
        );
        // keep-last is not a calendar rule: nothing extra.
        let p = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        assert_eq!(kept(&p, &g), vec![3]);
    }

    #[test]
    fn protected_snapshots_are_always_kept_and_empty_policy_flags() {
        let g = vec![
            snap(1, at(2020, 1, 1, 0, 0), &[PROTECTED_TAG]),
            snap(2, at(2021, 1, 1, 0, 0), &[]),
        ];
        let p = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        assert_eq!(kept(&p, &g), vec![1, 2]);
        let d = apply(&p, &g);
        assert_eq!(
            d.iter().find(|d| d.id.0[0] == 1).unwrap().reasons,
            vec!["protected"]
        );
        assert!(RetentionPolicy::default().is_empty());
    }

    #[test]
    fn keep_within_uses_restic_units() {
        assert_eq!(
            parse_keep_within("1y6m").unwrap(),
            Duration::from_secs((365 + 180) * 86_400)
        );
        assert_eq!(
            parse_keep_within("2d12h").unwrap(),
            Duration::from_secs(60 * 3600)
        );
        assert!(parse_keep_within("3 weeks").is_err());
        assert!(parse_keep_within("10").is_err());
    }

    #[test]
    fn iso_weeks_match_known_dates() {
        let c = Civil::from_ns(at(2016, 1, 1, 0, 0)); // Friday: ISO week 53 of 2015
        assert_eq!((c.iso_year, c.iso_week), (2015, 53));
        let c = Civil::from_ns(at(2016, 1, 4, 0, 0)); // Monday: week 1 of 2016
        assert_eq!((c.iso_year, c.iso_week), (2016, 1));
        let c = Civil::from_ns(at(2026, 11, 23, 0, 0));
        assert_eq!((c.year, c.month, c.day, c.iso_week), (2026, 11, 23, 48));
    }
}
