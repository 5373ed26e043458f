//! Budget periods: a day starts at local midnight, an ISO week on Monday, a month on the 1st, in
//! the level's time zone ([`Zone`], UTC by default; DST days last 23 or 25 hours, and where the
//! clocks jump over midnight the day starts at the first instant after the gap). `Total` is a
//! lifetime budget and never resets.

use std::fmt;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use jiff::ToSpan as _;
use serde::{Deserialize, Serialize};

use crate::zone::Zone;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
    Total,
}

impl Period {
    pub const ALL: [Period; 4] = [
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Total,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Start of the period that contains `now`. For `Total`, the Unix epoch.
    pub fn start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let day = now.date_naive();
        let first = match self {
            Period::Daily => day,
            Period::Weekly => day
                .checked_sub_days(Days::new(u64::from(day.weekday().num_days_from_monday())))
                .unwrap_or(day),
            Period::Monthly => day.with_day(1).unwrap_or(day),
            Period::Total => return DateTime::UNIX_EPOCH,
        };
        midnight(first)
    }

    /// When the period that contains `now` ends (the next period starts); `None` for `Total`.
    pub fn next_reset(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start(now).date_naive();
        let next = match self {
            Period::Daily => start.checked_add_days(Days::new(1)),
            Period::Weekly => start.checked_add_days(Days::new(7)),
            Period::Monthly => start.checked_add_months(Months::new(1)),
            Period::Total => None,
        }?;
        Some(midnight(next))
    }

    /// [`Period::start`] in `zone`: the first instant of the local period containing `now`.
    pub fn start_in(self, now: DateTime<Utc>, zone: &Zone) -> DateTime<Utc> {
        if zone.is_utc() || self == Period::Total {
            return self.start(now);
        }
        self.local_first_day(now, zone)
            .and_then(|d| zone.start_of(d))
            .unwrap_or_else(|| self.start(now))
    }

    /// [`Period::next_reset`] in `zone`.
    pub fn next_reset_in(self, now: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        if zone.is_utc() || self == Period::Total {
            return self.next_reset(now);
        }
        let next = self.local_first_day(now, zone).and_then(|d| match self {
            Period::Daily => d.tomorrow().ok(),
            Period::Weekly => d.checked_add(7.days()).ok(),
            Period::Monthly => d.checked_add(1.month()).ok(),
            Period::Total => None,
        });
        next.and_then(|d| zone.start_of(d))
            .or_else(|| self.next_reset(now))
    }

