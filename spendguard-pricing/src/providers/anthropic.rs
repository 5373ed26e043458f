//! Anthropic Messages API (`POST /v1/messages`).
//!
//! # Usage on the wire
//! `usage.{input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens}`.
//! `input_tokens` EXCLUDES cache reads and writes (the buckets are already disjoint). Cache writes
//! may be split by TTL in `cache_creation.{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`
//! (1.25x and 2x input); without the split they are 5-minute writes.
//!
//! **Streaming**: `message_start.message.usage` carries the input counts and an initial output
//! count; `message_delta.usage` is CUMULATIVE (newer API versions repeat the input fields there).
//! Each field takes its latest value, never a sum (a counter that goes down keeps its maximum).
//! Usage is final only once a `message_delta` with usage was seen: a stream cut before it reports
//! `None`, and the reservation is charged.

use serde_json::{Map, Value};

use super::openai::{model_field, route_read, UNKNOWN_ENDPOINT};
use super::{
    cache_write_request, count_parts, malformed, max_limit, num, parse_object, plan_output,
    rewrite, rewrite_body, short, split_path, unpriced, Adapter, InputBound, Part, PricingError,
    ProviderId, Quote, QuoteOptions, QuoteParts, Route, StreamState, TapSpec,
};
use crate::money::MicroUsd;
use crate::prices::{LongContextPrice, ModelPrice, PriceTable};
use crate::sse::SseEvent;
use crate::usage::Usage;

/// Tokens one image can cost at most: Anthropic counts about width×height/750 and scales images
/// down to a 1,568-px long edge (≈1,600 tokens); high-resolution models accept up to a 2,576-px
/// long edge (≈3.75 MP, ≈5,000 tokens). 8,000 leaves margin over both.
pub const ANTHROPIC_IMAGE_TOKENS: u64 = 8_000;
/// Hidden tool-use system prompt when tools are given: documented as 313–346 tokens (and
/// 466–499 for computer use).
pub const ANTHROPIC_TOOLS_PREAMBLE_TOKENS: u64 = 1_024;
/// Per tool beyond its JSON bytes: Anthropic-defined client tools carry hidden definitions
/// (computer use 735, text editor 700, bash 245 tokens).
pub const ANTHROPIC_TOOL_TOKENS: u64 = 1_024;
/// Context window with the `context-1m` beta header.
pub const ANTHROPIC_LONG_CONTEXT: u64 = 1_000_000;

/// The Anthropic adapter.
#[derive(Debug)]
pub struct Anthropic;

pub(crate) static ANTHROPIC: Anthropic = Anthropic;

fn classify(method: &http::Method, path_and_query: &str) -> Result<(), Route> {
    let (path, _) = split_path(path_and_query);
    match path {
        "/v1/messages" if method == http::Method::POST => Ok(()),
        "/v1/messages/count_tokens" => Err(Route::Free),
        p if p.starts_with("/v1/messages/batches") && method != http::Method::GET => {
            Err(Route::Unpriced {
                why: "message batches run later at batch rates; their cost is unknowable at submit",
            })
        }
        p if p.starts_with("/v1/files") && method == http::Method::POST => Err(Route::Unpriced {
            why: "file uploads are used by later requests, whose cost is unknowable here",
        }),
        "/v1/complete" => Err(Route::Unpriced {
            why: "the legacy Text Completions API is not priced",
        }),
        p => Err(route_read(method, p).unwrap_or(UNKNOWN_ENDPOINT)),
    }
}

/// How an Anthropic content block counts toward the input bound.
fn classify_part(m: &Map<String, Value>) -> Part {
    match m.get("type").and_then(Value::as_str) {
        Some("image") => Part::Image,
        Some("document") => match m
            .get("source")
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
        {
            // Plain-text and custom-content documents carry their text in the body.
            Some("text" | "content") => Part::Plain,
            _ => Part::Unbounded,
        },
        Some("container_upload") => Part::Unbounded,
        _ => Part::Plain,
    }
}

/// Server tools run on Anthropic's side, bill per use and feed results back as input.
fn is_server_tool(kind: &str) -> bool {
    [
        "web_search",
        "web_fetch",
        "code_execution",
        "tool_search",
        "mcp_toolset",
    ]
    .iter()
    .any(|p| kind.starts_with(p))
}

impl Adapter for Anthropic {
    fn id(&self) -> ProviderId {
        ProviderId::Anthropic
    }

    fn route(&self, method: &http::Method, path_and_query: &str) -> Route {
        match classify(method, path_and_query) {
            Ok(()) => Route::Priced,
            Err(r) => r,
        }
    }

