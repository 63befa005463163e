//! A user's limits: a byte quota per reset period (both ways together, or each way), an
//! expiry time, a cap on concurrent connections and a rate; the reset periods' windows (UTC
//! calendar days, weeks and months, or a fixed number of seconds, each from an optional
//! instant; or that instant alone, once); the rate's token bucket.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the operator set for a user; every field optional, none set means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes up and down together per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// Bytes towards the destination per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_up: Option<u64>,
    /// Bytes back to the client per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_down: Option<u64>,
    /// When the quota's count starts again; without it (and `reset_at`), never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
    /// Unix time (seconds) at which the count starts again: once, or with `reset` the instant
    /// its periods start from (so a monthly reset on the 15th at 03:00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<u64>,
    /// Unix time (seconds) from which the user opens nothing and its tunnels end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Concurrent connections: a WebSocket connection counts once, whatever it multiplexes;
    /// a gRPC call counts once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Bytes per second, both ways together, shared by the user's tunnels on one server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
}

/// The fields a user entry may carry besides `path` and `dst`: anything else is a mistake
/// worth naming, not a field to ignore.
pub const FIELDS: [&str; 8] = [
    "quota",
    "quota_up",
    "quota_down",
    "reset",
    "reset_at",
    "expires",
    "max_connections",
    "rate",
];

/// When a quota's count starts again: at 00:00 UTC each day, each Monday, the first of each
/// month, or every so many seconds counted from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Daily,
    Weekly,
    Monthly,
    Every(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ResetText {
    Name(String),
    Seconds(u64),
}

impl Serialize for Reset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Reset::Daily => s.serialize_str("daily"),
            Reset::Weekly => s.serialize_str("weekly"),
            Reset::Monthly => s.serialize_str("monthly"),
            Reset::Every(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Reset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bad = || {
            serde::de::Error::custom(
                "reset is \"daily\", \"weekly\", \"monthly\" or a number of seconds (at least 60)",
            )
        };
        match ResetText::deserialize(d).map_err(|_| bad())? {
            ResetText::Name(n) => match n.as_str() {
                "daily" => Ok(Reset::Daily),
                "weekly" => Ok(Reset::Weekly),
                "monthly" => Ok(Reset::Monthly),
                _ => Err(bad()),
            },
            ResetText::Seconds(n) if n >= 60 => Ok(Reset::Every(n)),
            ResetText::Seconds(_) => Err(bad()),
        }
    }
}

const DAY: u64 = 86_400;

const WEEK: u64 = 7 * DAY;

impl Reset {
    /// The length of a fixed period, and where in it periods start: at `anchor`, or by
    /// default at 00:00 UTC, on Mondays (1970-01-05 was one) and at multiples of the length.
    fn fixed(self, anchor: Option<u64>) -> Option<(u64, u64)> {
        let (length, default) = match self {
            Reset::Daily => (DAY, 0),
            Reset::Weekly => (WEEK, 4 * DAY),
            Reset::Every(n) => (n, 0),
            Reset::Monthly => return None,
        };
        Some((length, anchor.unwrap_or(default) % length))
    }

    /// The day of the month and the second of that day a monthly period starts on.
    fn monthly_start(anchor: Option<u64>) -> (u64, u64) {
        anchor.map_or((1, 0), |a| (civil(a / DAY).2, a % DAY))
    }

    /// When month `index` (`year * 12 + month - 1`) begins its period: on the anchor's day,
    /// or the month's last day if it is shorter.
    fn month_begins(index: u64, (day, second): (u64, u64)) -> u64 {
        let (y, m) = (index / 12, index % 12 + 1);
        let first = days_from_civil(y, m);
        let next = index + 1;
        let length = days_from_civil(next / 12, next % 12 + 1) - first;
        (first + day.min(length) - 1) * DAY + second
    }

