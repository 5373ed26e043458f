//! The metering [`Stage`]: decide before forwarding, watch after.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use spendguard_ledger::{
    AuditContext, Denial, DenyReason, Ledger, Reservation, ReserveError, ReserveRequest,
};
use spendguard_pricing::providers::{adapter_for, PricingError, ProviderId, QuoteOptions, Route};
use spendguard_pricing::MicroUsd;

use super::watch::{FreeWatch, MeterWatch};
use super::{Prices, BUDGET_PATH, DELEGATE_PATH};
use crate::identity::subtree::{self, SubtreeError, HDR_ROUTE_AGENT};
use crate::metrics::{Metrics, Outcome};
use crate::proxy::body::{full, Body, BoxError};
use crate::proxy::reply::json_error;
use crate::proxy::stage::{BoxFuture, Decision, RequestContext, Stage};

/// The largest request body that is priced (LLM requests with inline images stay far below this);
/// a larger body cannot be priced and is refused.
pub const MAX_PRICED_BODY: usize = spendguard_pricing::providers::MAX_JSON_BODY_BYTES;

/// Where OpenAI serves Realtime sessions (a WebSocket upgrade).
pub const REALTIME_PATH: &str = "/v1/realtime";

pub struct Metering {
    pub ledger: Ledger,
    pub prices: Prices,
    pub output_cap: Option<u64>,
    pub azure_deployments: HashMap<String, String>,
    /// `realtime_slice_usd`: what a Realtime session reserves at a time.
    pub realtime_slice: MicroUsd,
    pub metrics: Arc<Metrics>,
    /// `x402_hosts` and the rates their payments are priced at.
    pub x402: Arc<super::x402::X402>,
    /// The provider hosts (bundled and `extra_provider_hosts`): an unpaid request to an x402 host
    /// is free unless the host is one of these too (pricing takes any host it is given for a
    /// self-hosted OpenAI-compatible server, so it cannot tell).
    pub provider_hosts: crate::proxy::route::HostList,
    /// Where settles run; the agent waits for it on a graceful stop.
    pub settles: tokio_util::task::TaskTracker,
    /// Budgets handed down from inside workloads (`/.well-known/spendguard/delegate`).
    pub delegations: super::delegate::Delegations,
}

/// Whose budget a request pays from (`x-spendguard-agent`).
enum Routed {
    /// The caller's own.
    Caller,
    /// A budget below the caller's: the caller's context with that agent.
    Below(RequestContext),
    /// Refused: the answer to send.
    Refused(Decision),
}

impl Stage for Metering {
    fn on_request<'a>(
        &'a self,
        ctx: &'a RequestContext,
        req: Request<Body>,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(self.decide(ctx, req))
    }
}

