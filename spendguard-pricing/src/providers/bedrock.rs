//! AWS Bedrock Runtime (`bedrock-runtime.{region}.amazonaws.com`,
//! `bedrock-runtime-fips.{region}.amazonaws.com`): `Converse`, `ConverseStream`, `InvokeModel`
//! and `InvokeModelWithResponseStream` (`POST /model/{modelId}/{converse|converse-stream|invoke|
//! invoke-with-response-stream}`), for the Anthropic, Meta, Mistral, Amazon Nova and Cohere model
//! families the price table carries.
//!
//! # Never rewritten
//! Requests are SigV4-signed over their body: the body is priced as sent (its output limit, or
//! the model's maximum) and never changed, whatever `output_cap` says.
//!
//! # Models
//! The model id is the (percent-encoded) path segment. Looked up in this order: the price table
//! key `bedrock/{id}` (cross-region inference profiles such as `us.` or `eu.` that are priced
//! apart have their own keys), the id without its geography prefix (`us.`, `eu.`, `apac.`, `jp.`,
//! `au.`, `ca.`, `us-gov.`, `global.`: a profile prices as its model), then for the Anthropic
//! family the Anthropic model name (`anthropic.claude-sonnet-4-5-20250929-v1:0` →
//! `claude-sonnet-4-5-20250929`). A foundation-model or system inference-profile ARN prices as
//! the id it names; any other ARN (provisioned throughput, application inference profiles,
//! imported models, prompts) is `unknown_model` unless the operator prices that exact ARN.
//!
//! # Usage on the wire
//! * Converse: `usage.{inputTokens, outputTokens, totalTokens, cacheReadInputTokens,
//!   cacheWriteInputTokens}`. Whether the cache fields are inside `inputTokens` is disputed, so
//!   `totalTokens` decides: when it equals input + output, the cache counts were inside input
//!   (and are taken out of it); otherwise the buckets are disjoint. Without `totalTokens` they are
//!   taken as disjoint (the dearer reading).
//! * ConverseStream (`application/vnd.amazon.eventstream`): the same `usage` object, in the
//!   payload of the `metadata` event (the last event of the stream).
//! * InvokeModel: the `x-amzn-bedrock-{input,output}-token-count` (and
//!   `-cache-{read,write}-input-token-count`) response headers when present; else the model's
//!   native body (Anthropic `usage`, Nova `usage.{inputTokens, outputTokens,
//!   cacheReadInputTokenCount, cacheWriteInputTokenCount}`, Meta `prompt_token_count` /
//!   `generation_token_count`, Cohere `meta.billed_units`). Mistral bodies carry no usage.
//! * InvokeModelWithResponseStream: each `chunk` event's payload is `{"bytes": base64 of the
//!   model-native JSON}`; the last chunk carries `amazon-bedrock-invocationMetrics`
//!   `{inputTokenCount, outputTokenCount, cacheReadInputTokenCount?, cacheWriteInputTokenCount?}`,
//!   which is what is read (whatever the model family).
//!
//! A stream cut before its usage, or one whose framing fails its CRC, reports `None`: the
//! reservation is the charge.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::anthropic::{quote_messages, MessagesCall, ANTHROPIC_IMAGE_TOKENS};
use super::anthropic::{ANTHROPIC_TOOLS_PREAMBLE_TOKENS, ANTHROPIC_TOOL_TOKENS};
use super::openai::{route_read, UNKNOWN_ENDPOINT};
use super::{
    count_parts, malformed, max_limit, num, parse_object, plan_output, short, split_path, unpriced,
    Adapter, InputBound, Part, PricingError, ProviderId, Quote, QuoteOptions, QuoteParts, Route,
    TapSpec,
};
use crate::eventstream::{Decoder, Message};
use crate::prices::{ModelPrice, PriceTable};
use crate::usage::Usage;

/// The Bedrock Runtime adapter.
#[derive(Debug)]
pub struct Bedrock;

pub(crate) static BEDROCK: Bedrock = Bedrock;

/// Cross-region inference profile prefixes (a geography, or `global`).
pub const GEO_PREFIXES: &[&str] = &["us", "us-gov", "eu", "apac", "jp", "au", "ca", "global"];

/// Tokens one image can cost at most, for every family priced here (Anthropic's bound is the
/// largest: Nova images are at most ~2,600 tokens, Llama 3.2 vision ~6,400).
const IMAGE_TOKENS: u64 = ANTHROPIC_IMAGE_TOKENS;

