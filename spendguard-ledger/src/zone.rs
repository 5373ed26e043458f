//! Time zones of budget periods (`limit set NAME --tz ZONE`): an IANA name and its rules.
//!
//! The rules come from jiff's copy of the IANA time zone database, compiled into the binary
//! (`tzdb-bundle-always`): every node of a cluster computes the same boundaries whatever the
//! host's `/usr/share/zoneinfo` holds (or lacks, as in a distroless image).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A validated IANA time zone (`Europe/Berlin`, `America/New_York`, `UTC`).
#[derive(Clone)]
pub struct Zone {
    name: Arc<str>,
    tz: TimeZone,
    utc: bool,
}

/// Why a string is not a time zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{name}' is not a time zone SpendGuard knows: {detail}; use an IANA name such as \
     Europe/Berlin, America/New_York or UTC"
)]
pub struct ZoneError {
    pub name: String,
    pub detail: String,
}

impl Zone {
    /// Coordinated Universal Time, the default.
    pub fn utc() -> Zone {
        static UTC: std::sync::LazyLock<Zone> = std::sync::LazyLock::new(|| Zone {
            name: Arc::from("UTC"),
            tz: TimeZone::UTC,
            utc: true,
        });
        UTC.clone()
    }

    pub fn new(name: &str) -> Result<Zone, ZoneError> {
        let fail = |detail: String| ZoneError {
            name: name.to_string(),
            detail,
        };
        if name.is_empty() || name.len() > 64 || name.starts_with('/') || name.contains("..") {
            return Err(fail("not an IANA zone name".into()));
        }
        let tz = TimeZone::get(name).map_err(|e| fail(e.to_string()))?;
        let utc = matches!(
            name,
            "UTC"
                | "Etc/UTC"
                | "Etc/UCT"
                | "UCT"
                | "Etc/Universal"
                | "Universal"
                | "Zulu"
                | "Etc/Zulu"
        );
        Ok(Zone {
            name: Arc::from(name),
            tz,
            utc,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// UTC itself: periods are computed without the zone rules (the fast path).
    pub fn is_utc(&self) -> bool {
        self.utc
    }

    fn timestamp(t: DateTime<Utc>) -> Option<jiff::Timestamp> {
        let nanos = i32::try_from(t.timestamp_subsec_nanos()).ok()?;
        jiff::Timestamp::new(t.timestamp(), nanos).ok()
    }

    /// The local calendar date at `t`.
    pub(crate) fn local_date(&self, t: DateTime<Utc>) -> Option<Date> {
        Some(Self::timestamp(t)?.to_zoned(self.tz.clone()).date())
    }

    /// The first instant of local day `d`: local midnight, or the first instant after a gap
    /// when the clocks jump over midnight.
    pub(crate) fn start_of(&self, d: Date) -> Option<DateTime<Utc>> {
        let z = d.to_zoned(self.tz.clone()).ok()?.start_of_day().ok()?;
        let ts = z.timestamp();
        let nanos = u32::try_from(ts.subsec_nanosecond()).ok()?;
        DateTime::from_timestamp(ts.as_second(), nanos)
    }

    /// `t` as this zone's local time with its offset (RFC 3339 shows e.g. `+02:00`).
    pub fn local(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        let utc = FixedOffset::east_opt(0).unwrap_or_else(|| unreachable!("zero is in range"));
        if self.utc {
            return t.with_timezone(&utc);
        }
        let secs = Self::timestamp(t).map_or(0, |ts| self.tz.to_offset(ts).seconds());
        t.with_timezone(&FixedOffset::east_opt(secs).unwrap_or(utc))
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone::utc()
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for Zone {
    type Err = ZoneError;
    fn from_str(s: &str) -> Result<Zone, ZoneError> {
        Zone::new(s)
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Zone, D::Error> {
        let name = String::deserialize(d)?;
        Zone::new(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_with_a_hint() {
        assert_eq!(Zone::new("Europe/Berlin").unwrap().name(), "Europe/Berlin");
        assert!(Zone::new("UTC").unwrap().is_utc());
        assert!(!Zone::new("Asia/Kolkata").unwrap().is_utc());
        for bad in [
            "",
            "Mars/Olympus",
            "/etc/passwd",
            "../../etc/passwd",
            "Europe/Berlin2",
        ] {
            let e = Zone::new(bad).unwrap_err();
            assert!(e.to_string().contains("IANA name"), "{bad}: {e}");
        }
        let z: Zone = serde_json::from_str("\"America/New_York\"").unwrap();
        assert_eq!(serde_json::to_string(&z).unwrap(), "\"America/New_York\"");
        assert!(serde_json::from_str::<Zone>("\"Nowhere/City\"").is_err());
    }

    #[test]
    fn local_time_carries_the_offset() {
        let z = Zone::new("Europe/Berlin").unwrap();
        let t: DateTime<Utc> = "2026-07-01T10:00:00Z".parse().unwrap();
        assert_eq!(z.local(t).to_rfc3339(), "2026-07-01T12:00:00+02:00");
        let t: DateTime<Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
        assert_eq!(z.local(t).to_rfc3339(), "2026-01-01T11:00:00+01:00");
    }
}
