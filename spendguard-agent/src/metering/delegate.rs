//! Budgets handed down from inside a workload: `POST /.well-known/spendguard/delegate` creates
//! or narrows a budget below the caller's own agent (the caller is known by its cgroup, so no
//! credentials are needed and none are accepted).
//!
//! Nothing a workload sends can widen anything: the budget must lie below the caller (resolved
//! as the routing header is, [`subtree::resolve`]), every limit it sets must fit in what the
//! caller has left, an existing limit may only be lowered, and one workload may create at most
//! `delegate_max_children` budgets. A refusal changes nothing and is never forwarded.
//!
//! Who created a budget is a shared ledger setting (`delegation/<budget>`): it travels with the
//! cluster store like a price override, and `status`/`agents` show it as `created_by`.

use chrono::{DateTime, Utc};
use http::{header, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use spendguard_ledger::Ledger;
use spendguard_ledger::{
    AgentName, AuditContext, DelegationAudit, LedgerError, LimitKind, LimitsPatch, MicroUsd,
};

use super::stage::{collect_limited, drain, Collect};
use crate::identity::subtree::{self, SubtreeError};
use crate::proxy::body::{full, Body};
use crate::proxy::reply::json_error;
use crate::proxy::stage::{Decision, RequestContext};

/// Setting key prefix of the delegation records (`delegation/<budget>`).
pub const SETTING_PREFIX: &str = "delegation/";

/// The largest delegation body read (a real one is under 200 bytes).
const MAX_BODY: usize = 16 * 1024;

/// What a workload sends. Amounts are dollars; every limit is optional; anything else is refused.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelegateRequest {
    pub agent: String,
    #[serde(
        default,
        with = "spendguard_ledger::usd::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub total: Option<MicroUsd>,
    #[serde(
        default,
        with = "spendguard_ledger::usd::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub daily: Option<MicroUsd>,
    #[serde(
        default,
        with = "spendguard_ledger::usd::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_call: Option<MicroUsd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

impl DelegateRequest {
    fn limits(&self) -> [(LimitKind, Option<MicroUsd>); 3] {
        [
            (LimitKind::Total, self.total),
            (LimitKind::Daily, self.daily),
            (LimitKind::PerCall, self.per_call),
        ]
    }
}

/// Who created a budget (the `delegation/<budget>` setting).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Record {
    /// The delegating agent.
    pub created_by: AgentName,
    /// The workload's own agent (its cgroup's tag): the bound on created budgets counts per it.
    pub workload: AgentName,
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Serialises delegations on this node, so two at once cannot both pass the checks (narrowing
/// only, the bound on created budgets) against the same old state.
pub struct Delegations {
    max_children: u32,
    lock: tokio::sync::Mutex<()>,
}

/// A refusal: status, error code, message.
struct Refusal(StatusCode, &'static str, String);

impl Delegations {
    pub fn new(max_children: u32) -> Delegations {
        Delegations {
            max_children,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Answers a delegation (`ctx.identity.agent` is the caller, after routing; `workload` is
    /// the cgroup's own agent). The request never leaves the node.
    pub async fn handle(
        &self,
        ledger: &Ledger,
        workload: &AgentName,
        ctx: &RequestContext,
        req: Request<Body>,
    ) -> Decision {
        let caller = &ctx.identity.agent;
        let mut given = String::new();
        let answer = match self.delegate(ledger, workload, ctx, req, &mut given).await {
            Ok(child) => {
                let mut resp = Response::new(full(
                    serde_json::to_vec_pretty(&status_json(ledger, &child)).unwrap_or_default(),
                ));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(Refusal(status, code, msg)) => {
                tracing::info!(agent = %caller, requested_agent = %given, code, "delegation refused: {msg}");
                let kind = if status == StatusCode::FORBIDDEN {
                    "permission_denied"
                } else if status == StatusCode::SERVICE_UNAVAILABLE {
                    "spendguard_unavailable"
                } else {
                    "invalid_request_error"
                };
                json_error(
                    status,
                    &ctx.sni,
                    kind,
                    &msg,
                    serde_json::json!({"code": code, "agent": caller.as_str(), "requested_agent": given}),
                )
            }
        };
        Decision::Respond(answer)
    }

    async fn delegate(
        &self,
        ledger: &Ledger,
        workload: &AgentName,
        ctx: &RequestContext,
        req: Request<Body>,
        given: &mut String,
    ) -> Result<AgentName, Refusal> {
        let caller = &ctx.identity.agent;
        let bad = |msg: String| Refusal(StatusCode::BAD_REQUEST, "INVALID_DELEGATION", msg);
        let forbidden = |code, msg| Refusal(StatusCode::FORBIDDEN, code, msg);
        if req.method() != Method::POST {
            let m = req.method().clone();
            drain(req).await;
            return Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "INVALID_DELEGATION",
                format!("{m} {}: delegations are POSTed", super::DELEGATE_PATH),
            ));
        }
        let bytes = match collect_limited(req.into_body(), MAX_BODY).await {
            Ok(b) => b,
            Err(Collect::TooLarge { rest, .. }) => {
                drain(Request::new(rest)).await;
                return Err(bad(format!(
                    "delegation body larger than {MAX_BODY} bytes; send {{\"agent\": \"task-1\", \"total\": 20}}"
                )));
            }
            Err(Collect::Broken(e)) => return Err(bad(format!("body could not be read: {e}"))),
        };
        let d: DelegateRequest = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not a delegation ({e}); send JSON {{\"agent\": \"task-1\", \"total\": USD, \"daily\": USD, \"per_call\": USD, \"expires\": RFC3339}}, each limit optional"
            ))
        })?;
        *given = d.agent.chars().take(80).collect();
        let child = match subtree::resolve(caller, &d.agent) {
            Ok(c) => c,
            Err(e @ SubtreeError::Invalid { .. }) => {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "INVALID_AGENT_NAME",
                    e.to_string(),
                ))
            }
            Err(e @ SubtreeError::Outside { .. }) => {
                return Err(forbidden("AGENT_OUTSIDE_SUBTREE", e.to_string()))
            }
        };
        if &child == caller {
            return Err(forbidden(
                "AGENT_OUTSIDE_SUBTREE",
                format!("{caller} cannot set its own budget: name a budget below it (task-1 = {caller}.task-1)"),
            ));
        }

        let _one_at_a_time = self.lock.lock().await;
        // Every limit must fit in what the caller has left (the tightest of its periods, over
        // itself and its ancestors): a child can never be promised more than its parent can pay.
        // With a cluster store, what is left cluster-wide; unknown, nothing is changed.
        let left = match ledger.cluster_status(caller).await {
            None => ledger.status(caller).remaining.tightest(),
            Some(Ok(u)) => u.status.remaining.tightest(),
            Some(Err(e)) => {
                tracing::error!(agent = %caller, "delegation refused: {e}");
                return Err(Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SPENDGUARD_UNAVAILABLE",
                    "SpendGuard cannot tell what the caller has left (the cluster budget store is unreachable); nothing was changed. The node's spendguard-agent log says why.".into(),
                ));
            }
        };
        for (kind, v) in d.limits() {
            if let Some(v) = v.filter(|v| *v > left) {
                return Err(forbidden(
                    "LIMIT_ABOVE_REMAINING",
                    format!(
                        "the {kind} limit {v} for {child} is more than {caller} has left ({left})"
                    ),
                ));
            }
        }
        // Narrowing only: an existing limit may be lowered, never raised.
        let exists = ledger.knows(&child);
        let old = ledger.limits(&child);
        if exists {
            for (kind, v) in d.limits() {
                if let (Some(v), Some(was)) = (v, old.get(kind)) {
                    if v > was {
                        return Err(forbidden(
                            "LIMIT_RAISE",
                            format!("{child}'s {kind} limit is {was}: a delegation may lower it, never raise it to {v}"),
                        ));
                    }
                }
            }
            if let (Some(new), Some(was)) = (d.expires, old.expires_at) {
                if new > was {
                    return Err(forbidden(
                        "LIMIT_RAISE",
                        format!("{child} expires at {was}: a delegation may bring that forward, never push it back to {new}"),
                    ));
                }
            }
        }
        let created = !exists && record(ledger, &child).is_none();
        if created {
            let prefix = format!("{SETTING_PREFIX}{workload}.");
            let made = ledger.settings_with_prefix(&prefix).len();
            if made >= self.max_children as usize {
                return Err(forbidden(
                    "TOO_MANY_CHILDREN",
                    format!(
                        "{workload} has created {made} budgets, the most delegate_max_children allows ({}); narrow an existing one, or ask the operator to raise delegate_max_children",
                        self.max_children
                    ),
                ));
            }
        }

        let unavailable = |e: LedgerError| {
            tracing::error!(agent = %caller, %child, "delegation not recorded: {e}");
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "SPENDGUARD_UNAVAILABLE",
                "SpendGuard cannot record the delegation (its ledger cannot write); nothing was changed. The node's spendguard-agent log says why.".into(),
            )
        };
        let rec = Record {
            created_by: caller.clone(),
            workload: workload.clone(),
            cgroup: ctx.identity.tagged_cgroup.display().to_string(),
            pod: ctx.identity.pod.clone(),
            created_at: Utc::now(),
        };
        // The record first: a budget that exists is always counted against the workload.
        let key = format!("{SETTING_PREFIX}{child}");
        if created {
            let v = serde_json::to_value(&rec).unwrap_or_default();
            ledger
                .put_shared_setting(&key, v)
                .await
                .map_err(unavailable)?;
        }
        let mut patch = LimitsPatch::default();
        for (kind, v) in d.limits() {
            if v.is_some() {
                patch = patch.set(kind, v);
            }
        }
        if d.expires.is_some() {
            patch.expires_at = Some(d.expires);
        }
        if let Err(e) = ledger.set_limits(&child, patch).await {
            if created {
                if let Err(e) = ledger.delete_setting(&key).await {
                    tracing::warn!(%child, "delegation record left behind: {e}");
                }
            }
            return Err(match e {
                // The hierarchy's own rule (no limit above an ancestor's or below a
                // descendant's of the same kind).
                LedgerError::LimitAboveAncestor { .. } => {
                    forbidden("LIMIT_ABOVE_REMAINING", e.to_string())
                }
                LedgerError::LimitBelowDescendant { .. } => {
                    forbidden("LIMIT_BELOW_DESCENDANT", e.to_string())
                }
                other => unavailable(other),
            });
        }
        let audit = AuditContext {
            cgroup: match &rec.pod {
                Some(pod) => format!("{} (pod {pod})", rec.cgroup),
                None => rec.cgroup.clone(),
            },
            host: ctx.sni.clone(),
            model: String::new(),
            provider: "spendguard".into(),
            payment: None,
            delegation: Some(DelegationAudit {
                created_by: caller.clone(),
                created,
                pod: rec.pod.clone(),
                set: serde_json::to_value(&d).unwrap_or_default(),
            }),
        };
        if let Err(e) = ledger.audit_note(child.clone(), audit).await {
            tracing::error!(%child, "audit of a delegation failed (the budget was set): {e}");
        }
        tracing::info!(agent = %caller, %child, created, "delegation");
        Ok(child)
    }
}