/// Which of the four operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
}

/// The model family, from the model id's vendor segment: it decides the InvokeModel body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Anthropic,
    Meta,
    Mistral,
    Nova,
    Cohere,
}

impl Family {
    fn of(id: &str) -> Option<Family> {
        let (vendor, rest) = id.split_once('.')?;
        Some(match vendor {
            "anthropic" => Family::Anthropic,
            "meta" => Family::Meta,
            "mistral" => Family::Mistral,
            "amazon" if rest.starts_with("nova") => Family::Nova,
            "cohere" => Family::Cohere,
            _ => return None,
        })
    }
}

/// `%XX` decoding of one path segment (Bedrock model ids are sent percent-encoded: `:` as `%3A`,
/// an ARN's `/` as `%2F`).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn classify(method: &http::Method, path_and_query: &str) -> Result<(Op, String), Route> {
    let (path, _) = split_path(path_and_query);
    let post = method == http::Method::POST;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["model", id, op] if post => {
            let op = match *op {
                "converse" => Op::Converse,
                "converse-stream" => Op::ConverseStream,
                "invoke" => Op::Invoke,
                "invoke-with-response-stream" => Op::InvokeStream,
                "count-tokens" => return Err(Route::Free),
                _ => return Err(UNKNOWN_ENDPOINT),
            };
            let id = percent_decode(id).ok_or(Route::Unpriced {
                why: "the model id in the path is not valid percent-encoded UTF-8",
            })?;
            Ok((op, id))
        }
        ["async-invoke", ..] if post => Err(Route::Unpriced {
            why: "asynchronous invocations run later and write to S3; their cost is unknowable at submit",
        }),
        ["guardrail", ..] if post => Err(Route::Unpriced {
            why: "ApplyGuardrail bills per text unit, which the price table does not carry",
        }),
        _ => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
    }
}

/// The model an ARN names, for the ARN kinds that price as a base model.
fn arn_model(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("arn:")?;
    let resource = rest.splitn(5, ':').nth(4)?;
    let (kind, name) = resource.split_once('/')?;
    matches!(kind, "foundation-model" | "inference-profile").then_some(name)
}

/// The id without a cross-region inference profile prefix.
fn strip_geo(id: &str) -> Option<&str> {
    let (first, rest) = id.split_once('.')?;
    GEO_PREFIXES.contains(&first).then_some(rest)
}

/// `anthropic.claude-sonnet-4-5-20250929-v1:0` → `claude-sonnet-4-5-20250929`.
fn anthropic_name(id: &str) -> Option<&str> {
    let name = id.strip_prefix("anthropic.")?;
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    match name.rsplit_once("-v") {
        Some((head, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Some(head),
        _ => Some(name),
    }
}

/// The price of a Bedrock model id (see the module docs): canonical name, price, and the id the
/// family is read from.
pub(crate) fn lookup<'t>(
    prices: &'t PriceTable,
    id: &str,
) -> Option<(String, &'t ModelPrice, String)> {
    let id = id.trim();
    let base = arn_model(id).unwrap_or(id);
    let model = strip_geo(base).unwrap_or(base);
    for candidate in [id, base, model] {
        if let Some((k, p)) = prices.lookup_for(ProviderId::Bedrock, candidate) {
            return Some((k.to_string(), p, model.to_string()));
        }
    }
    let name = anthropic_name(model)?;
    let (k, p) = prices.lookup_for(ProviderId::Anthropic, name)?;
    Some((k.to_string(), p, model.to_string()))
}

impl Adapter for Bedrock {
    fn id(&self) -> ProviderId {
        ProviderId::Bedrock
    }

    fn route(&self, method: &http::Method, path_and_query: &str) -> Route {
        match classify(method, path_and_query) {
            Ok(_) => Route::Priced,
            Err(r) => r,
        }
    }

    fn quote(
        &self,
        method: &http::Method,
        path_and_query: &str,
        _headers: &http::HeaderMap,
        body: &[u8],
        prices: &PriceTable,
        _opts: &QuoteOptions,
    ) -> Result<Quote, PricingError> {
        let (op, id) =
            classify(method, path_and_query).map_err(|route| PricingError::NotPricedRoute {
                provider: ProviderId::Bedrock,
                route,
            })?;
        let (canonical, price, model) =
            lookup(prices, &id).ok_or_else(|| PricingError::UnknownModel { model: short(&id) })?;
        let family = Family::of(&model);
        let obj = parse_object(body)?;
        let stream = matches!(op, Op::ConverseStream | Op::InvokeStream);
        let tap = match op {
            Op::Converse => TapSpec::BedrockConverse,
            Op::ConverseStream | Op::InvokeStream => TapSpec::BedrockStream,
            Op::Invoke => TapSpec::BedrockInvoke { family },
        };
        match op {
            Op::Converse | Op::ConverseStream => quote_converse(&obj, body, canonical, price, tap),
            Op::Invoke | Op::InvokeStream => match family {
                Some(Family::Anthropic) => {
                    let long_context_beta = obj
                        .get("anthropic_beta")
                        .and_then(Value::as_array)
                        .is_some_and(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .any(|b| b.contains("context-1m"))
                        });
                    quote_messages(MessagesCall {
                        obj: &obj,
                        body,
                        long_context_beta,
                        model: canonical,
                        price,
                        output_cap: None,
                        stream,
                        tap,
                    })
                }
                Some(_) => quote_native(&obj, body, canonical, price, stream, tap),
                None => Err(unpriced(format!(
                    "the InvokeModel body format of '{}' is not known (use Converse, which has one format for every model)",
                    short(&id)
                ))),
            },
        }
    }
}