impl Metering {
    async fn decide(&self, ctx: &RequestContext, mut req: Request<Body>) -> Decision {
        // The workload's own agent (its cgroup's tag), before any routing header: what bounds
        // the budgets it may create.
        let workload = ctx.identity.agent.clone();
        let routed;
        let ctx = match self.route_to_descendant(ctx, &mut req) {
            Routed::Caller => ctx,
            Routed::Below(r) => {
                routed = r;
                &routed
            }
            Routed::Refused(answer) => {
                drain(req).await;
                return answer;
            }
        };
        let agent = ctx.identity.agent.clone();
        if req.uri().path() == DELEGATE_PATH {
            return self
                .delegations
                .handle(&self.ledger, &workload, ctx, req)
                .await;
        }
        if req.uri().path() == BUDGET_PATH {
            let status = super::delegate::status_json(&self.ledger, &agent);
            let body = serde_json::to_vec_pretty(&status).unwrap_or_default();
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return Decision::Respond(resp);
        }
        let audit = |model: &str, provider: &str| AuditContext {
            cgroup: ctx.identity.tagged_cgroup.display().to_string(),
            host: ctx.sni.clone(),
            model: model.to_string(),
            provider: provider.to_string(),
            payment: None,
            delegation: None,
        };
        // x402 hosts: a paid request is priced at its payment; an unpaid one (the 402 challenge
        // round-trip) costs nothing, unless the host is a provider host too.
        if self.x402.matches(&ctx.sni) {
            match spendguard_pricing::x402::payment_from_headers(req.headers()) {
                Some(payment) => return self.decide_x402(ctx, req, payment).await,
                None if !self.provider_hosts.matches(&ctx.sni) => {
                    return self.forward_unpaid(ctx, req)
                }
                None => {}
            }
        }
        let Some(provider) = ProviderId::from_host(&ctx.sni) else {
            return self
                .block(
                    ctx,
                    DenyReason::UnpricedRequest,
                    MicroUsd::ZERO,
                    audit("", ""),
                    &format!("no pricing adapter for host {}", ctx.sni),
                    req,
                )
                .await;
        };
        if provider == ProviderId::OpenAi
            && req.uri().path() == REALTIME_PATH
            && crate::proxy::ws_relay::is_upgrade(&req)
        {
            return self.open_realtime(ctx, provider, req).await;
        }
        let adapter = adapter_for(provider);
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        match adapter.route(req.method(), &pq) {
            Route::Free => {
                self.metrics
                    .metering
                    .request(agent.as_str(), provider.as_str(), Outcome::Free);
                return Decision::Forward {
                    request: req,
                    watch: Box::new(FreeWatch {
                        agent: agent.to_string(),
                    }),
                };
            }
            Route::Unpriced { why } => {
                return self
                    .block(
                        ctx,
                        DenyReason::UnpricedRequest,
                        MicroUsd::ZERO,
                        audit("", provider.as_str()),
                        why,
                        req,
                    )
                    .await;
            }
            Route::Priced => {}
        }

        let (mut parts, body) = req.into_parts();
        let bytes: Bytes = match collect_limited(body, MAX_PRICED_BODY).await {
            Ok(b) => b,
            Err(Collect::TooLarge { read, rest }) => {
                let why = format!(
                    "request body larger than {} MiB cannot be priced",
                    MAX_PRICED_BODY >> 20
                );
                // Observed, it goes out whole: what was read, then the rest as it comes.
                let head = futures_util::stream::once(async move {
                    Ok::<_, BoxError>(http_body::Frame::data(read))
                });
                let body = http_body_util::StreamBody::new(futures_util::StreamExt::chain(
                    head,
                    http_body_util::BodyStream::new(rest),
                ))
                .boxed_unsync();
                return self
                    .block(
                        ctx,
                        DenyReason::UnpricedRequest,
                        MicroUsd::ZERO,
                        audit("", provider.as_str()),
                        &why,
                        Request::from_parts(parts, body),
                    )
                    .await;
            }
            Err(Collect::Broken(e)) => {
                // The client went away or sent a broken body: nothing is forwarded.
                self.metrics.metering.request(
                    agent.as_str(),
                    provider.as_str(),
                    Outcome::BadRequest,
                );
                let msg = format!("request body could not be read: {e}");
                return Decision::Respond(json_error(
                    StatusCode::BAD_REQUEST,
                    &ctx.sni,
                    "invalid_request_error",
                    &msg,
                    serde_json::json!({}),
                ));
            }
        };

        let quote = {
            let table = self.prices.read();
            let opts = QuoteOptions {
                output_cap: self.output_cap,
                azure_deployments: &self.azure_deployments,
            };
            adapter.quote(&parts.method, &pq, &parts.headers, &bytes, &table, &opts)
        };
        let quote = match quote {
            Ok(q) => q,
            Err(PricingError::UnknownModel { model }) => {
                let msg =
                    format!("no price for model '{model}' (set one with `spendguard price set`)");
                return self
                    .block(
                        ctx,
                        DenyReason::UnknownModel,
                        MicroUsd::ZERO,
                        audit(&model, provider.as_str()),
                        &msg,
                        Request::from_parts(parts, full(bytes)),
                    )
                    .await;
            }
            Err(e) => {
                return self
                    .block(
                        ctx,
                        DenyReason::UnpricedRequest,
                        MicroUsd::ZERO,
                        audit("", provider.as_str()),
                        &e.to_string(),
                        Request::from_parts(parts, full(bytes)),
                    )
                    .await;
            }
        };

        let reservation = match self
            .reserve(
                ctx,
                provider.as_str(),
                quote.worst_case,
                audit(&quote.model, provider.as_str()),
            )
            .await
        {
            Ok(r) => r,
            Err(refused) => return refused,
        };

        let body = match quote.body_rewrite.clone() {
            Some(b) => Bytes::from(b),
            None => bytes,
        };
        parts.headers.insert(
            header::CONTENT_LENGTH,
            header::HeaderValue::from(body.len()),
        );
        // Usage must be readable in the response: ask for it uncompressed — unless a SigV4
        // signature covers the header (Bedrock): changed, the provider would refuse the request.
        // Compressed, its usage cannot be read and the reservation is the charge.
        if !sigv4_signs(&parts.headers, "accept-encoding") {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                header::HeaderValue::from_static("identity"),
            );
        }
        let request = Request::from_parts(parts, full(body));
        Decision::Forward {
            request,
            watch: Box::new(
                MeterWatch::new(quote, reservation, self.ledger.clone())
                    .with_metrics(self.metrics.clone())
                    .with_settles(self.settles.clone()),
            ),
        }
    }

    /// An OpenAI Realtime session: priced by its model (`?model=`), a slice reserved, then the
    /// upgrade goes out with the session meter watching its frames (`metering/realtime.rs`).
    async fn open_realtime(
        &self,
        ctx: &RequestContext,
        provider: ProviderId,
        req: Request<Body>,
    ) -> Decision {
        let audit = |model: &str| AuditContext {
            cgroup: ctx.identity.tagged_cgroup.display().to_string(),
            host: ctx.sni.clone(),
            model: model.to_string(),
            provider: provider.as_str().to_string(),
            payment: None,
            delegation: None,
        };
        let model = req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "model")
                .map(|(_, v)| v.to_string())
        });
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return self
                .block(
                    ctx,
                    DenyReason::UnpricedRequest,
                    MicroUsd::ZERO,
                    audit(""),
                    "a Realtime session names its model in the URL (?model=…); without one it cannot be priced",
                    req,
                )
                .await;
        };
        let found = self
            .prices
            .read()
            .lookup(&model)
            .filter(|(_, p)| spendguard_pricing::realtime::priceable(p))
            .map(|(name, p)| (name.to_string(), p.clone()));
        let Some((name, price)) = found else {
            let msg = format!(
                "no Realtime (audio) price for model '{model}': Realtime sessions are metered only for models the price table gives audio prices"
            );
            return self
                .block(
                    ctx,
                    DenyReason::UnknownModel,
                    MicroUsd::ZERO,
                    audit(&model),
                    &msg,
                    req,
                )
                .await;
        };
        let worst = spendguard_pricing::realtime::worst_case_response(&price, None)
            .unwrap_or(MicroUsd::MAX);
        let agent = ctx.identity.agent.clone();
        let amount = worst.max(super::realtime::slice_within_limits(
            &self.ledger,
            &agent,
            self.realtime_slice,
        ));
        let reservation = match self
            .reserve(ctx, provider.as_str(), amount, audit(&name))
            .await
        {
            Ok(r) => r,
            Err(refused) => return refused,
        };
        Decision::Upgrade {
            request: req,
            watch: Box::new(super::realtime::RealtimeSession::new(
                self.ledger.clone(),
                self.metrics.clone(),
                self.settles.clone(),
                self.prices.clone(),
                provider.as_str(),
                name.clone(),
                price,
                self.realtime_slice,
                audit(&name),
                reservation,
            )),
        }
    }

    /// `x-spendguard-agent: CHILD`: the request pays against a budget below the caller's (the
    /// context is the caller's, with CHILD as its agent); the header never leaves the node. A
    /// name outside the caller's subtree gets 403, a name that is not one 400, a budget that does
    /// not exist 403 (a workload cannot create names by sending them).
    fn route_to_descendant(&self, ctx: &RequestContext, req: &mut Request<Body>) -> Routed {
        let values: Vec<_> = req
            .headers()
            .get_all(HDR_ROUTE_AGENT)
            .iter()
            .cloned()
            .collect();
        // Whatever happens next, the header never reaches the provider.
        req.headers_mut().remove(HDR_ROUTE_AGENT);
        let caller = &ctx.identity.agent;
        let refuse = |status: StatusCode, kind: &str, code: &str, msg: &str, given: &str| {
            tracing::info!(agent = %caller, requested_agent = given, "{msg}");
            Decision::Respond(json_error(
                status,
                &ctx.sni,
                kind,
                msg,
                serde_json::json!({"code": code, "agent": caller.as_str(), "requested_agent": given}),
            ))
        };
        let given = match values.as_slice() {
            [] => return Routed::Caller,
            [one] => match one.to_str() {
                Ok(s) => s.to_string(),
                Err(_) => {
                    let msg = format!("{HDR_ROUTE_AGENT} is not ASCII: it must name an agent");
                    return Routed::Refused(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "INVALID_AGENT_NAME",
                        &msg,
                        "",
                    ));
                }
            },
            _ => {
                let msg = format!("{HDR_ROUTE_AGENT} is set more than once: name one budget");
                return Routed::Refused(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "INVALID_AGENT_NAME",
                    &msg,
                    "",
                ));
            }
        };
        let child = match subtree::resolve(caller, &given) {
            Ok(c) => c,
            Err(e @ SubtreeError::Invalid { .. }) => {
                return Routed::Refused(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "INVALID_AGENT_NAME",
                    &e.to_string(),
                    &given,
                ))
            }
            Err(e @ SubtreeError::Outside { .. }) => {
                return Routed::Refused(refuse(
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    "AGENT_OUTSIDE_SUBTREE",
                    &e.to_string(),
                    &given,
                ))
            }
        };
        if &child == caller {
            return Routed::Caller;
        }
        if !self.ledger.knows(&child) {
            let msg = format!(
                "there is no budget named {child} below {caller}: create it first (`spendguard limit set {child} …`)"
            );
            return Routed::Refused(refuse(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "AGENT_UNKNOWN",
                &msg,
                &given,
            ));
        }
        let mut routed = ctx.clone();
        routed.identity.agent = child;
        Routed::Below(routed)
    }

    /// Reserves `amount` durably in every budget the agent's request touches (counted in the
    /// metrics); refused, the answer to send instead (402, or 503 when the ledger cannot write).
    pub(super) async fn reserve(
        &self,
        ctx: &RequestContext,
        provider: &str,
        amount: MicroUsd,
        audit: AuditContext,
    ) -> Result<Reservation, Decision> {
        let agent = ctx.identity.agent.clone();
        let reserve = ReserveRequest {
            agent: agent.clone(),
            amount,
            audit,
        };
        let reserved = super::reserve_counted(&self.ledger, &self.metrics, provider, reserve).await;
        match reserved {
            Ok(r) => Ok(r),
            Err(ReserveError::Denied(d)) => Err(Decision::Respond(denial_response(&ctx.sni, &d))),
            Err(ReserveError::Ledger(e)) => {
                tracing::error!(%agent, "ledger unavailable, request refused: {e}");
                // The workload learns what happened, not the node's paths: the operator has
                // the full error (database path, cause, what to check) in the log line above.
                let what = if matches!(e, spendguard_ledger::LedgerError::Cluster(_)) {
                    "the cluster budget store is unreachable and this node's budget slices \
                     are used up"
                } else if e.is_transient() {
                    "its ledger cannot write to the node's disk"
                } else {
                    "its ledger is unavailable"
                };
                let msg = format!(
                    "SpendGuard cannot record this request's cost ({what}); it was not sent. \
                     The node's spendguard-agent log says why."
                );
                Err(Decision::Respond(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &ctx.sni,
                    "spendguard_unavailable",
                    &msg,
                    serde_json::json!({}),
                )))
            }
        }
    }

    /// Refuses `req` with a 402 (audited); in `observe` mode forwards it unmetered instead
    /// (audited `would_block`): it cannot be priced, so nothing is reserved or charged.
    pub(super) async fn block(
        &self,
        ctx: &RequestContext,
        reason: DenyReason,
        requested: MicroUsd,
        audit: AuditContext,
        why: &str,
        req: Request<Body>,
    ) -> Decision {
        let provider = audit.provider.clone();
        let recorded = self
            .ledger
            .record_blocked(ctx.identity.agent.clone(), reason, requested, audit)
            .await;
        let observed = matches!(&recorded, Ok(d) if d.observed);
        self.metrics.metering.request(
            ctx.identity.agent.as_str(),
            &provider,
            if observed {
                Outcome::WouldBlock(reason)
            } else {
                Outcome::Blocked(reason)
            },
        );
        if observed {
            tracing::info!(agent = %ctx.identity.agent, %reason, "observe mode: unpriceable request forwarded unmetered ({why})");
            return Decision::Forward {
                request: req,
                watch: Box::new(FreeWatch {
                    agent: ctx.identity.agent.to_string(),
                }),
            };
        }
        drain(req).await;
        match recorded {
            Ok(mut d) => {
                d.message = format!("{} ({why})", d.message);
                Decision::Respond(denial_response(&ctx.sni, &d))
            }
            Err(e) => {
                tracing::error!("audit of a blocked request failed: {e}");
                Decision::Respond(json_error(
                    StatusCode::PAYMENT_REQUIRED,
                    &ctx.sni,
                    "budget_exceeded",
                    why,
                    serde_json::json!({"code": "BUDGET_EXCEEDED", "agent": ctx.identity.agent.as_str()}),
                ))
            }
        }
    }
}

