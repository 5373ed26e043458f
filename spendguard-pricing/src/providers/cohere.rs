//! Cohere's native v2 chat API (`POST https://api.cohere.com/v2/chat`).
//!
//! # Usage on the wire (looked up 2026-12-06)
//! * Non-streamed answer: `usage.billed_units.{input_tokens, output_tokens}` (what Cohere bills)
//!   and `usage.tokens.{input_tokens, output_tokens}` (everything processed, including the hidden
//!   preamble: a recorded answer carries billed input 21 against processed input 186). Source:
//!   the SDK's generated types, `Usage { billed_units, tokens }` in
//!   <https://github.com/cohere-ai/cohere-python/blob/main/src/cohere/types/usage.py>, and
//!   <https://docs.cohere.com/reference/chat>. We charge `billed_units`; when it is missing, the
//!   larger `tokens` (the safe side).
//! * Streaming (`"stream": true`): server-sent events (the SDK reads them with an `EventSource`,
//!   <https://github.com/cohere-ai/cohere-python/blob/main/src/cohere/v2/raw_client.py>), each a
//!   JSON object with a `type`: `message-start`, `content-start`, `content-delta`, `content-end`,
//!   `tool-plan-delta`, `tool-call-*`, `citation-*`, then `message-end` whose
//!   `delta.{finish_reason, usage}` carries the same usage object
//!   (<https://docs.cohere.com/v2/docs/streaming>). Usage is sent unasked; there is no option to
//!   add. A stream cut before `message-end` reports none, and the reservation is charged.
//! * Output limit: `max_tokens`; unset, "defaults to the model's maximum output token limit"
//!   (raw_client.py above). `thinking` (reasoning models) adds up to `token_budget` tokens; we
//!   do not assume they are inside `max_tokens`.
//!
//! Other Cohere endpoints: `/v1/chat` (connectors such as web search bill per use) and `/v2/rerank`
//! (per search) are refused as unpriced; `/v1/tokenize` and `/v1/detokenize` are free.

use serde_json::{Map, Value};

use super::openai::{
    model_field, route_read, OPENAI_IMAGE_TOKENS, OPENAI_TOOLS_PREAMBLE_TOKENS, OPENAI_TOOL_TOKENS,
    UNKNOWN_ENDPOINT,
};
use super::{
    count_field, count_parts, malformed, num, parse_object, plan_output, rewrite, rewrite_body,
    short, split_path, Adapter, InputBound, Part, PricingError, ProviderId, Quote, QuoteOptions,
    QuoteParts, Route, StreamState, TapSpec,
};
use crate::prices::PriceTable;
use crate::sse::SseEvent;
use crate::usage::Usage;

/// The Cohere adapter.
#[derive(Debug)]
pub struct CohereAdapter;

pub(crate) static COHERE: CohereAdapter = CohereAdapter;

impl Adapter for CohereAdapter {
    fn id(&self) -> ProviderId {
        ProviderId::Cohere
    }

    fn route(&self, method: &http::Method, path_and_query: &str) -> Route {
        let (path, _) = split_path(path_and_query);
        if method == http::Method::POST {
            return match path {
                "/v2/chat" => Route::Priced,
                "/v1/tokenize" | "/v1/detokenize" => Route::Free,
                "/v1/chat" => Route::Unpriced {
                    why: "Cohere v1 chat (connectors such as web search bill per use) is not priced; use /v2/chat",
                },
                _ => UNKNOWN_ENDPOINT,
            };
        }
        route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)
    }

    fn quote(
        &self,
        method: &http::Method,
        path_and_query: &str,
        _headers: &http::HeaderMap,
        body: &[u8],
        prices: &PriceTable,
        opts: &QuoteOptions,
    ) -> Result<Quote, PricingError> {
        let route = self.route(method, path_and_query);
        if route != Route::Priced {
            return Err(PricingError::NotPricedRoute {
                provider: ProviderId::Cohere,
                route,
            });
        }
        let obj = parse_object(body)?;
        let name = model_field(&obj)?;
        let (canonical, price) = prices
            .lookup_for(ProviderId::Cohere, name)
            .ok_or_else(|| PricingError::UnknownModel { model: short(name) })?;
        let messages = obj
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("'messages' must be an array"))?;
        let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
        let whole = Value::Object(obj.clone());
        let parts = count_parts(&whole, &classify_part);
        let tools = obj
            .get("tools")
            .and_then(Value::as_array)
            .map_or(0, Vec::len) as u64;
        let documents = obj
            .get("documents")
            .and_then(Value::as_array)
            .map_or(0, Vec::len) as u64;
        let bound = InputBound {
            body_bytes: u64::try_from(body.len()).unwrap_or(u64::MAX),
            // Each document is wrapped like a message in the prompt.
            messages: messages.len() as u64 + documents,
            extra_tokens: if tools > 0 {
                OPENAI_TOOLS_PREAMBLE_TOKENS + tools * OPENAI_TOOL_TOKENS
            } else {
                0
            },
            images: parts.images,
            per_image_tokens: OPENAI_IMAGE_TOKENS,
            unbounded: parts.unbounded > 0,
        };
        let input = bound.tokens(price.context_window);
        let plan = plan_output(count_field(&obj, "max_tokens")?, price, opts);
        let output = plan
            .per_choice
            .saturating_add(thinking_tokens(&obj, price.max_output_tokens)?);
        let body_rewrite = match plan.write_limit {
            Some(limit) => {
                let splices = rewrite::set_member(body, 0, "max_tokens", &limit.to_string())
                    .ok_or_else(|| malformed("the body could not be edited"))?;
                Some(rewrite_body(body, splices)?)
            }
            None => None,
        };
        Ok(QuoteParts {
            model: canonical.to_string(),
            price: price.clone(),
            input,
            output,
            cache_write: None,
            stream,
            body_rewrite,
            tap: TapSpec::Cohere,
        }
        .into_quote())
    }
}

