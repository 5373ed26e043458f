//! Per-agent limits and partial updates of them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::MicroUsd;
use crate::period::Period;
use crate::zone::Zone;

/// Default share of a budget at which a `Threshold` notification fires.
pub const DEFAULT_SOFT_THRESHOLD_PCT: u8 = 80;

/// An agent's own limits (any level of the hierarchy). `None` = no limit of its own.
/// In JSON, amounts are dollars (`5.0`), `null` when unset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    #[serde(with = "crate::usd::option")]
    pub per_call: Option<MicroUsd>,
    #[serde(with = "crate::usd::option")]
    pub daily: Option<MicroUsd>,
    #[serde(with = "crate::usd::option")]
    pub weekly: Option<MicroUsd>,
    #[serde(with = "crate::usd::option")]
    pub monthly: Option<MicroUsd>,
    /// Lifetime budget; never resets.
    #[serde(with = "crate::usd::option")]
    pub total: Option<MicroUsd>,
    /// From this instant on, every request of the agent (and its descendants) is blocked.
    pub expires_at: Option<DateTime<Utc>>,
    /// When a budget runs out, stay blocked (`agent_paused`) until resumed instead of reopening
    /// at the next period.
    pub pause_on_exhaust: bool,
    /// Where the notifier POSTs this agent's notifications.
    pub webhook: Option<String>,
    /// Share (percent) of a budget whose spending fires a `Threshold` notification, once per period.
    pub soft_threshold_pct: u8,
    /// Egress policy for hosts that are not provider hosts; `None` = inherited from the nearest
    /// ancestor that sets one (else `default_limits`, else allow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_hosts: Option<OtherHosts>,
    /// Roll-out mode of this agent's subtree; `None` = inherited from the nearest ancestor that
    /// sets one (else `default_limits`, else `enforce`). Absent from the JSON when unset, so a
    /// policy without it reads the same on a release that does not know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Time zone of this level's day, week and month (local midnight, DST included); `None` =
    /// inherited from the nearest ancestor that sets one (else `default_limits`, else UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<Zone>,
}

/// What a tagged connection to a host that is neither a provider host nor in `allowed_hosts` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherHosts {
    /// Passed through byte for byte, never decrypted (unmetered: not an LLM provider we know).
    #[default]
    Allow,
    /// Closed before any byte reaches the destination, audited `host_not_allowed`.
    Deny,
}

impl OtherHosts {
    pub fn as_str(self) -> &'static str {
        match self {
            OtherHosts::Allow => "allow",
            OtherHosts::Deny => "deny",
        }
    }
}

impl fmt::Display for OtherHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OtherHosts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(OtherHosts::Allow),
            "deny" => Ok(OtherHosts::Deny),
            other => Err(format!("{other:?} is not allow or deny")),
        }
    }
}

/// Whether refusals are enforced, or only observed (`limit set NAME --mode observe`): in
/// `observe` every request is metered, reserved and audited as in `enforce`, but a request that
/// would be refused is forwarded anyway and audited `would_block` with the reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Observe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "observe" => Ok(Mode::Observe),
            other => Err(format!("mode {other:?} is neither observe nor enforce")),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_call: None,
            daily: None,
            weekly: None,
            monthly: None,
            total: None,
            expires_at: None,
            pause_on_exhaust: false,
            webhook: None,
            soft_threshold_pct: DEFAULT_SOFT_THRESHOLD_PCT,
            other_hosts: None,
            mode: None,
            tz: None,
        }
    }
}

/// One of the money limits, for messages and hierarchy checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    PerCall,
    Daily,
    Weekly,
    Monthly,
    Total,
}

impl LimitKind {
    pub const ALL: [LimitKind; 5] = [
        LimitKind::PerCall,
        LimitKind::Daily,
        LimitKind::Weekly,
        LimitKind::Monthly,
        LimitKind::Total,
    ];
}

impl From<Period> for LimitKind {
    fn from(p: Period) -> Self {
        match p {
            Period::Daily => LimitKind::Daily,
            Period::Weekly => LimitKind::Weekly,
            Period::Monthly => LimitKind::Monthly,
            Period::Total => LimitKind::Total,
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitKind::PerCall => "per-call",
            LimitKind::Daily => "daily",
            LimitKind::Weekly => "weekly",
            LimitKind::Monthly => "monthly",
            LimitKind::Total => "total",
        })
    }
}

impl Limits {
    /// The budget for one period.
    pub fn period(&self, p: Period) -> Option<MicroUsd> {
        self.get(p.into())
    }

    pub fn get(&self, kind: LimitKind) -> Option<MicroUsd> {
        match kind {
            LimitKind::PerCall => self.per_call,
            LimitKind::Daily => self.daily,
            LimitKind::Weekly => self.weekly,
            LimitKind::Monthly => self.monthly,
            LimitKind::Total => self.total,
        }
    }