/// Whether an AWS SigV4 `Authorization` header lists `name` among its signed headers.
fn sigv4_signs(headers: &http::HeaderMap, name: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|a| a.starts_with("AWS4-"))
        .and_then(|a| a.split_once("SignedHeaders="))
        .is_some_and(|(_, rest)| {
            rest.split([',', ' '])
                .next()
                .unwrap_or("")
                .split(';')
                .any(|h| h.eq_ignore_ascii_case(name))
        })
}

/// HTTP 402 with the Denial's fields at the top level and the provider-shaped `error`.
pub fn denial_response(host: &str, d: &Denial) -> Response<Body> {
    let extra = serde_json::to_value(d).unwrap_or_default();
    json_error(
        StatusCode::PAYMENT_REQUIRED,
        host,
        "budget_exceeded",
        &d.message,
        extra,
    )
}

pub(super) enum Collect {
    /// More than the limit: what was read so far, and the rest of the body.
    TooLarge {
        read: Bytes,
        rest: Body,
    },
    Broken(String),
}

/// [`crate::proxy::body::drain`] for a refused request, up to the body size pricing reads.
pub(super) async fn drain(req: Request<Body>) {
    crate::proxy::body::drain(req.into_body(), MAX_PRICED_BODY).await;
}

/// The whole body, refusing more than `limit` bytes (the request is priced from all of it).
pub(super) async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, Collect> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Collect::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                buf.extend_from_slice(&data);
                return Err(Collect::TooLarge {
                    read: buf.freeze(),
                    rest: body,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