    fn quote(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        prices: &PriceTable,
        opts: &QuoteOptions,
    ) -> Result<Quote, PricingError> {
        classify(method, path_and_query).map_err(|route| PricingError::NotPricedRoute {
            provider: ProviderId::Anthropic,
            route,
        })?;
        let obj = parse_object(body)?;
        let name = model_field(&obj)?;
        let (canonical, price) = prices
            .lookup_for(ProviderId::Anthropic, name)
            .ok_or_else(|| PricingError::UnknownModel { model: short(name) })?;
        let long_context_beta = headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|h| h.to_str().ok())
            .any(|h| h.to_ascii_lowercase().contains("context-1m"));
        quote_messages(MessagesCall {
            obj: &obj,
            body,
            long_context_beta,
            model: canonical.to_string(),
            price,
            output_cap: opts.output_cap,
            stream: obj.get("stream").and_then(Value::as_bool) == Some(true),
            tap: TapSpec::Anthropic,
        })
    }
}

/// One Messages-API request body to price, wherever it is sent (Anthropic, Bedrock InvokeModel,
/// Vertex AI rawPredict): the model is already resolved by the caller.
pub(crate) struct MessagesCall<'a> {
    pub obj: &'a Map<String, Value>,
    pub body: &'a [u8],
    /// The 1M-context beta is asked for (header, or `anthropic_beta` in the body).
    pub long_context_beta: bool,
    pub model: String,
    pub price: &'a ModelPrice,
    /// `None` also when the body must never be rewritten (signed requests).
    pub output_cap: Option<u64>,
    pub stream: bool,
    pub tap: TapSpec,
}

/// The worst case of a Messages-API body (see the module docs of [`super`]).
pub(crate) fn quote_messages(c: MessagesCall<'_>) -> Result<Quote, PricingError> {
    let obj = c.obj;
    let body = c.body;
    if !obj.get("messages").is_some_and(Value::is_array) {
        return Err(malformed("'messages' must be an array"));
    }
    let tools = obj.get("tools").and_then(Value::as_array);
    if let Some(tools) = tools {
        for t in tools {
            if let Some(kind) = t.get("type").and_then(Value::as_str) {
                if is_server_tool(kind) {
                    return Err(unpriced(
                        "server tools (web search, web fetch, code execution, tool search, MCP) bill per use and add server-side turns, which cannot be bounded",
                    ));
                }
            }
        }
    }
    if obj.get("mcp_servers").is_some_and(|v| !v.is_null()) {
        return Err(unpriced(
            "the MCP connector runs server-side tool calls, which cannot be bounded",
        ));
    }
    if obj.get("speed").and_then(Value::as_str) == Some("fast") {
        return Err(unpriced(
            "fast mode bills at premium rates the price table does not carry",
        ));
    }
    if obj.get("service_tier").and_then(Value::as_str) == Some("priority") {
        return Err(unpriced(
            "priority tier bills at rates the price table does not carry",
        ));
    }

    let whole = Value::Object(obj.clone());
    let parts = count_parts(&whole, &classify_part);
    let tool_count = tools.map_or(0, Vec::len) as u64;
    let bound = InputBound {
        body_bytes: u64::try_from(body.len()).unwrap_or(u64::MAX),
        messages: obj
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, Vec::len) as u64
            + 1,
        extra_tokens: if tool_count > 0 {
            ANTHROPIC_TOOLS_PREAMBLE_TOKENS + tool_count * ANTHROPIC_TOOL_TOKENS
        } else {
            0
        },
        images: parts.images,
        per_image_tokens: ANTHROPIC_IMAGE_TOKENS,
        unbounded: parts.unbounded > 0,
    };
    let (cap, price) = if c.long_context_beta && c.price.context_window < ANTHROPIC_LONG_CONTEXT {
        (ANTHROPIC_LONG_CONTEXT, with_long_context_tier(c.price))
    } else {
        (c.price.context_window, c.price.clone())
    };
    let input = bound.tokens(cap);
    let opts = QuoteOptions {
        output_cap: c.output_cap,
        ..QuoteOptions::none()
    };
    let plan = plan_output(max_limit(obj, &["max_tokens"])?, &price, &opts);
    let body_rewrite = match plan.write_limit {
        Some(limit) => {
            let splices = rewrite::set_member(body, 0, "max_tokens", &limit.to_string())
                .ok_or_else(|| malformed("the body could not be edited"))?;
            Some(rewrite_body(body, splices)?)
        }
        None => None,
    };
    Ok(QuoteParts {
        model: c.model,
        price,
        input,
        output: plan.per_choice,
        cache_write: cache_write_request(&whole),
        stream: c.stream,
        body_rewrite,
        tap: c.tap,
    }
    .into_quote())
}

/// Input above which Anthropic's 1M-context beta bills the long-context rates.
pub const ANTHROPIC_LONG_CONTEXT_THRESHOLD: u64 = 200_000;