/// How a Converse content block (or a native body's part) counts toward the input bound.
fn classify_part(m: &Map<String, Value>) -> Part {
    if m.contains_key("s3Location") || m.contains_key("video") || m.contains_key("audio") {
        // Content in S3, video and audio: their size cannot be told from the request.
        return if m.contains_key("audio") {
            Part::Audio
        } else {
            Part::Unbounded
        };
    }
    if let Some(doc) = m.get("document") {
        let source = doc.get("source");
        let inline_text =
            source.is_some_and(|s| s.get("text").is_some() || s.get("content").is_some());
        return if inline_text {
            Part::Plain
        } else {
            Part::Unbounded
        };
    }
    if m.contains_key("image") || m.get("type").and_then(Value::as_str) == Some("image_url") {
        return Part::Image;
    }
    Part::Plain
}

/// Prompt-cache writes asked for: `cachePoint` blocks (Converse, Nova), `None` if none.
fn cache_points(v: &Value) -> Option<bool> {
    fn visit(v: &Value, found: &mut Option<bool>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "cachePoint" && !child.is_null() {
                        let one_hour = child.get("ttl").and_then(Value::as_str) == Some("1h");
                        *found = Some(found.unwrap_or(false) || one_hour);
                    }
                    visit(child, found);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| visit(c, found)),
            _ => {}
        }
    }
    let mut found = super::cache_write_request(v);
    visit(v, &mut found);
    found
}

/// Settings that bill at rates the table does not carry, in Converse and native bodies alike.
fn refuse_premium(obj: &Map<String, Value>) -> Result<(), PricingError> {
    if obj
        .get("performanceConfig")
        .and_then(|p| p.get("latency"))
        .and_then(Value::as_str)
        == Some("optimized")
    {
        return Err(unpriced(
            "latency-optimized inference bills at rates the price table does not carry",
        ));
    }
    let tier = obj
        .get("serviceTier")
        .and_then(|t| t.get("type").or(Some(t)))
        .and_then(Value::as_str);
    if tier.is_some_and(|t| !matches!(t, "default" | "flex")) {
        return Err(unpriced(
            "this service tier bills at rates the price table does not carry",
        ));
    }
    if obj.get("guardrailConfig").is_some_and(|g| !g.is_null()) {
        return Err(unpriced(
            "guardrails bill per text unit, which the price table does not carry",
        ));
    }
    Ok(())
}

fn tools_overhead(count: u64) -> u64 {
    if count > 0 {
        ANTHROPIC_TOOLS_PREAMBLE_TOKENS + count * ANTHROPIC_TOOL_TOKENS
    } else {
        0
    }
}

