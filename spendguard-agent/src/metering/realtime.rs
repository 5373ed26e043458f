//! The session meter of an OpenAI Realtime WebSocket session (`/v1/realtime?model=M`).
//!
//! A session is long-lived and billed per response, so it cannot be priced up front. Instead:
//! - at the upgrade, a bounded **slice** of the agent's budget is reserved durably: at least the
//!   worst case of one response, `realtime_slice_usd` when the limits allow it, never more than
//!   they allow (over budget → the usual 402 instead of the upgrade);
//! - before a client `response.create` is forwarded, what the session holds must cover what it
//!   has been charged plus the worst case of every response asked for or running, this one
//!   included; if it does not, another slice is reserved (a **top-up**); refused, the message is
//!   not forwarded, the client gets a Realtime `error` event (`budget_exceeded`) and a close frame;
//! - a response the provider starts by itself (server-side turn detection: `response.created`
//!   with no `response.create` before it) is covered the same way, after the fact — refused, the
//!   session is closed (the one response already running is charged);
//! - each server `response.done` is charged its `response.usage` (audio and text apart);
//! - at the end, the charges are settled against the session's reservations; responses that
//!   started and never reported usage are charged their worst case.
//!
//! Crash safety is the ledger's: every slice is a durable reservation, which a crash charges in
//! full (as an aborted stream's reservation is): the session holds at least what it was charged
//! plus every running response's worst case, so nothing it spent is lost.

use std::collections::VecDeque;
use std::sync::Arc;

use spendguard_ledger::{
    AgentName, AuditContext, Ledger, Reservation, ReserveError, ReserveRequest,
};
use spendguard_pricing::realtime::{self, ClientEvent, ServerEvent};
use spendguard_pricing::{MicroUsd, ModelPrice};

use super::watch::{budget_headers, Settle};
use super::Prices;
use crate::metrics::Metrics;
use crate::proxy::stage::{BoxFuture, SessionWatch, Verdict};

/// The slice a Realtime session reserves at a time when `realtime_slice_usd` is not set.
pub const DEFAULT_SLICE: MicroUsd = MicroUsd(2_000_000);

pub struct RealtimeSession {
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    pub settles: tokio_util::task::TaskTracker,
    pub prices: Prices,
    pub agent: AgentName,
    pub provider: &'static str,
    /// The price table's name of the session's model.
    pub model: String,
    pub price: ModelPrice,
    /// What a top-up reserves when the limits allow it.
    pub slice: MicroUsd,
    /// The audit context of the session's reservations.
    pub audit: AuditContext,
    reservations: Vec<Reservation>,
    charged: MicroUsd,
    /// The session-wide output cap (`session.update`), if the client set one.
    session_max_output: Option<u64>,
    /// Worst cases of responses the client asked for that have not started yet.
    asked: VecDeque<MicroUsd>,
    /// Worst cases of responses running (created, not done).
    running: VecDeque<MicroUsd>,
    responses: u64,
}

/// Why a session cannot go on: the error event for the client.
struct Refusal {
    event: String,
    reason: String,
}