/// Reasoning tokens a request may add beyond `max_tokens`: none when `thinking` is absent or
/// `{"type": "disabled"}`; else its `token_budget`, or the model's maximum output when unset.
fn thinking_tokens(obj: &Map<String, Value>, model_max: u64) -> Result<u64, PricingError> {
    let Some(thinking) = obj.get("thinking").filter(|t| !t.is_null()) else {
        return Ok(0);
    };
    let Some(t) = thinking.as_object() else {
        return Err(malformed("'thinking' must be an object"));
    };
    let disabled = t
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|k| k.eq_ignore_ascii_case("disabled"));
    if disabled {
        return Ok(0);
    }
    Ok(count_field(t, "token_budget")?.unwrap_or(model_max))
}

/// Content parts of a v2 chat request: images cost up to a per-image bound; text and documents
/// are in the body.
fn classify_part(m: &Map<String, Value>) -> Part {
    match m.get("type").and_then(Value::as_str) {
        Some("image_url" | "image") => Part::Image,
        _ => Part::Plain,
    }
}

/// A v2 `usage` object → Usage: `billed_units`, else `tokens`.
pub(crate) fn usage_of(u: &Value) -> Option<Usage> {
    let pick = |key: &str| {
        let src = u.get(key).filter(|s| s.is_object())?;
        let input = num(src, &["input_tokens"]);
        let output = num(src, &["output_tokens"]);
        (input.is_some() || output.is_some()).then(|| (input.unwrap_or(0), output.unwrap_or(0)))
    };
    let (input, output) = pick("billed_units").or_else(|| pick("tokens"))?;
    Some(Usage {
        input_uncached: input,
        output,
        ..Usage::default()
    })
}

/// The usage of a `message-end` event, if `v` is one.
fn message_end_usage(v: &Value) -> Option<Usage> {
    if v.get("type").and_then(Value::as_str) != Some("message-end") {
        return None;
    }
    v.get("delta")
        .and_then(|d| d.get("usage"))
        .and_then(usage_of)
}

/// A whole response body: a JSON answer's `usage`, or — a stream read without an event-stream
/// content type — the `message-end` event among its lines (`data:`-prefixed or bare JSON).
pub(crate) fn body_usage(body: &[u8]) -> Option<Usage> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return message_end_usage(&v).or_else(|| v.get("usage").and_then(usage_of));
    }
    // The last `message-end` wins: walk the lines from the end.
    body.rsplit(|b| *b == b'\n').find_map(|line| {
        let line = line.trim_ascii();
        let line = line.strip_prefix(b"data:").unwrap_or(line).trim_ascii();
        serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| message_end_usage(&v))
    })
}

/// A streamed v2 chat: usage from the `message-end` event only.
#[derive(Debug, Default)]
pub(crate) struct ChatStream {
    usage: Option<Usage>,
}

impl StreamState for ChatStream {
    fn on_event(&mut self, ev: &SseEvent) -> bool {
        // Only the last event can hold usage: skip the parse of every other one.
        if memchr::memmem::find(&ev.data, b"message-end").is_none() {
            return true;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&ev.data) {
            if let Some(u) = message_end_usage(&v) {
                self.usage = Some(u);
            }
        }
        true
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded v2 answer's usage (the shape of docs.cohere.com/reference/chat).
    #[test]
    fn billed_units_are_charged_not_processed_tokens() {
        let body = br#"{"id":"c14c80c3-18eb-4519-9460-6c92edd8cfb4","message":{"role":"assistant","content":[{"type":"text","text":"LLMs are..."}]},"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":5,"output_tokens":418},"tokens":{"input_tokens":71,"output_tokens":418},"cached_tokens":0}}"#;
        let u = body_usage(body).unwrap();
        assert_eq!((u.input_uncached, u.output), (5, 418));
        // Without billed units, the processed counts (larger: the safe side).
        let u = usage_of(&serde_json::json!({"tokens":{"input_tokens":71,"output_tokens":9}}));
        assert_eq!(u.map(|u| (u.input_uncached, u.output)), Some((71, 9)));
        assert_eq!(usage_of(&serde_json::json!({})), None);
        assert_eq!(body_usage(b"{\"id\":\"x\"}"), None);
    }
}