/// The price of a model reached past its table context window through the `context-1m` beta.
/// When the table carries no long-context tier for it, Anthropic's published long-context
/// multipliers apply above 200k input tokens: 2x every input rate (cache reads and writes too)
/// and 1.5x output, each rounded up to the micro-dollar.
fn with_long_context_tier(price: &ModelPrice) -> ModelPrice {
    let mut p = price.clone();
    if p.long_context.is_none() {
        let scale =
            |m: MicroUsd, num: u64, den: u64| MicroUsd(m.0.saturating_mul(num).div_ceil(den));
        p.long_context = Some(LongContextPrice {
            above_input_tokens: ANTHROPIC_LONG_CONTEXT_THRESHOLD,
            input_per_mtok: scale(p.input_per_mtok, 2, 1),
            cached_input_per_mtok: p.cached_input_per_mtok.map(|m| scale(m, 2, 1)),
            cache_write_per_mtok: p.cache_write_per_mtok.map(|m| scale(m, 2, 1)),
            cache_write_1h_per_mtok: p.cache_write_1h_per_mtok.map(|m| scale(m, 2, 1)),
            output_per_mtok: scale(p.output_per_mtok, 3, 2),
        });
    }
    p.context_window = p.context_window.max(ANTHROPIC_LONG_CONTEXT);
    p
}

/// Anthropic usage fields, each as last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    write_5m: Option<u64>,
    write_1h: Option<u64>,
    output: Option<u64>,
}

impl Counts {
    fn read(u: &Value) -> Counts {
        Counts {
            input: num(u, &["input_tokens"]),
            cache_read: num(u, &["cache_read_input_tokens"]),
            cache_creation: num(u, &["cache_creation_input_tokens"]),
            write_5m: num(u, &["cache_creation", "ephemeral_5m_input_tokens"]),
            write_1h: num(u, &["cache_creation", "ephemeral_1h_input_tokens"]),
            output: num(u, &["output_tokens"]),
        }
    }

    /// Cumulative merge: each field present in `newer` replaces ours; one that goes down keeps
    /// its maximum (and is logged).
    fn merge(&mut self, newer: Counts) {
        let pairs = [
            (&mut self.input, newer.input),
            (&mut self.cache_read, newer.cache_read),
            (&mut self.cache_creation, newer.cache_creation),
            (&mut self.write_5m, newer.write_5m),
            (&mut self.write_1h, newer.write_1h),
            (&mut self.output, newer.output),
        ];
        for (mine, new) in pairs {
            if let Some(n) = new {
                if mine.is_some_and(|m| n < m) {
                    tracing::warn!("Anthropic stream usage counter went down; keeping the maximum");
                }
                *mine = Some(mine.map_or(n, |m| m.max(n)));
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        let input = self.input?;
        let creation = self.cache_creation.unwrap_or(0);
        let w1h = self.write_1h.unwrap_or(0);
        // Writes not attributed to a TTL are 5-minute writes (the default TTL).
        let w5m = self.write_5m.unwrap_or(0).max(creation.saturating_sub(w1h));
        Some(Usage {
            input_uncached: input,
            input_cached: self.cache_read.unwrap_or(0),
            cache_write_5m: w5m,
            cache_write_1h: w1h,
            output: self.output.unwrap_or(0),
            ..Usage::default()
        })
    }
}

pub(crate) fn body_usage(v: &Value) -> Option<Usage> {
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return None;
    }
    v.get("usage").map(Counts::read).and_then(|c| c.usage())
}

/// Streamed Messages.
#[derive(Debug, Default)]
pub(crate) struct MessagesStream {
    counts: Counts,
    final_seen: bool,
}

impl StreamState for MessagesStream {
    fn on_event(&mut self, ev: &SseEvent) -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(&ev.data) else {
            return true;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                    self.counts.merge(Counts::read(u));
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.counts.merge(Counts::read(u));
                    self.final_seen = true;
                }
            }
            _ => {}
        }
        true
    }

    fn usage(&self) -> Option<Usage> {
        if self.final_seen {
            self.counts.usage()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ttl_split_and_plain_cache_writes() {
        let u = body_usage(&json!({"usage": {
            "input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "output_tokens": 50}}))
        .unwrap();
        assert_eq!(
            u,
            Usage {
                input_uncached: 10,
                input_cached: 100,
                cache_write_5m: 100,
                cache_write_1h: 200,
                output: 50,
                ..Usage::default()
            }
        );
        let u = body_usage(&json!({"usage": {"input_tokens": 1, "cache_creation_input_tokens": 7, "output_tokens": 2}})).unwrap();
        assert_eq!((u.cache_write_5m, u.cache_write_1h), (7, 0));
    }

    #[test]
    fn routes() {
        use http::Method;
        let a = &ANTHROPIC;
        assert_eq!(a.route(&Method::POST, "/v1/messages"), Route::Priced);
        assert_eq!(
            a.route(&Method::POST, "/v1/messages/count_tokens"),
            Route::Free
        );
        assert_eq!(a.route(&Method::GET, "/v1/models"), Route::Free);
        assert!(matches!(
            a.route(&Method::POST, "/v1/messages/batches"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::POST, "/v1/files"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::POST, "/v1/unknown"),
            Route::Unpriced { .. }
        ));
    }
}