impl RealtimeSession {
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor, called once by the stage"
    )]
    pub fn new(
        ledger: Ledger,
        metrics: Arc<Metrics>,
        settles: tokio_util::task::TaskTracker,
        prices: Prices,
        provider: &'static str,
        model: String,
        price: ModelPrice,
        slice: MicroUsd,
        audit: AuditContext,
        opened: Reservation,
    ) -> RealtimeSession {
        RealtimeSession {
            ledger,
            metrics,
            settles,
            prices,
            agent: opened.agent.clone(),
            provider,
            model,
            price,
            slice,
            audit,
            reservations: vec![opened],
            charged: MicroUsd::ZERO,
            session_max_output: None,
            asked: VecDeque::new(),
            running: VecDeque::new(),
            responses: 0,
        }
    }

    fn held(&self) -> MicroUsd {
        self.reservations
            .iter()
            .fold(MicroUsd::ZERO, |a, r| a.saturating_add(r.amount))
    }

    /// Charged so far plus the worst case of every response asked for or running.
    fn committed(&self) -> MicroUsd {
        self.asked
            .iter()
            .chain(self.running.iter())
            .fold(self.charged, |a, w| a.saturating_add(*w))
    }

    fn worst(&self, max_output: Option<u64>) -> MicroUsd {
        // The model was checked priceable at the upgrade; MAX would refuse rather than guess.
        realtime::worst_case_response(&self.price, max_output.or(self.session_max_output))
            .unwrap_or(MicroUsd::MAX)
    }

    /// Makes the session hold at least `committed() + extra`, reserving another slice if needed.
    async fn cover(&mut self, extra: MicroUsd) -> Result<(), Refusal> {
        let need = self.committed().saturating_add(extra);
        let held = self.held();
        if need <= held {
            return Ok(());
        }
        let shortfall = need.saturating_sub(held);
        let amount = shortfall.max(slice_within_limits(&self.ledger, &self.agent, self.slice));
        let req = ReserveRequest {
            agent: self.agent.clone(),
            amount,
            audit: self.audit.clone(),
        };
        let reserved =
            super::reserve_counted(&self.ledger, &self.metrics, self.provider, req).await;
        match reserved {
            Ok(r) => {
                tracing::debug!(agent = %self.agent, amount = %r.amount, "Realtime session topped up");
                self.reservations.push(r);
                Ok(())
            }
            Err(ReserveError::Denied(d)) => {
                let detail = serde_json::to_value(&d).unwrap_or_default();
                Err(Refusal {
                    event: error_event(
                        "budget_exceeded",
                        &format!(
                            "{} (SpendGuard closed this Realtime session: the next response could cost {}, more than the budget has left)",
                            d.message, extra
                        ),
                        detail,
                    ),
                    reason: "budget exceeded".into(),
                })
            }
            Err(ReserveError::Ledger(e)) => {
                tracing::error!(agent = %self.agent, "ledger unavailable, Realtime response refused: {e}");
                Err(Refusal {
                    event: error_event(
                        "spendguard_unavailable",
                        "SpendGuard cannot record this session's cost; the response was not sent. \
                         The node's spendguard-agent log says why.",
                        serde_json::json!({"agent": self.agent.as_str()}),
                    ),
                    reason: "SpendGuard cannot record costs".into(),
                })
            }
        }
    }

    async fn client_text(&mut self, msg: &[u8]) -> Verdict {
        match realtime::classify_client(msg) {
            ClientEvent::ResponseCreate { max_output_tokens } => {
                let worst = self.worst(max_output_tokens);
                match self.cover(worst).await {
                    Ok(()) => {
                        self.asked.push_back(worst);
                        Verdict::Forward
                    }
                    Err(r) => refuse(r),
                }
            }
            ClientEvent::SessionUpdate {
                max_output_tokens,
                model,
                transcription,
            } => {
                if transcription {
                    // Billed per transcription, outside response.usage: a session could spend
                    // on it without one response, so it is not let through.
                    return refuse(Refusal {
                        event: error_event(
                            "transcription_refused",
                            "SpendGuard meters Realtime responses only; input audio transcription is billed apart and cannot be metered here (leave audio.input.transcription unset)",
                            serde_json::json!({"agent": self.agent.as_str()}),
                        ),
                        reason: "transcription not metered".into(),
                    });
                }
                if let Some(m) = model {
                    let same = self
                        .prices
                        .read()
                        .lookup(&m)
                        .is_some_and(|(name, p)| name == self.model || *p == self.price);
                    if !same {
                        // The session was priced for its model at the upgrade (a dated
                        // snapshot at the same prices is the same model here).
                        return refuse(Refusal {
                            event: error_event(
                                "model_change_refused",
                                &format!(
                                    "SpendGuard meters this session as {}; session.update may not switch it to {m} (open a new session)",
                                    self.model
                                ),
                                serde_json::json!({"agent": self.agent.as_str()}),
                            ),
                            reason: "model change refused".into(),
                        });
                    }
                }
                if let Some(cap) = max_output_tokens {
                    self.session_max_output = cap;
                }
                Verdict::Forward
            }
            ClientEvent::Other => Verdict::Forward,
        }
    }

    async fn server_text(&mut self, msg: Option<&[u8]>) -> Verdict {
        let Some(msg) = msg else {
            return Verdict::Forward;
        };
        match realtime::classify_server(msg) {
            ServerEvent::ResponseCreated => {
                if let Some(w) = self.asked.pop_front() {
                    self.running.push_back(w);
                    return Verdict::Forward;
                }
                // Started by the provider (turn detection): covered after the fact.
                let worst = self.worst(None);
                let covered = self.cover(worst).await;
                self.running.push_back(worst);
                match covered {
                    Ok(()) => Verdict::Forward,
                    Err(r) => refuse(r),
                }
            }
            ServerEvent::ResponseDone(usage) => {
                let worst = self.running.pop_front().unwrap_or_else(|| self.worst(None));
                let cost = usage
                    .and_then(|u| realtime::cost(&self.price, &u))
                    .unwrap_or(worst);
                if cost > worst {
                    tracing::warn!(agent = %self.agent, model = %self.model, %cost, %worst,
                        "Realtime response cost above its worst case: the bound is wrong");
                }
                self.charged = self.charged.saturating_add(cost);
                self.responses += 1;
                tracing::debug!(agent = %self.agent, model = %self.model, %cost, ?usage, "Realtime response.done");
                Verdict::Forward
            }
            ServerEvent::Other => Verdict::Forward,
        }
    }
}