    /// The local calendar day the period containing `now` begins on.
    fn local_first_day(self, now: DateTime<Utc>, zone: &Zone) -> Option<jiff::civil::Date> {
        let day = zone.local_date(now)?;
        match self {
            Period::Daily => Some(day),
            Period::Weekly => day
                .checked_sub(i64::from(day.weekday().to_monday_zero_offset()).days())
                .ok(),
            Period::Monthly => Some(day.first_of_month()),
            Period::Total => None,
        }
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(chrono::NaiveTime::MIN).and_utc()
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn daily() {
        let now = t("2026-05-03T23:59:59.999Z");
        assert_eq!(Period::Daily.start(now), t("2026-05-03T00:00:00Z"));
        assert_eq!(
            Period::Daily.next_reset(now),
            Some(t("2026-05-04T00:00:00Z"))
        );
        let midnight = t("2026-05-04T00:00:00Z");
        assert_eq!(Period::Daily.start(midnight), midnight);
    }

    #[test]
    fn weekly_is_iso_monday_including_across_years() {
        // Sunday belongs to the week that started on the Monday before.
        let sunday = t("2026-05-03T12:00:00Z");
        assert_eq!(Period::Weekly.start(sunday), t("2026-04-27T00:00:00Z"));
        assert_eq!(
            Period::Weekly.next_reset(sunday),
            Some(t("2026-05-04T00:00:00Z"))
        );
        let monday = t("2026-05-04T00:00:00Z");
        assert_eq!(Period::Weekly.start(monday), monday);
        // 2025-01-01 (Wednesday) is in ISO week 2025-W01, which starts Monday 2024-12-30.
        let ny = t("2025-01-01T08:00:00Z");
        assert_eq!(ny.iso_week().year(), 2025);
        assert_eq!(Period::Weekly.start(ny), t("2024-12-30T00:00:00Z"));
        // 2021-01-03 (Sunday) is in ISO week 2020-W53, which started Monday 2020-12-28.
        let w53 = t("2021-01-03T23:00:00Z");
        assert_eq!(w53.iso_week().year(), 2020);
        assert_eq!(Period::Weekly.start(w53), t("2020-12-28T00:00:00Z"));
        assert_eq!(
            Period::Weekly.next_reset(w53),
            Some(t("2021-01-04T00:00:00Z"))
        );
    }

    #[test]
    fn monthly_and_leap_day() {
        let now = t("2024-02-29T13:00:00Z");
        assert_eq!(Period::Monthly.start(now), t("2024-02-01T00:00:00Z"));
        assert_eq!(
            Period::Monthly.next_reset(now),
            Some(t("2024-03-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Daily.next_reset(t("2024-02-28T10:00:00Z")),
            Some(t("2024-02-29T00:00:00Z"))
        );
        assert_eq!(
            Period::Daily.next_reset(now),
            Some(t("2024-03-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Monthly.next_reset(t("2025-12-31T23:59:59Z")),
            Some(t("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Monthly.next_reset(t("2026-01-31T10:00:00Z")),
            Some(t("2026-02-01T00:00:00Z"))
        );
    }

    fn z(name: &str) -> Zone {
        Zone::new(name).unwrap()
    }

    #[test]
    fn local_days_last_23_or_25_hours_across_dst() {
        let berlin = z("Europe/Berlin");
        // 2026-03-29: clocks go 02:00 → 03:00 (23 h day); 2026-10-25: 03:00 → 02:00 (25 h).
        let spring = t("2026-03-29T12:00:00Z");
        let s = Period::Daily.start_in(spring, &berlin);
        let n = Period::Daily.next_reset_in(spring, &berlin).unwrap();
        assert_eq!(s, t("2026-03-28T23:00:00Z"));
        assert_eq!(n, t("2026-03-29T22:00:00Z"));
        assert_eq!((n - s).num_hours(), 23);
        let autumn = t("2026-10-25T12:00:00Z");
        let s = Period::Daily.start_in(autumn, &berlin);
        let n = Period::Daily.next_reset_in(autumn, &berlin).unwrap();
        assert_eq!(
            (s, n),
            (t("2026-10-24T22:00:00Z"), t("2026-10-25T23:00:00Z"))
        );
        assert_eq!((n - s).num_hours(), 25);
        // Just before local midnight it is still the old day.
        assert_eq!(
            Period::Daily.start_in(t("2026-07-01T21:59:59Z"), &berlin),
            t("2026-06-30T22:00:00Z")
        );
        assert_eq!(
            berlin.local(n).to_rfc3339(),
            "2026-10-26T00:00:00+01:00",
            "resets are shown with the zone's offset"
        );
    }

    #[test]
    fn where_the_clocks_jump_over_midnight_the_day_starts_after_the_gap() {
        // Chile began DST on 2024-09-08 at 00:00 → 01:00 (-04 → -03).
        let santiago = z("America/Santiago");
        let s = Period::Daily.start_in(t("2024-09-08T12:00:00Z"), &santiago);
        assert_eq!(s, t("2024-09-08T04:00:00Z"));
        assert_eq!(santiago.local(s).to_rfc3339(), "2024-09-08T01:00:00-03:00");
        assert_eq!(
            Period::Daily.next_reset_in(t("2024-09-07T12:00:00Z"), &santiago),
            Some(s)
        );
    }

    #[test]
    fn weeks_months_and_leap_days_in_a_zone() {
        let ny = z("America/New_York");
        // Sunday 2026-05-03 20:00 local (Monday 00:00 UTC) is still the week of Monday 04-27.
        let now = t("2026-05-04T00:00:00Z");
        assert_eq!(Period::Weekly.start_in(now, &ny), t("2026-04-27T04:00:00Z"));
        assert_eq!(
            Period::Weekly.next_reset_in(now, &ny),
            Some(t("2026-05-04T04:00:00Z"))
        );
        assert_eq!(Period::Weekly.start(now), now, "in UTC it is the new week");
        // 2028-02-29 exists; the month ends at local March 1st.
        let leap = t("2028-02-29T23:30:00Z");
        let tokyo = z("Asia/Tokyo");
        assert_eq!(
            Period::Daily.start_in(leap, &tokyo),
            t("2028-02-29T15:00:00Z")
        );
        assert_eq!(
            Period::Monthly.start_in(leap, &tokyo),
            t("2028-02-29T15:00:00Z")
        );
        assert_eq!(
            Period::Monthly.start_in(t("2028-02-29T12:00:00Z"), &tokyo),
            t("2028-01-31T15:00:00Z")
        );
        assert_eq!(
            Period::Monthly.next_reset_in(t("2028-02-29T12:00:00Z"), &tokyo),
            Some(t("2028-02-29T15:00:00Z"))
        );
        assert_eq!(Period::Total.next_reset_in(leap, &tokyo), None);
        // UTC in a zone is the UTC computation.
        assert_eq!(
            Period::Monthly.start_in(leap, &Zone::utc()),
            Period::Monthly.start(leap)
        );
    }

    #[test]
    fn total_never_resets() {
        let now = t("2026-05-03T12:00:00Z");
        assert_eq!(Period::Total.next_reset(now), None);
        assert_eq!(
            Period::Total.start(now),
            Period::Total.start(t("2099-01-01T00:00:00Z"))
        );
    }
}