/// Who created `agent` by a delegation, if anyone did.
pub fn record(ledger: &Ledger, agent: &AgentName) -> Option<Record> {
    ledger
        .setting(&format!("{SETTING_PREFIX}{agent}"))
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Every budget created by a delegation, with its record, sorted by name.
pub fn records(ledger: &Ledger) -> Vec<(String, Record)> {
    ledger
        .settings_with_prefix(SETTING_PREFIX)
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(SETTING_PREFIX)?.to_string();
            Some((name, serde_json::from_value(v).ok()?))
        })
        .collect()
}

/// The agent's status JSON with `created_by` (the delegating agent; `null` for budgets an
/// operator made).
pub fn status_json(ledger: &Ledger, agent: &AgentName) -> serde_json::Value {
    with_created_by(
        ledger,
        agent,
        serde_json::to_value(ledger.status(agent)).unwrap_or_default(),
    )
}

/// Adds `created_by` to a status JSON object.
pub fn with_created_by(
    ledger: &Ledger,
    agent: &AgentName,
    mut status: serde_json::Value,
) -> serde_json::Value {
    if let Some(obj) = status.as_object_mut() {
        let by = record(ledger, agent).map(|r| r.created_by);
        obj.insert("created_by".into(), serde_json::json!(by));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delegation_names_a_budget_and_at_most_its_limits() {
        let d: DelegateRequest = serde_json::from_str(
            r#"{"agent": "task-1", "total": 20, "daily": 2.5, "per_call": 0.05, "expires": "2026-12-31T00:00:00Z"}"#,
        )
        .expect("a full delegation");
        assert_eq!(d.total, Some(MicroUsd::from_usd(20)));
        assert_eq!(d.daily, Some(MicroUsd(2_500_000)));
        assert_eq!(d.per_call, Some(MicroUsd(50_000)));
        assert!(d.expires.is_some());
        let d: DelegateRequest =
            serde_json::from_str(r#"{"agent": "task-1", "total": null}"#).expect("null = unset");
        assert_eq!(d.total, None, "null never removes a limit");
        for bad in [
            r#"{"agent": "task-1", "weekly": 1}"#,
            r#"{"agent": "task-1", "total": -1}"#,
            r#"{"agent": "task-1", "total": 0.0000001}"#,
            r#"{"agent": "task-1", "total": "lots"}"#,
            r#"{"agent": "task-1", "expires": "tomorrow"}"#,
            r#"{"agent": 42}"#,
            r#"{"total": 1}"#,
            r#"[]"#,
        ] {
            assert!(
                serde_json::from_str::<DelegateRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_read_back_and_tolerate_no_pod() {
        let r = Record {
            created_by: "acme.bot".parse().expect("name"),
            workload: "acme.bot".parse().expect("name"),
            cgroup: "/sys/fs/cgroup/bot".into(),
            pod: None,
            created_at: Utc::now(),
        };
        let v = serde_json::to_value(&r).expect("json");
        assert!(v.get("pod").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<Record>(v).expect("reads"), r);
    }
}