fn refuse(r: Refusal) -> Verdict {
    Verdict::Close {
        event: r.event,
        reason: r.reason,
    }
}

/// A Realtime `error` server event.
fn error_event(code: &str, message: &str, detail: serde_json::Value) -> String {
    let mut error = serde_json::json!({
        "type": code,
        "code": code,
        "message": message,
        "param": null,
        "event_id": null,
    });
    if let (Some(e), serde_json::Value::Object(d)) = (error.as_object_mut(), detail) {
        e.insert("spendguard".into(), serde_json::Value::Object(d));
    }
    serde_json::json!({
        "type": "error",
        "event_id": "event_spendguard",
        "error": error,
    })
    .to_string()
}

/// `slice`, cut to what the agent's limits let one reservation take now: the tightest remaining
/// budget and the per-call limit.
pub fn slice_within_limits(ledger: &Ledger, agent: &AgentName, slice: MicroUsd) -> MicroUsd {
    let s = ledger.status(agent);
    let r = s.remaining;
    [r.daily, r.weekly, r.monthly, r.total, s.limits.per_call]
        .into_iter()
        .flatten()
        .fold(slice, MicroUsd::min)
}

impl SessionWatch for RealtimeSession {
    fn on_head(&mut self, head: &mut http::response::Parts) {
        if let Some(r) = self.reservations.first() {
            budget_headers(&mut head.headers, r);
        }
    }

    fn on_client_text<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Verdict> {
        Box::pin(self.client_text(msg))
    }

    fn on_server_text<'a>(&'a mut self, msg: Option<&'a [u8]>) -> BoxFuture<'a, Verdict> {
        Box::pin(self.server_text(msg))
    }