    /// The number of the period `now` (Unix seconds) falls in, periods starting from
    /// `anchor` (every server of a fleet gives the same number for the same instant). Without
    /// an anchor: days and months start at 00:00 UTC and on the 1st, weeks on Mondays.
    pub fn window(self, now: u64, anchor: Option<u64>) -> u64 {
        if let Some((length, offset)) = self.fixed(anchor) {
            return (now + length - offset) / length;
        }
        let start = Self::monthly_start(anchor);
        let (y, m, _) = civil(now / DAY);
        let index = y * 12 + (m - 1);
        if now < Self::month_begins(index, start) {
            index - 1
        } else {
            index
        }
    }

    /// When the period after `window` starts (Unix seconds).
    pub fn window_end(self, window: u64, anchor: Option<u64>) -> u64 {
        match self.fixed(anchor) {
            Some((length, offset)) => window * length + offset,
            None => Self::month_begins(window + 1, Self::monthly_start(anchor)),
        }
    }
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The day (from 1970-01-01) on which `year`-`month`-01 falls.
fn days_from_civil(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a user opens nothing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Its expiry time has passed.
    Expired,
    /// It used its quota for this period.
    OverQuota,
    /// It has as many connections as it may.
    Connections,
}

impl Refusal {
    /// The label of the refusal in metrics and the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Expired => "expired",
            Refusal::OverQuota => "over_quota",
            Refusal::Connections => "max_connections",
        }
    }
}