fn quote_converse(
    obj: &Map<String, Value>,
    body: &[u8],
    model: String,
    price: &ModelPrice,
    tap: TapSpec,
) -> Result<Quote, PricingError> {
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("'messages' must be an array"))?;
    refuse_premium(obj)?;
    let whole = Value::Object(obj.clone());
    let parts = count_parts(&whole, &classify_part);
    if parts.audio > 0 {
        return Err(unpriced(
            "audio input bills at rates the price table does not carry",
        ));
    }
    let tools = obj
        .get("toolConfig")
        .and_then(|t| t.get("tools"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let bound = InputBound {
        body_bytes: u64::try_from(body.len()).unwrap_or(u64::MAX),
        messages: messages.len() as u64 + 1,
        extra_tokens: tools_overhead(tools),
        images: parts.images,
        per_image_tokens: IMAGE_TOKENS,
        unbounded: parts.unbounded > 0,
    };
    let input = bound.tokens(price.context_window);
    let mut limit = match obj.get("inferenceConfig").and_then(Value::as_object) {
        Some(ic) => max_limit(ic, &["maxTokens"])?,
        None => None,
    };
    // Model-specific fields travel in additionalModelRequestFields; a larger limit there wins.
    if let Some(extra) = obj
        .get("additionalModelRequestFields")
        .and_then(Value::as_object)
    {
        if let Some(n) = max_limit(extra, &["max_tokens", "max_gen_len", "max_new_tokens"])? {
            limit = Some(limit.map_or(n, |l| l.max(n)));
        }
    }
    let plan = plan_output(limit, price, &QuoteOptions::none());
    Ok(QuoteParts {
        model,
        price: price.clone(),
        input,
        output: plan.per_choice,
        cache_write: cache_points(&whole),
        stream: tap == TapSpec::BedrockStream,
        body_rewrite: None,
        tap,
    }
    .into_quote())
}

/// A model-native InvokeModel body of the Meta, Mistral, Nova or Cohere families.
fn quote_native(
    obj: &Map<String, Value>,
    body: &[u8],
    model: String,
    price: &ModelPrice,
    stream: bool,
    tap: TapSpec,
) -> Result<Quote, PricingError> {
    refuse_premium(obj)?;
    let whole = Value::Object(obj.clone());
    let mut parts = count_parts(&whole, &classify_part);
    if parts.audio > 0 {
        return Err(unpriced(
            "audio input bills at rates the price table does not carry",
        ));
    }
    // Llama 3.2 vision: `images` is an array of base64 strings.
    if let Some(images) = obj.get("images").and_then(Value::as_array) {
        parts.images += images.len() as u64;
    }
    let messages = ["messages", "chat_history"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(Value::as_array))
        .map(Vec::len)
        .sum::<usize>() as u64;
    let tools = obj
        .get("tools")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64
        + obj
            .get("toolConfig")
            .and_then(|t| t.get("tools"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len) as u64;
    let bound = InputBound {
        body_bytes: u64::try_from(body.len()).unwrap_or(u64::MAX),
        messages: messages + 1,
        extra_tokens: tools_overhead(tools),
        images: parts.images,
        per_image_tokens: IMAGE_TOKENS,
        unbounded: parts.unbounded > 0,
    };
    let input = bound.tokens(price.context_window);
    // Every output-limit spelling of these families; the largest given wins.
    let mut limit = max_limit(obj, &["max_tokens", "max_gen_len", "max_new_tokens"])?;
    for nested in ["inferenceConfig", "textGenerationConfig"] {
        if let Some(o) = obj.get(nested).and_then(Value::as_object) {
            if let Some(n) = max_limit(o, &["maxTokens", "max_new_tokens", "maxTokenCount"])? {
                limit = Some(limit.map_or(n, |l| l.max(n)));
            }
        }
    }
    let choices = max_limit(obj, &["n", "num_generations"])?
        .unwrap_or(1)
        .max(1);
    let plan = plan_output(limit, price, &QuoteOptions::none());
    Ok(QuoteParts {
        model,
        price: price.clone(),
        input,
        output: plan.per_choice.saturating_mul(choices),
        cache_write: cache_points(&whole),
        stream,
        body_rewrite: None,
        tap,
    }
    .into_quote())
}

// ---------------------------------------------------------------------------------------------
// Usage

/// Input, output and cache counts as one Bedrock API reports them, turned into disjoint buckets.
fn bedrock_usage(
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    cache_read: u64,
    cache_write: u64,
) -> Option<Usage> {
    let input = input?;
    let output = output.unwrap_or(0);
    let cached = cache_read.saturating_add(cache_write);
    let inside = cached > 0 && total == Some(input.saturating_add(output));
    Some(Usage {
        input_uncached: if inside {
            input.saturating_sub(cached)
        } else {
            input
        },
        input_cached: cache_read,
        cache_write_5m: cache_write,
        output,
        ..Usage::default()
    })
}

/// Converse's (and ConverseStream `metadata`'s) `usage` object.
pub(crate) fn converse_usage(u: &Value) -> Option<Usage> {
    bedrock_usage(
        num(u, &["inputTokens"]),
        num(u, &["outputTokens"]),
        num(u, &["totalTokens"]),
        num(u, &["cacheReadInputTokens"]).unwrap_or(0),
        num(u, &["cacheWriteInputTokens"]).unwrap_or(0),
    )
}

pub(crate) fn converse_body_usage(v: &Value) -> Option<Usage> {
    v.get("usage").and_then(converse_usage)
}

/// A model-native InvokeModel answer.
pub(crate) fn invoke_body_usage(family: Option<Family>, v: &Value) -> Option<Usage> {
    match family? {
        Family::Anthropic => super::anthropic::body_usage(v),
        Family::Nova => {
            let u = v.get("usage")?;
            bedrock_usage(
                num(u, &["inputTokens"]),
                num(u, &["outputTokens"]),
                num(u, &["totalTokens"]),
                num(u, &["cacheReadInputTokenCount"]).unwrap_or(0),
                num(u, &["cacheWriteInputTokenCount"]).unwrap_or(0),
            )
        }
        Family::Meta => bedrock_usage(
            num(v, &["prompt_token_count"]),
            num(v, &["generation_token_count"]),
            None,
            0,
            0,
        ),
        Family::Cohere => bedrock_usage(
            num(v, &["meta", "billed_units", "input_tokens"]),
            num(v, &["meta", "billed_units", "output_tokens"]),
            None,
            0,
            0,
        ),
        Family::Mistral => None,
    }
}

/// The `x-amzn-bedrock-*-token-count` headers of an InvokeModel answer, when both counts are there.
pub(crate) fn header_usage(headers: &http::HeaderMap) -> Option<Usage> {
    let count = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let input = count("x-amzn-bedrock-input-token-count")?;
    let output = count("x-amzn-bedrock-output-token-count")?;
    bedrock_usage(
        Some(input),
        Some(output),
        None,
        count("x-amzn-bedrock-cache-read-input-token-count").unwrap_or(0),
        count("x-amzn-bedrock-cache-write-input-token-count").unwrap_or(0),
    )
}

/// `amazon-bedrock-invocationMetrics` of an InvokeModelWithResponseStream chunk.
fn invocation_metrics(v: &Value) -> Option<Usage> {
    let m = v.get("amazon-bedrock-invocationMetrics")?;
    bedrock_usage(
        num(m, &["inputTokenCount"]),
        num(m, &["outputTokenCount"]),
        None,
        num(m, &["cacheReadInputTokenCount"]).unwrap_or(0),
        num(m, &["cacheWriteInputTokenCount"]).unwrap_or(0),
    )
}

/// Reads usage from a ConverseStream or InvokeModelWithResponseStream answer: bytes pass through
/// untouched; the event stream is decoded beside them.
#[derive(Debug, Default)]
pub(crate) struct EventStreamTap {
    decoder: Decoder,
    messages: Vec<Message>,
    usage: Option<Usage>,
}

impl EventStreamTap {
    fn on_message(&mut self, m: &Message) {
        if m.header(":message-type").is_some_and(|t| t != "event") {
            return;
        }
        match m.header(":event-type") {
            Some("metadata") => {
                if let Some(u) = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v.get("usage").and_then(converse_usage))
                {
                    self.usage = Some(u);
                }
            }
            Some("chunk") => {
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    return;
                };
                let Some(b64) = v.get("bytes").and_then(Value::as_str) else {
                    return;
                };
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                    return;
                };
                if let Some(u) = serde_json::from_slice::<Value>(&raw)
                    .ok()
                    .and_then(|inner| invocation_metrics(&inner))
                {
                    self.usage = Some(u);
                }
            }
            _ => {}
        }
    }
}