    fn on_end(self: Box<Self>, switched: bool, why: &str) {
        // Responses that started and never reported usage: their worst case (the provider may
        // have billed them). Responses asked for and never started cost nothing.
        let total = self
            .running
            .iter()
            .fold(self.charged, |a, w| a.saturating_add(*w));
        tracing::info!(
            agent = %self.agent, model = %self.model, responses = self.responses,
            held = %self.held(), charged = %total, switched, "Realtime session ended: {why}"
        );
        // Each reservation takes the charge up to its amount; the last one takes what is left
        // (a charge above what was held is charged anyway).
        let mut left = total;
        let n = self.reservations.len();
        for (i, r) in self.reservations.iter().enumerate() {
            let share = if i + 1 == n { left } else { left.min(r.amount) };
            left = left.saturating_sub(share);
            Settle {
                ledger: self.ledger.clone(),
                id: r.id,
                cost: share,
                model: self.model.clone(),
                metrics: Some(self.metrics.clone()),
                settles: Some(self.settles.clone()),
            }
            .spawn();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spendguard_ledger::{LedgerOptions, LimitsPatch};

    const WORST: MicroUsd = MicroUsd(1_286_144); // gpt-realtime, no output cap

    async fn open(total_usd: u64, slice: MicroUsd) -> (tempfile::TempDir, RealtimeSession) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger =
            Ledger::open(dir.path().join("ledger.redb"), LedgerOptions::default()).expect("ledger");
        let agent = AgentName::new("acme.voice").expect("name");
        ledger
            .set_limits(
                &agent,
                LimitsPatch {
                    total: Some(Some(MicroUsd::from_usd(total_usd))),
                    ..LimitsPatch::default()
                },
            )
            .await
            .expect("limits");
        let metrics = Arc::new(Metrics::new());
        let prices = Prices::load(&ledger, metrics.metering.model_labels());
        let price = prices
            .read()
            .lookup("gpt-realtime")
            .expect("priced")
            .1
            .clone();
        let amount = WORST.max(slice_within_limits(&ledger, &agent, slice));
        let audit = AuditContext {
            cgroup: String::new(),
            host: "api.openai.com".into(),
            model: "gpt-realtime".into(),
            provider: "openai".into(),
            payment: None,
            delegation: None,
        };
        let opened = ledger
            .reserve(ReserveRequest {
                agent,
                amount,
                audit: audit.clone(),
            })
            .await
            .expect("opening slice");
        let s = RealtimeSession::new(
            ledger,
            metrics,
            tokio_util::task::TaskTracker::new(),
            prices,
            "openai",
            "gpt-realtime".into(),
            price,
            slice,
            audit,
            opened,
        );
        (dir, s)
    }

    fn done(input_audio: u64, output_audio: u64) -> Vec<u8> {
        serde_json::json!({"type": "response.done", "response": {"usage": {
            "input_tokens": input_audio, "output_tokens": output_audio,
            "input_token_details": {"audio_tokens": input_audio},
            "output_token_details": {"audio_tokens": output_audio}}}})
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn concurrent_responses_are_each_covered_and_the_charge_spans_the_reservations() {
        // A zero slice: the session holds one worst case, so the second concurrent
        // response.create needs a top-up of a whole worst case.
        let (_dir, mut s) = open(10, MicroUsd::from_usd(0)).await;
        let create = br#"{"type":"response.create"}"#;
        assert_eq!(s.client_text(create).await, Verdict::Forward);
        assert_eq!(s.reservations.len(), 1);
        assert_eq!(s.client_text(create).await, Verdict::Forward);
        assert_eq!(s.reservations.len(), 2);
        assert_eq!(s.held(), MicroUsd(2 * WORST.0));
        for _ in 0..2 {
            s.server_text(Some(br#"{"type":"response.created"}"#)).await;
        }
        // Each: 30,000 audio in ($0.96) + 100 audio out ($0.0064).
        for _ in 0..2 {
            s.server_text(Some(&done(30_000, 100))).await;
        }
        assert_eq!(s.charged, MicroUsd(2 * 966_400));
        assert!(s.running.is_empty() && s.asked.is_empty());
        let ledger = s.ledger.clone();
        let agent = s.agent.clone();
        let settles = s.settles.clone();
        Box::new(s).on_end(true, "test");
        settles.close();
        settles.wait().await;
        let status = ledger.status(&agent);
        assert_eq!(status.spent.total, MicroUsd(2 * 966_400));
        assert_eq!(status.reserved, MicroUsd::ZERO);
    }

    #[tokio::test]
    async fn a_running_response_without_usage_is_charged_its_worst_case() {
        let (_dir, mut s) = open(10, MicroUsd::from_usd(2)).await;
        s.client_text(br#"{"type":"response.create","response":{"max_output_tokens":100}}"#)
            .await;
        s.server_text(Some(br#"{"type":"response.created"}"#)).await;
        let worst = realtime::worst_case_response(&s.price, Some(100)).expect("priced");
        assert_eq!(s.committed(), worst);
        let (ledger, agent, settles) = (s.ledger.clone(), s.agent.clone(), s.settles.clone());
        Box::new(s).on_end(true, "cut short");
        settles.close();
        settles.wait().await;
        assert_eq!(ledger.status(&agent).spent.total, worst);
    }

    #[tokio::test]
    async fn transcription_and_model_switches_are_refused() {
        let (_dir, mut s) = open(10, MicroUsd::from_usd(2)).await;
        let t = br#"{"type":"session.update","session":{"audio":{"input":{"transcription":{"model":"gpt-4o-transcribe"}}}}}"#;
        assert!(matches!(s.client_text(t).await, Verdict::Close { .. }));
        let m = br#"{"type":"session.update","session":{"model":"gpt-realtime-2"}}"#;
        assert!(matches!(s.client_text(m).await, Verdict::Close { .. }));
        let same = br#"{"type":"session.update","session":{"model":"gpt-realtime-2025-08-28","max_output_tokens":50}}"#;
        assert_eq!(s.client_text(same).await, Verdict::Forward);
        assert_eq!(s.session_max_output, Some(50));
        let (settles, ledger, agent) = (s.settles.clone(), s.ledger.clone(), s.agent.clone());
        Box::new(s).on_end(true, "test");
        settles.close();
        settles.wait().await;
        assert_eq!(ledger.status(&agent).spent.total, MicroUsd::ZERO);
    }
}