impl Limits {
    /// Reads the limit fields of a user entry (`path` and `dst` are the caller's); a field
    /// that is not one of [`FIELDS`], or a value of the wrong kind, is named.
    pub fn from_entry(
        entry: &serde_json::Map<String, serde_json::Value>,
        known: &[&str],
    ) -> Result<Self> {
        if let Some(k) = entry
            .keys()
            .find(|k| !FIELDS.contains(&k.as_str()) && !known.contains(&k.as_str()))
        {
            return Err(Error::usage(format!(
                "unknown field '{k}': a user has {}, and the limits {}",
                known.join(", "),
                FIELDS.join(", ")
            )));
        }
        // Field by field, so that an error names its field.
        fn field<T: serde::de::DeserializeOwned>(
            entry: &serde_json::Map<String, serde_json::Value>,
            name: &str,
            what: &str,
        ) -> Result<Option<T>> {
            match entry.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| Error::usage(format!("{name} {v}: {what} ({e})"))),
            }
        }
        const BYTES: &str = "a number of bytes";
        let limits = Limits {
            quota: field(entry, "quota", BYTES)?,
            quota_up: field(entry, "quota_up", BYTES)?,
            quota_down: field(entry, "quota_down", BYTES)?,
            reset: field(entry, "reset", "see below")?,
            reset_at: field(entry, "reset_at", "a Unix time in seconds")?,
            expires: field(entry, "expires", "a Unix time in seconds")?,
            max_connections: field(entry, "max_connections", "a whole number from 1")?,
            rate: field(entry, "rate", "bytes per second")?,
        };
        limits.check()?;
        Ok(limits)
    }

    /// Values that cannot mean anything useful are refused, naming the field.
    pub fn check(&self) -> Result<()> {
        if self.rate == Some(0) {
            return Err(Error::usage(
                "rate 0: a rate is bytes per second and at least 1; leave it out for no limit",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(Error::usage(
                "max_connections 0 would refuse every connection: remove the user, or set an expiry",
            ));
        }
        if (self.reset.is_some() || self.reset_at.is_some()) && !self.has_quota() {
            return Err(Error::usage(
                "reset without a quota: set quota, quota_up or quota_down too",
            ));
        }
        Ok(())
    }

    /// Whether any quota is set.
    pub fn has_quota(&self) -> bool {
        self.quota.is_some() || self.quota_up.is_some() || self.quota_down.is_some()
    }

    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The quota's current period at `now`: with `reset`, its number; with `reset_at`
    /// alone, 0 before it and 1 from it; else 0.
    pub fn window(&self, now: u64) -> u64 {
        match (self.reset, self.reset_at) {
            (Some(r), anchor) => r.window(now, anchor),
            (None, Some(at)) => u64::from(now >= at),
            (None, None) => 0,
        }
    }

    /// When the count next starts again after `now`, if it does.
    pub fn next_reset(&self, now: u64) -> Option<u64> {
        match (self.reset, self.reset_at) {
            (Some(r), anchor) => Some(r.window_end(r.window(now, anchor), anchor)),
            (None, Some(at)) => (now < at).then_some(at),
            (None, None) => None,
        }
    }

    /// Whether `used` (up, down) in the current period is at or past a quota.
    pub fn over_quota(&self, (up, down): (u64, u64)) -> bool {
        self.quota.is_some_and(|q| up.saturating_add(down) >= q)
            || self.quota_up.is_some_and(|q| up >= q)
            || self.quota_down.is_some_and(|q| down >= q)
    }

    /// Bytes left before a quota is reached (the smallest of those set), `None` without one.
    pub fn remaining(&self, (up, down): (u64, u64)) -> Option<u64> {
        [
            self.quota
                .map(|q| q.saturating_sub(up.saturating_add(down))),
            self.quota_up.map(|q| q.saturating_sub(up)),
            self.quota_down.map(|q| q.saturating_sub(down)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Why the user may not open anything at `now` with `used` bytes in this period, if so.
    pub fn refusal(&self, now: u64, used: (u64, u64)) -> Option<Refusal> {
        if self.expires.is_some_and(|t| now >= t) {
            return Some(Refusal::Expired);
        }
        self.over_quota(used).then_some(Refusal::OverQuota)
    }
}

/// A token bucket of `rate` bytes a second, holding at most a tenth of a second's worth, that
/// may go into debt by one read: a reader waits until the debt is paid, so the long-run rate
/// holds however large each read is.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    pub fn new() -> Self {
        Bucket {
            tokens: 0.0,
            last: tokio::time::Instant::now(),
        }
    }

    /// At `rate` bytes/s: `None` if bytes may move now, else how long to wait.
    pub fn wait(&mut self, rate: u64) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let rate = rate as f64;
        let burst = (rate / 10.0).max(1.0);
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }

    /// Takes `n` bytes' worth (they moved).
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows_start_at_midnight_mondays_and_firsts() {
        // 2026-12-07 is a Monday; 2026-12-07T21:22:36Z.
        let t = 1_796_678_556;
        assert_eq!(civil(t / DAY), (2026, 12, 7));
        let end = |r: Reset, at: u64| r.window_end(r.window(at, None), None);
        assert_eq!(end(Reset::Daily, t), 1_796_688_000); // 2026-12-08T00:00Z
        assert_eq!(end(Reset::Weekly, t), 1_797_206_400); // 2026-12-14T00:00Z
        let w = Reset::Weekly.window(t, None);
        assert_eq!(Reset::Weekly.window(1_796_601_600, None), w); // Monday 00:00 is in it
        assert_eq!(Reset::Weekly.window(1_796_601_599, None), w - 1); // Sunday 23:59:59 is not
        let m = Reset::Monthly.window(t, None);
        assert_eq!(m, 2026 * 12 + 11);
        assert_eq!(end(Reset::Monthly, t), 1_798_761_600); // 2027-01-01T00:00Z
        assert_eq!(Reset::Monthly.window(1_798_761_599, None), m);
        assert_eq!(Reset::Monthly.window(1_798_761_600, None), m + 1);
        // February of a leap year ends on the 29th.
        assert_eq!(days_from_civil(2028, 3) - days_from_civil(2028, 2), 29);
        assert_eq!(Reset::Monthly.window(1_835_481_600, None), 2028 * 12 + 2); // 2028-03-01
        assert_eq!(end(Reset::Every(3600), t), 1_796_680_800);
    }

    #[test]
    fn periods_start_from_the_reset_time() {
        // Monthly from 2026-01-31T03:00Z: the last day of shorter months, at 03:00.
        let anchor = Some(1_769_828_400);
        let r = Reset::Monthly;
        let nov_30 = 1_796_007_600; // 2026-11-30T03:00Z
        assert_eq!(r.window(nov_30 - 1, anchor) + 1, r.window(nov_30, anchor));
        assert_eq!(r.window_end(r.window(nov_30 - 1, anchor), anchor), nov_30);
        assert_eq!(
            r.window_end(r.window(nov_30, anchor), anchor),
            1_798_686_000
        ); // 12-31T03:00Z
        let feb_28 = 1_803_783_600; // 2027-02-28T03:00Z
        assert_eq!(r.window_end(r.window(feb_28 - 5, anchor), anchor), feb_28);
        // Daily at 04:30 and weekly from a Wednesday noon.
        let t = 1_796_678_556; // Monday 2026-12-07T21:22:36Z
        assert_eq!(
            Reset::Daily.window_end(Reset::Daily.window(t, Some(16_200)), Some(16_200)),
            1_796_704_200
        );
        let wed_noon = 1_796_212_800; // 2026-12-02T12:00Z
        let w = Reset::Weekly;
        assert_eq!(
            w.window_end(w.window(t, Some(wed_noon)), Some(wed_noon)),
            1_796_817_600
        ); // 12-09T12:00Z
        // A reset time alone: one new count, from it on.
        let once = Limits {
            quota: Some(1),
            reset_at: Some(t),
            ..Default::default()
        };
        assert_eq!((once.window(t - 1), once.window(t)), (0, 1));
        assert_eq!(
            (once.next_reset(t - 1), once.next_reset(t)),
            (Some(t), None)
        );
    }

    #[test]
    fn entries_name_unknown_fields_and_bad_values() {
        let map = |v: serde_json::Value| v.as_object().cloned().expect("object");
        let known = ["path", "dst"];
        let l = Limits::from_entry(
            &map(serde_json::json!({"dst":"x:1","quota":100,"reset":"monthly","expires":5,"max_connections":2,"rate":1000})),
            &known,
        )
        .expect("limits");
        assert_eq!(l.reset, Some(Reset::Monthly));
        assert_eq!(l.max_connections, Some(2));
        let e = Limits::from_entry(&map(serde_json::json!({"qouta":1})), &known).unwrap_err();
        assert!(
            e.report().to_string().contains("unknown field 'qouta'"),
            "{}",
            e.report()
        );
        for bad in [
            serde_json::json!({"reset":"hourly","quota":1}),
            serde_json::json!({"reset":5,"quota":1}),
            serde_json::json!({"reset":"daily"}),
            serde_json::json!({"rate":0}),
            serde_json::json!({"max_connections":0}),
            serde_json::json!({"quota":-1}),
            serde_json::json!({"expires":"tomorrow"}),
        ] {
            assert!(
                Limits::from_entry(&map(bad.clone()), &known).is_err(),
                "{bad}"
            );
        }
        // null is "not set", as the dashboard sends an emptied field.
        let l = Limits::from_entry(&map(serde_json::json!({"quota":null})), &known).expect("ok");
        assert!(l.is_empty());
    }

    #[test]
    fn quotas_refuse_at_the_limit_and_say_what_is_left() {
        let l = Limits {
            quota: Some(100),
            quota_down: Some(60),
            expires: Some(1000),
            ..Default::default()
        };
        assert_eq!(l.refusal(10, (30, 59)), None);
        assert_eq!(l.remaining((30, 59)), Some(1));
        assert_eq!(l.refusal(10, (0, 60)), Some(Refusal::OverQuota));
        assert_eq!(l.refusal(10, (50, 50)), Some(Refusal::OverQuota));
        assert_eq!(l.refusal(1000, (0, 0)), Some(Refusal::Expired));
        assert_eq!(Limits::default().remaining((5, 5)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_holds_its_rate_over_time() {
        let mut b = Bucket::new();
        let rate = 1_000_000;
        let mut moved = 0u64;
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            match b.wait(rate) {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    b.spend(256 * 1024);
                    moved += 256 * 1024;
                }
            }
        }
        let per_s = moved as f64 / start.elapsed().as_secs_f64();
        assert!((per_s - rate as f64).abs() < rate as f64 * 0.06, "{per_s}");
    }
}
