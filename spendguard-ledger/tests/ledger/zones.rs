//! Budget periods in time zones: properties over random instants around DST changes, and a
//! hierarchy whose levels live in different zones.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc, Weekday};
use proptest::prelude::*;

use crate::common::*;
use spendguard_ledger::*;

/// Zones with 1 h DST (both hemispheres), a 30 min DST (Lord Howe), DST at midnight (Santiago,
/// Havana), none (Kolkata, +05:30), and +12:45/+13:45 (Chatham).
const ZONES: &[&str] = &[
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
    "Asia/Kolkata",
    "Pacific/Chatham",
];

fn chrono_of(ts: jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.as_second(), 0).unwrap()
}

/// The DST transitions of `zone` in `year` (none for a zone without DST).
fn transitions(zone: &str, year: i16) -> Vec<DateTime<Utc>> {
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    let from = jiff::civil::date(year, 1, 1)
        .to_zoned(tz.clone())
        .unwrap()
        .timestamp();
    let to = jiff::civil::date(year + 1, 1, 1)
        .to_zoned(tz.clone())
        .unwrap()
        .timestamp();
    tz.following(from)
        .take_while(|tr| tr.timestamp() < to)
        .map(|tr| chrono_of(tr.timestamp()))
        .collect()
}

/// Local calendar date and wall clock of `t` in `zone`.
fn local(zone: &Zone, t: DateTime<Utc>) -> chrono::DateTime<chrono::FixedOffset> {
    zone.local(t)
}

fn check(zone: &Zone, t: DateTime<Utc>) -> Result<(), TestCaseError> {
    let ns = Duration::nanoseconds(1);
    for p in [Period::Daily, Period::Weekly, Period::Monthly] {
        let s = p.start_in(t, zone);
        let n = p.next_reset_in(t, zone).unwrap();
        prop_assert!(s <= t && t < n, "{p} {zone}: {s} <= {t} < {n}");
        // Contiguous: the next period starts exactly at the reset, and began where this ended.
        prop_assert_eq!(
            p.start_in(n, zone),
            n,
            "{} {}: reset {} is a start",
            p,
            zone,
            n
        );
        prop_assert_eq!(p.start_in(s, zone), s);
        prop_assert_eq!(p.next_reset_in(s - ns, zone), Some(s));
        prop_assert!(p.start_in(s - ns, zone) < s);
        // The start is the first instant of its local day: the instant before is the day before.
        let (ls, before) = (local(zone, s), local(zone, s - ns));
        prop_assert_ne!(
            ls.date_naive(),
            before.date_naive(),
            "{} {}: {}",
            p,
            zone,
            ls
        );
        prop_assert!(ls.hour() <= 1, "{p} {zone}: starts at {ls}");
        match p {
            Period::Daily => {
                let len = n - s;
                prop_assert!(
                    len >= Duration::hours(23) && len <= Duration::hours(25),
                    "{zone}: a day of {len}"
                );
                prop_assert_eq!(ls.date_naive(), local(zone, t).date_naive());
            }
            Period::Weekly => {
                prop_assert_eq!(ls.weekday(), Weekday::Mon);
                let len = n - s;
                prop_assert!(len >= Duration::hours(167) && len <= Duration::hours(169));
            }
            Period::Monthly => {
                prop_assert_eq!(ls.day(), 1);
                prop_assert_eq!(ls.month(), local(zone, t).month());
            }
            Period::Total => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn periods_hold_around_dst_changes(
        zi in 0..ZONES.len(),
        year in 2000i16..2037,
        which in 0usize..4,
        offset_s in -(3 * 86_400i64)..(3 * 86_400),
    ) {
        let name = ZONES[zi];
        let zone = Zone::new(name).unwrap();
        let trs = transitions(name, year);
        let base = match trs.get(which % trs.len().max(1)) {
            Some(t) => *t,
            None => chrono_of(jiff::civil::date(year, 6, 15).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp()),
        };
        check(&zone, base + Duration::seconds(offset_s))?;
    }

    #[test]
    fn periods_hold_at_any_instant(
        zi in 0..ZONES.len(),
        secs in 946_684_800i64..2_145_916_800,
    ) {
        let zone = Zone::new(ZONES[zi]).unwrap();
        check(&zone, DateTime::from_timestamp(secs, 0).unwrap())?;
    }
}

#[test]
fn the_zones_under_test_do_change_their_clocks() {
    assert_eq!(transitions("Europe/Berlin", 2026).len(), 2);
    assert_eq!(transitions("America/Santiago", 2024).len(), 2);
    assert!(transitions("Asia/Kolkata", 2026).is_empty());
}

async fn set_tz(ledger: &Ledger, agent: &str, zone: Option<&str>) {
    let patch = LimitsPatch {
        tz: Some(zone.map(|z| Zone::new(z).unwrap())),
        ..LimitsPatch::default()
    };
    ledger.set_limits(&name(agent), patch).await.unwrap();
}

#[tokio::test]
async fn each_level_resets_at_its_own_local_midnight() {
    // 21:30 UTC on 2026-07-01: already July 2nd in Berlin (+02:00), still July 1st in UTC.
    let fx = Fixture::at("2026-07-01T21:30:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(10))).await;
    set(&ledger, "acme.eu", LimitKind::Daily, Some(usd(5))).await;
    set_tz(&ledger, "acme.eu", Some("Europe/Berlin")).await;
    assert_eq!(
        ledger.status(&name("acme.eu.bot")).tz.name(),
        "Europe/Berlin",
        "inherited"
    );
    assert_eq!(ledger.status(&name("acme")).tz.name(), "UTC");

    spend(&ledger, "acme.eu.bot", usd(4)).await;
    let s = ledger.status(&name("acme.eu"));
    assert_eq!(
        serde_json::to_value(s.period_resets).unwrap()["daily"],
        "2026-07-02T00:00:00+02:00"
    );
    // 22:30 UTC: a new day in Berlin, not in UTC.
    fx.clock.set(t("2026-07-01T22:30:00Z"));
    let eu = ledger.status(&name("acme.eu"));
    assert_eq!(eu.spent.daily, MicroUsd::ZERO, "Berlin's day rolled over");
    assert_eq!(
        ledger.status(&name("acme")).spent.daily,
        usd(4),
        "UTC's did not"
    );
    // The UTC parent still binds: 6 more today would break acme's $10 (4 + 7 > 10).
    let d = denied(ledger.reserve(req(&name("acme.eu.bot"), usd(7))).await);
    assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
    assert_eq!(d.agent, name("acme.eu"), "the child's $5 binds first");
    let d = denied(ledger.reserve(req(&name("acme.other"), usd(7))).await);
    assert_eq!(d.agent, name("acme"));
    assert!(
        d.message.contains("resets 2026-07-02T00:00:00Z"),
        "{}",
        d.message
    );
    spend(&ledger, "acme.eu.bot", usd(5)).await;
    let d = denied(ledger.reserve(req(&name("acme.eu.bot"), usd(1))).await);
    assert!(
        d.message.contains("resets 2026-07-03T00:00:00+02:00"),
        "{}",
        d.message
    );
    // Survives a restart; `none` inherits (UTC) again.
    drop(ledger);
    let ledger = fx.open();
    assert_eq!(
        ledger.limits(&name("acme.eu")).tz.map(|z| z.to_string()),
        Some("Europe/Berlin".into())
    );
    set_tz(&ledger, "acme.eu", None).await;
    assert_eq!(ledger.status(&name("acme.eu")).tz.name(), "UTC");
}