    /// Applies `patch`: fields it does not name stay as they are.
    pub fn apply(&mut self, patch: &LimitsPatch) {
        fn set<T: Clone>(field: &mut Option<T>, change: &Option<Option<T>>) {
            if let Some(v) = change {
                field.clone_from(v);
            }
        }
        set(&mut self.per_call, &patch.per_call);
        set(&mut self.daily, &patch.daily);
        set(&mut self.weekly, &patch.weekly);
        set(&mut self.monthly, &patch.monthly);
        set(&mut self.total, &patch.total);
        set(&mut self.expires_at, &patch.expires_at);
        set(&mut self.webhook, &patch.webhook);
        set(&mut self.other_hosts, &patch.other_hosts);
        set(&mut self.mode, &patch.mode);
        set(&mut self.tz, &patch.tz);
        if let Some(p) = patch.pause_on_exhaust {
            self.pause_on_exhaust = p;
        }
        if let Some(p) = patch.soft_threshold_pct {
            self.soft_threshold_pct = p;
        }
    }

    /// These limits with every unset field taken from `defaults` (how `default_limits` applies
    /// to the requesting agent). `pause_on_exhaust` is on if either has it on.
    pub fn or_defaults(&self, defaults: &Limits) -> Limits {
        Limits {
            per_call: self.per_call.or(defaults.per_call),
            daily: self.daily.or(defaults.daily),
            weekly: self.weekly.or(defaults.weekly),
            monthly: self.monthly.or(defaults.monthly),
            total: self.total.or(defaults.total),
            expires_at: self.expires_at.or(defaults.expires_at),
            pause_on_exhaust: self.pause_on_exhaust || defaults.pause_on_exhaust,
            webhook: self.webhook.clone().or_else(|| defaults.webhook.clone()),
            soft_threshold_pct: self.soft_threshold_pct,
            other_hosts: self.other_hosts.or(defaults.other_hosts),
            // Inherited along the path, not per requester: see `State::mode_of`.
            mode: self.mode,
            tz: self.tz.clone(),
        }
    }
}

/// A partial update of [`Limits`]: `None` = leave unchanged, `Some(None)` = remove,
/// `Some(Some(v))` = set. In JSON: field absent = unchanged, `null` = remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(with = "crate::usd::patch", skip_serializing_if = "Option::is_none")]
    pub per_call: Option<Option<MicroUsd>>,
    #[serde(with = "crate::usd::patch", skip_serializing_if = "Option::is_none")]
    pub daily: Option<Option<MicroUsd>>,
    #[serde(with = "crate::usd::patch", skip_serializing_if = "Option::is_none")]
    pub weekly: Option<Option<MicroUsd>>,
    #[serde(with = "crate::usd::patch", skip_serializing_if = "Option::is_none")]
    pub monthly: Option<Option<MicroUsd>>,
    #[serde(with = "crate::usd::patch", skip_serializing_if = "Option::is_none")]
    pub total: Option<Option<MicroUsd>>,
    #[serde(
        with = "crate::usd::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_on_exhaust: Option<bool>,
    #[serde(
        with = "crate::usd::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub webhook: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_threshold_pct: Option<u8>,
    /// `Some(None)` (JSON `null`): inherit again.
    #[serde(
        with = "crate::usd::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub other_hosts: Option<Option<OtherHosts>>,
    /// `Some(None)` (JSON `null`): inherit again.
    #[serde(
        with = "crate::usd::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<Option<Mode>>,
    /// `Some(None)` (JSON `null`): inherit again.
    #[serde(
        with = "crate::usd::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub tz: Option<Option<Zone>>,
}

impl LimitsPatch {
    /// Sets (`Some`) or removes (`None`) the limit of one kind.
    pub fn set(mut self, kind: LimitKind, value: Option<MicroUsd>) -> Self {
        let slot = match kind {
            LimitKind::PerCall => &mut self.per_call,
            LimitKind::Daily => &mut self.daily,
            LimitKind::Weekly => &mut self.weekly,
            LimitKind::Monthly => &mut self.monthly,
            LimitKind::Total => &mut self.total,
        };
        *slot = Some(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_what_it_names() {
        let mut l = Limits {
            daily: Some(MicroUsd::from_usd(5)),
            weekly: Some(MicroUsd::from_usd(20)),
            ..Limits::default()
        };
        let p: LimitsPatch = serde_json::from_str(r#"{"daily": null, "monthly": 50.5}"#).unwrap();
        assert_eq!(p.daily, Some(None));
        assert_eq!(p.weekly, None);
        l.apply(&p);
        assert_eq!(l.daily, None);
        assert_eq!(l.weekly, Some(MicroUsd::from_usd(20)));
        assert_eq!(l.monthly, Some(MicroUsd(50_500_000)));
        assert_eq!(l.soft_threshold_pct, 80);
        // Round trip keeps the three states apart.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<LimitsPatch>(&json).unwrap(), p);
        assert!(serde_json::from_str::<LimitsPatch>(r#"{"dayly": 1}"#).is_err());
    }

    #[test]
    fn limits_json_is_dollars() {
        let l = Limits {
            daily: Some(MicroUsd(4_970_000)),
            ..Limits::default()
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["daily"], serde_json::json!(4.97));
        assert_eq!(v["weekly"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<Limits>(v).unwrap(), l);
    }
}