impl super::UsageTap for EventStreamTap {
    fn on_chunk(&mut self, chunk: &[u8]) -> bytes::Bytes {
        let mut msgs = std::mem::take(&mut self.messages);
        if self.decoder.feed(chunk, &mut msgs).is_err() && msgs.is_empty() {
            if let Some(e) = self.decoder.error() {
                tracing::debug!("Bedrock event stream unreadable ({e}); the reservation stands");
            }
        }
        for m in msgs.drain(..) {
            self.on_message(&m);
        }
        self.messages = msgs;
        bytes::Bytes::copy_from_slice(chunk)
    }

    fn finish(&mut self) -> (bytes::Bytes, Option<Usage>) {
        if self.decoder.error().is_some() {
            return (bytes::Bytes::new(), None);
        }
        (bytes::Bytes::new(), self.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes() {
        let b = &BEDROCK;
        for op in [
            "converse",
            "converse-stream",
            "invoke",
            "invoke-with-response-stream",
        ] {
            let p = format!("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/{op}");
            assert_eq!(b.route(&Method::POST, &p), Route::Priced, "{p}");
        }
        assert_eq!(
            b.route(&Method::POST, "/model/amazon.nova-pro-v1%3A0/count-tokens"),
            Route::Free
        );
        assert!(matches!(
            b.route(&Method::POST, "/async-invoke"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            b.route(&Method::POST, "/guardrail/g1/version/1/apply"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            b.route(&Method::POST, "/openai/v1/chat/completions"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            b.route(&Method::POST, "/model/x/somethingnew"),
            Route::Unpriced { .. }
        ));
        assert_eq!(b.route(&Method::GET, "/async-invoke"), Route::Free);
    }

    #[test]
    fn model_ids_and_names() {
        assert_eq!(
            percent_decode("us.anthropic.claude-3-5-haiku-20241022-v1%3A0").as_deref(),
            Some("us.anthropic.claude-3-5-haiku-20241022-v1:0")
        );
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(
            anthropic_name("anthropic.claude-sonnet-4-5-20250929-v1:0"),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(
            anthropic_name("anthropic.claude-3-5-sonnet-20241022-v2:0"),
            Some("claude-3-5-sonnet-20241022")
        );
        assert_eq!(
            strip_geo("eu.meta.llama3-2-1b-instruct-v1:0"),
            Some("meta.llama3-2-1b-instruct-v1:0")
        );
        assert_eq!(strip_geo("meta.llama3-2-1b-instruct-v1:0"), None);
        assert_eq!(
            arn_model(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-pro-v1:0"
            ),
            Some("us.amazon.nova-pro-v1:0")
        );
        assert_eq!(
            arn_model("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"),
            Some("amazon.nova-pro-v1:0")
        );
        assert_eq!(
            arn_model("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"),
            None
        );
        assert_eq!(Family::of("amazon.nova-lite-v1:0"), Some(Family::Nova));
        assert_eq!(Family::of("amazon.titan-text-express-v1"), None);
        assert_eq!(Family::of("cohere.command-r-v1:0"), Some(Family::Cohere));
    }

    #[test]
    fn converse_cache_fields_inside_or_apart() {
        // totalTokens = input + output + cache: disjoint buckets.
        let apart = converse_usage(&serde_json::json!({
            "inputTokens": 10, "outputTokens": 5, "totalTokens": 315,
            "cacheReadInputTokens": 200, "cacheWriteInputTokens": 100}))
        .unwrap();
        assert_eq!(
            (
                apart.input_uncached,
                apart.input_cached,
                apart.cache_write_5m,
                apart.output
            ),
            (10, 200, 100, 5)
        );
        // totalTokens = input + output: the cache counts were inside inputTokens.
        let inside = converse_usage(&serde_json::json!({
            "inputTokens": 310, "outputTokens": 5, "totalTokens": 315,
            "cacheReadInputTokens": 200, "cacheWriteInputTokens": 100}))
        .unwrap();
        assert_eq!(inside.total_input(), 310);
        assert_eq!(inside.input_uncached, 10);
        // No total: the dearer (disjoint) reading.
        let unknown = converse_usage(&serde_json::json!({
            "inputTokens": 310, "outputTokens": 5, "cacheReadInputTokens": 200}))
        .unwrap();
        assert_eq!(unknown.total_input(), 510);
        assert_eq!(
            converse_usage(&serde_json::json!({"outputTokens": 5})),
            None
        );
    }
}
