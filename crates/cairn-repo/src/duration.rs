//! The one duration grammar of cairn's command line and catalog: number and
//! unit pairs without spaces, `90s`, `1h30m`, `2w3d`, `500ms`; and the
//! human form of a duration and the civil calendar used to print times.
//!
//! | unit | means |
//! |---|---|
//! | `ms` | milliseconds |
//! | `s` | seconds |
//! | `min` | minutes |
//! | `m` | minutes, except in [`Grammar::Retention`] (restic's `--keep-within`), where it is months |
//! | `h` | hours |
//! | `d` | days |
//! | `w` | weeks |
//! | `mo` | months of 30 days |
//! | `y` | years of 365 days |
//!
//! Every number needs a unit; a total above 100 years is refused (never
//! wrapped or saturated).

use std::time::Duration;

/// Which meaning `m` has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grammar {
    /// `m` is minutes: catalog durations (`rto`, timeouts), `--keep-delete`.
    Span,
    /// `m` is months, as in restic's `--keep-within 1y6m`: only for
    /// retention spans (`--keep-within`, a catalog's `keep_within`).
    Retention,
}

/// The longest duration accepted.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parse `s` in `grammar`.
pub fn parse(s: &str, grammar: Grammar) -> Result<Duration, String> {
    let m_means = match grammar {
        Grammar::Span => "m = minutes",
        Grammar::Retention => "m = months, as in restic",
    };
    let units = format!("ms, s, min, m ({m_means}), h, d, w, mo, y");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(format!(
            "empty duration (use e.g. 90s, 1h30m, 30d; units {units})"
        ));
    }
    let too_long = || format!("duration {s:?} is too long (at most 100 years)");
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if n_end == 0 {
            return Err(format!(
                "bad duration {s:?} (use e.g. 90s, 1h30m, 30d; units {units})"
            ));
        }
        let n: u64 = rest[..n_end].parse().map_err(|_| too_long())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..u_end];
        rest = &rest[u_end..];
        let secs = |mul: u64| {
            n.checked_mul(mul)
                .map(Duration::from_secs)
                .ok_or_else(too_long)
        };
        let part = match (unit, grammar) {
            ("ms", _) => Duration::from_millis(n),
            ("s", _) => secs(1)?,
            ("min", _) | ("m", Grammar::Span) => secs(60)?,
            ("h", _) => secs(3600)?,
            ("d", _) => secs(86_400)?,
            ("w", _) => secs(7 * 86_400)?,
            ("mo", _) | ("m", Grammar::Retention) => secs(30 * 86_400)?,
            ("y", _) => secs(365 * 86_400)?,
            ("", _) => return Err(format!("{s:?}: {n} needs a unit ({units})")),
            _ => return Err(format!("bad duration unit {unit:?} in {s:?} ({units})")),
        };
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > MAX {
            return Err(too_long());
        }
    }
    Ok(total)
}

/// `1d 2h`, `3m 4s`, `250ms`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{days}d {h}h"),
    }
}

/// (year, month, day) of a day number (days since 1970-01-01), proleptic Gregorian.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_where_only_m_differs() {
        for g in [Grammar::Span, Grammar::Retention] {
            assert_eq!(parse("90s", g), Ok(Duration::from_secs(90)));
            assert_eq!(parse("500ms", g), Ok(Duration::from_millis(500)));
            assert_eq!(parse("2w3d", g), Ok(Duration::from_secs(17 * 86_400)));
            assert_eq!(parse("1y2mo", g), Ok(Duration::from_secs(425 * 86_400)));
            assert_eq!(parse("5min", g), Ok(Duration::from_secs(300)));
            for bad in ["", "10", "3 weeks", "1x", "h", "-1s", "1.5h"] {
                assert!(parse(bad, g).is_err(), "{bad:?}");
            }
            for long in [
                "18446744073709551615s1s",
                "999999999999999999d",
                "36600d1s",
                "99999999999999999999y",
                "18446744073709551615y",
            ] {
                let e = parse(long, g).unwrap_err();
                assert!(e.contains("too long"), "{long}: {e}");
            }
        }
        assert_eq!(parse("1h30m", Grammar::Span), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse("1y6m", Grammar::Retention),
            Ok(Duration::from_secs((365 + 180) * 86_400))
        );
        assert!(
            parse("1q", Grammar::Span)
                .unwrap_err()
                .contains("m = minutes")
        );
        assert!(
            parse("1q", Grammar::Retention)
                .unwrap_err()
                .contains("m = months")
        );
    }
}

/// A time given on the command line, in nanoseconds since the epoch (UTC):
/// RFC 3339 (`2026-12-01T10:00:00Z`, fractions and offsets allowed), or
/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM` or `YYYY-MM-DD HH:MM:SS` read as UTC.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (m, day) = (m as u32, day as u32);
    let days = days_from_civil(y, m, day);
    if civil_from_days(days) != (y, m, day) {
        return None; // 2026-02-30
    }
    // Time of day, fraction, offset.
    let (clock, offset_s) = if rest.is_empty() {
        ("", 0)
    } else if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = rest.rfind(['+', '-']).filter(|&i| i >= 5) {
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut o = off[1..].split(':');
        let (oh, om) = (num(o.next()?)?, num(o.next().unwrap_or("0"))?);
        if oh > 23 || om > 59 {
            return None;
        }
        (c, sign * (oh * 3600 + om * 60))
    } else {
        (rest, 0)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, f),
        None => (clock, ""),
    };
    // A date alone is midnight; a time of day needs hours and minutes.
    let (h, mi, sec) = if hms.is_empty() {
        if !frac.is_empty() || !rest.is_empty() && !matches!(rest, "Z" | "z") {
            return None;
        }
        (0, 0, 0)
    } else {
        let mut parts = hms.split(':');
        let h = num(parts.next()?)?;
        let mi = num(parts.next()?)?;
        let sec = parts.next().map(num).unwrap_or(Some(0))?;
        if parts.next().is_some() {
            return None;
        }
        (h, mi, sec)
    };
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits = num(frac)?;
        if frac.len() > 9 {
            return None;
        }
        digits * 10i64.pow(9 - frac.len() as u32)
    };
    let secs = days.checked_mul(86_400)? + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod datetime_tests {
    use super::parse_datetime;

    #[test]
    fn command_line_times_in_the_forms_restic_users_type() {
        let day = 1_796_083_200i64 * 1_000_000_000; // 2026-12-01T00:00:00Z
        assert_eq!(parse_datetime("2026-12-01"), Some(day));
        assert_eq!(
            parse_datetime("2026-12-01 10:30"),
            Some(day + 37_800 * 1_000_000_000)
        );
        assert_eq!(
            parse_datetime("2026-12-01T10:30:00Z"),
            Some(day + 37_800 * 1_000_000_000)
        );
        assert_eq!(
            parse_datetime("2026-12-01T10:30:00.5Z"),
            Some(day + 37_800 * 1_000_000_000 + 500_000_000)
        );
        assert_eq!(
            parse_datetime("2026-12-01T12:30:00+02:00"),
            Some(day + 37_800 * 1_000_000_000)
        );
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "yesterday",
            "2026-12-01 25:00",
            "2026-12",
            "2026-12-01T10:30:00.1234567891Z",
            "",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }
}
