//! Budget windows: `total`, calendar `hour`/`day`/`month` (UTC, wall clock), and
//! `rolling:<duration>`. Pure functions of a timestamp, unit-tested.

use std::{fmt, str::FromStr, time::Duration};

use time::{Date, Month, OffsetDateTime, Time};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Never resets.
    Total,
    Hour,
    Day,
    Month,
    /// The spend of the last `Duration`, at any moment.
    Rolling(Duration),
}

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "total" => Ok(Window::Total),
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            "month" => Ok(Window::Month),
            _ => match s.strip_prefix("rolling:") {
                Some(d) => parse_duration(d).map(Window::Rolling).map_err(|e| format!("{s:?}: {e}")),
                None => Err(format!(
                    "unknown window {s:?}; use total, hour, day, month or rolling:<duration> (e.g. rolling:30m)"
                )),
            },
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Total => f.write_str("total"),
            Window::Hour => f.write_str("hour"),
            Window::Day => f.write_str("day"),
            Window::Month => f.write_str("month"),
            Window::Rolling(d) => write!(f, "rolling:{}", format_duration(*d)),
        }
    }
}

/// `90s`, `30m`, `2h`, `1d`: a whole number and one unit; at least one second.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration such as 90s, 30m, 2h or 1d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86400),
        _ => return Err(format!("{s:?} is not a duration such as 90s, 30m, 2h or 1d")),
    };
    if secs == 0 {
        return Err(format!("{s:?} must be at least 1s"));
    }
    Ok(Duration::from_secs(secs))
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

impl Window {
    /// Start and end (unix seconds, end exclusive) of the calendar window holding `now`;
    /// None for `total` and rolling windows, which have no boundaries.
    pub fn bounds(&self, now: i64) -> Option<(i64, i64)> {
        let t = OffsetDateTime::from_unix_timestamp(now).ok()?;
        let (start, end) = match self {
            Window::Total | Window::Rolling(_) => return None,
            Window::Hour => {
                let s = t.replace_time(Time::from_hms(t.hour(), 0, 0).ok()?);
                (s, s + time::Duration::HOUR)
            }
            Window::Day => {
                let s = t.replace_time(Time::MIDNIGHT);
                (s, s + time::Duration::DAY)
            }
            Window::Month => {
                let first = Date::from_calendar_date(t.year(), t.month(), 1).ok()?;
                let (y, m) = if t.month() == Month::December {
                    (t.year() + 1, Month::January)
                } else {
                    (t.year(), t.month().next())
                };
                let next = Date::from_calendar_date(y, m, 1).ok()?;
                (first.midnight().assume_utc(), next.midnight().assume_utc())
            }
        };
        Some((start.unix_timestamp(), end.unix_timestamp()))
    }
}

/// RFC 3339 text of unix seconds (UTC).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn ts(t: OffsetDateTime) -> i64 {
        t.unix_timestamp()
    }

    #[test]
    fn parses_every_window() {
        assert_eq!("total".parse(), Ok(Window::Total));
        assert_eq!("month".parse(), Ok(Window::Month));
        assert_eq!("rolling:30m".parse(), Ok(Window::Rolling(Duration::from_secs(1800))));
        assert_eq!("rolling:1d".parse::<Window>().unwrap().to_string(), "rolling:1d");
        for bad in ["weekly", "rolling:", "rolling:0s", "rolling:5x", "rolling:-5m", "Total"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn calendar_bounds_are_utc() {
        let now = ts(datetime!(2026-02-28 23:59:59 UTC));
        assert_eq!(
            Window::Hour.bounds(now),
            Some((ts(datetime!(2026-02-28 23:00 UTC)), ts(datetime!(2026-03-01 00:00 UTC))))
        );
        assert_eq!(
            Window::Day.bounds(now),
            Some((ts(datetime!(2026-02-28 00:00 UTC)), ts(datetime!(2026-03-01 00:00 UTC))))
        );
        assert_eq!(
            Window::Month.bounds(now),
            Some((ts(datetime!(2026-02-01 00:00 UTC)), ts(datetime!(2026-03-01 00:00 UTC))))
        );
        let dec = ts(datetime!(2026-12-15 12:00 UTC));
        assert_eq!(
            Window::Month.bounds(dec),
            Some((ts(datetime!(2026-12-01 00:00 UTC)), ts(datetime!(2027-01-01 00:00 UTC))))
        );
        assert_eq!(Window::Total.bounds(now), None);
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
