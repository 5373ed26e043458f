//! Budget periods. All boundaries are UTC: a day starts at 00:00, an ISO week on Monday 00:00, a
//! month on the 1st at 00:00. `Total` is a lifetime budget and never resets.

use std::fmt;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

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
