//! Providers: which requests cost money, what they can cost at most, and what they really cost.
//!
//! One module per wire format behind one trait ([`Adapter`]): [`openai`] (Chat Completions,
//! Responses, Embeddings, Completions; also the OpenAI-compatible Mistral, Groq, DeepSeek,
//! Together, OpenRouter, xAI, Fireworks, Cerebras, the Hugging Face router, Perplexity (with its
//! per-request fees: [`perplexity`]) and self-hosted servers), [`azure`], [`anthropic`], [`gemini`], [`bedrock`]
//! (AWS), [`vertex`] (Google Vertex AI: Gemini and Claude), [`cohere`] (v2 chat). Each module's docs say
//! how its provider reports usage when streaming.
//!
//! # The worst case is an upper bound, and why
//! * **Input.** Every tokenizer in use is byte-level (BPE over UTF-8 bytes, or SentencePiece with
//!   byte fallback): every token covers at least one byte of text, so a text never has more tokens
//!   than UTF-8 bytes. The request body holds every character of the prompt (JSON escaping only
//!   adds bytes), so `body bytes` bounds the prompt's text tokens. Added on top: fixed per-request
//!   and per-message overheads for the chat template's hidden tokens, hidden tool prompts, and a
//!   per-image bound for each image (an image URL is a few bytes but hundreds of tokens). Parts whose
//!   size cannot be known from the request (files by id or URL, PDFs, video, a server-side cache,
//!   a previous response) make the input unbounded, and the bound becomes the model's context
//!   window. Everything is capped at the context window: a provider refuses longer input.
//!   Audio parts are refused as unpriced: they bill at audio rates the table does not carry.
//! * **Output.** The client's limit (`max_tokens`, `max_completion_tokens`, `max_output_tokens`,
//!   `generationConfig.maxOutputTokens`; the largest if several are given) capped by the model's
//!   `max_output_tokens`; with no limit, the `output_cap` option (written into the request) or the
//!   model's `max_output_tokens`. Reasoning/thinking tokens are inside these limits on every API
//!   priced here. Several choices (`n`, `best_of`, `candidateCount`) multiply it.
//! * **Rates.** All input at the dearest input rate the request can incur (the cache-write rate
//!   when it asks for caching), at the long-context tier if the input bound crosses it.
//! * **Not bounded, so refused** (`Unpriced`): hosted tools with per-call fees or unbounded
//!   server-side turns (web search, file search, code execution, MCP, grounding), priority
//!   processing, audio in or out, batch jobs, file uploads, realtime sessions.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
mod body_scan;
pub mod cohere;
pub mod gemini;
mod json_pick;
pub mod openai;
pub mod perplexity;
mod rewrite;
pub mod vertex;

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::money::MicroUsd;
use crate::prices::{ModelPrice, PriceTable};
use crate::sse::{SseBlock, SseEvent, SseParser};
use crate::usage::Usage;

/// Hidden tokens every request may carry beyond its text: BOS/EOS, reply priming (OpenAI
/// documents 3), a default system preamble. 64 is several times every documented count.
pub(crate) const REQUEST_OVERHEAD_TOKENS: u64 = 64;
/// Hidden tokens per message: role markers and separators (OpenAI documents 3–4 per message;
/// the JSON around a message is itself ≥ 25 bytes, so this is margin on margin).
pub(crate) const MESSAGE_OVERHEAD_TOKENS: u64 = 8;
/// Largest body kept to read usage from a non-streamed response. Beyond it usage is not read
/// (the reservation stands as the charge); real usage-bearing bodies are far smaller.
pub const MAX_JSON_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The providers SpendGuard prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderId {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    Gemini,
    Mistral,
    Groq,
    DeepSeek,
    Together,
    OpenRouter,
    Xai,
    Bedrock,
    Vertex,
    Cohere,
    Fireworks,
    Perplexity,
    Cerebras,
    HuggingFace,
    /// A host on the provider list that SpendGuard does not know (`extra_provider_hosts`):
    /// priced as an OpenAI-compatible server (vLLM, Ollama, llama.cpp behind TLS) with the
    /// operator's prices.
    SelfHosted,
}

impl ProviderId {
    /// Every provider.
    pub const ALL: [ProviderId; 18] = [
        ProviderId::OpenAi,
        ProviderId::AzureOpenAi,
        ProviderId::Anthropic,
        ProviderId::Gemini,
        ProviderId::Mistral,
        ProviderId::Groq,
        ProviderId::DeepSeek,
        ProviderId::Together,
        ProviderId::OpenRouter,
        ProviderId::Xai,
        ProviderId::Bedrock,
        ProviderId::Vertex,
        ProviderId::Cohere,
        ProviderId::Fireworks,
        ProviderId::Perplexity,
        ProviderId::Cerebras,
        ProviderId::HuggingFace,
        ProviderId::SelfHosted,
    ];

    /// The provider serving `host` (a TLS SNI or Host header; case, a trailing dot and a port are
    /// ignored): a bundled provider ([`ProviderId::known_host`]), else [`ProviderId::SelfHosted`]
    /// for any other host name. Only hosts on the agent's provider list reach pricing, so a host
    /// SpendGuard does not know is one the operator added (`extra_provider_hosts`) to meter a
    /// self-hosted OpenAI-compatible server; its models need configured prices (unknown models
    /// are refused). `None` only for an empty name.
    pub fn from_host(host: &str) -> Option<ProviderId> {
        let known = ProviderId::known_host(host);
        if known.is_some() {
            return known;
        }
        let h = normalize_host(host);
        (!h.is_empty() && !h.bytes().any(|b| b.is_ascii_whitespace() || b == b'/'))
            .then_some(ProviderId::SelfHosted)
    }

    /// The bundled provider serving `host`: `api.openai.com`, `*.openai.azure.com`,
    /// `api.anthropic.com`, `generativelanguage.googleapis.com`, `api.mistral.ai`, `api.groq.com`,
    /// `api.deepseek.com`, `api.together.xyz`, `openrouter.ai`, `api.x.ai`,
    /// `bedrock-runtime[-fips].{region}.amazonaws.com`, `[{region}-]aiplatform.googleapis.com`,
    /// `api.cohere.com` (and the older `api.cohere.ai`), `api.fireworks.ai`, `api.perplexity.ai`,
    /// `api.cerebras.ai`, `router.huggingface.co`.
    pub fn known_host(host: &str) -> Option<ProviderId> {
        let host = normalize_host(host);
        let id = match host.as_str() {
            "api.openai.com" => ProviderId::OpenAi,
            "api.anthropic.com" => ProviderId::Anthropic,
            "generativelanguage.googleapis.com" => ProviderId::Gemini,
            "api.mistral.ai" => ProviderId::Mistral,
            "api.groq.com" => ProviderId::Groq,
            "api.deepseek.com" => ProviderId::DeepSeek,
            "api.together.xyz" => ProviderId::Together,
            "openrouter.ai" => ProviderId::OpenRouter,
            "api.x.ai" => ProviderId::Xai,
            "api.cohere.com" | "api.cohere.ai" => ProviderId::Cohere,
            "api.fireworks.ai" => ProviderId::Fireworks,
            "api.perplexity.ai" => ProviderId::Perplexity,
            "api.cerebras.ai" => ProviderId::Cerebras,
            "router.huggingface.co" => ProviderId::HuggingFace,
            h if is_bedrock_runtime(h) => ProviderId::Bedrock,
            h if is_vertex(h) => ProviderId::Vertex,
            h => {
                let sub = h.strip_suffix(".openai.azure.com")?;
                if sub.is_empty() || sub.contains('.') {
                    return None;
                }
                ProviderId::AzureOpenAi
            }
        };
        Some(id)
    }

    /// A short stable name (metrics labels, provider-qualified price keys).
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderId::OpenAi => "openai",
            ProviderId::AzureOpenAi => "azure",
            ProviderId::Anthropic => "anthropic",
            ProviderId::Gemini => "gemini",
            ProviderId::Mistral => "mistral",
            ProviderId::Groq => "groq",
            ProviderId::DeepSeek => "deepseek",
            ProviderId::Together => "together",
            ProviderId::OpenRouter => "openrouter",
            ProviderId::Xai => "xai",
            ProviderId::Bedrock => "bedrock",
            ProviderId::Vertex => "vertex",
            ProviderId::Cohere => "cohere",
            ProviderId::Fireworks => "fireworks",
            ProviderId::Perplexity => "perplexity",
            ProviderId::Cerebras => "cerebras",
            ProviderId::HuggingFace => "huggingface",
            ProviderId::SelfHosted => "self_hosted",
        }
    }
}

/// Lowercase, without surrounding space, a port or a trailing dot.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// `aiplatform.googleapis.com` or `{region}-aiplatform.googleapis.com`.
fn is_vertex(host: &str) -> bool {
    host == "aiplatform.googleapis.com"
        || host
            .strip_suffix("-aiplatform.googleapis.com")
            .is_some_and(|region| {
                !region.is_empty()
                    && region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
}

/// `bedrock-runtime.{region}.amazonaws.com` or `bedrock-runtime-fips.{region}.amazonaws.com`
/// (one label of letters, digits and dashes for the region).
fn is_bedrock_runtime(host: &str) -> bool {
    let Some(rest) = host
        .strip_prefix("bedrock-runtime.")
        .or_else(|| host.strip_prefix("bedrock-runtime-fips."))
    else {
        return false;
    };
    rest.strip_suffix(".amazonaws.com").is_some_and(|region| {
        !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

impl std::fmt::Display for ProviderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the proxy must do with a request before forwarding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Costs nothing: forward without a reservation.
    Free,
    /// Costs money: call [`Adapter::quote`] and reserve its worst case.
    Priced,
    /// Cannot be priced before it runs: block as `unpriced_request`.
    Unpriced { why: &'static str },
}

/// Options the proxy passes to every quote.
#[derive(Clone, Copy, Debug)]
pub struct QuoteOptions<'a> {
    /// When a request sets no output limit: write this one into it (and price with it).
    pub output_cap: Option<u64>,
    /// Azure OpenAI deployment name → model name.
    pub azure_deployments: &'a HashMap<String, String>,
}

impl QuoteOptions<'static> {
    /// No output cap, no Azure deployments.
    pub fn none() -> QuoteOptions<'static> {
        static EMPTY: OnceLock<HashMap<String, String>> = OnceLock::new();
        QuoteOptions {
            output_cap: None,
            azure_deployments: EMPTY.get_or_init(HashMap::new),
        }
    }
}

/// Why a request could not be priced. Messages name what to check; they never contain bodies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("no price for model or Azure deployment '{model}': set a price for it (config prices or `spendguard price set`), map the Azure deployment to a model, or check the name")]
    UnknownModel { model: String },
    #[error("request cannot be priced before it runs: {why}")]
    Unpriced { why: String },
    #[error("request body cannot be priced: {detail}; check that the client sends a valid JSON request for this endpoint")]
    MalformedBody { detail: String },
    #[error("{provider} route is {route:?}, not priced: forward it without a quote (free) or block it (unpriced)")]
    NotPricedRoute { provider: ProviderId, route: Route },
}

/// A provider adapter: routing, quoting and (through [`Quote::response_tap`]) usage.
pub trait Adapter: Send + Sync {
    /// The provider this adapter serves.
    fn id(&self) -> ProviderId;
    /// Whether a request is free, priced or unpriceable. Unknown non-GET/HEAD requests are
    /// `Unpriced` (fail closed); unknown GET/HEAD requests are `Free`.
    fn route(&self, method: &http::Method, path_and_query: &str) -> Route;
    /// The worst-case price of a `Priced` request, and the body to forward if it must change.
    fn quote(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        prices: &PriceTable,
        opts: &QuoteOptions,
    ) -> Result<Quote, PricingError>;
}

/// The adapter for a provider.
pub fn adapter_for(id: ProviderId) -> &'static dyn Adapter {
    match id {
        ProviderId::AzureOpenAi => &azure::AZURE,
        ProviderId::Anthropic => &anthropic::ANTHROPIC,
        ProviderId::Gemini => &gemini::GEMINI,
        ProviderId::Bedrock => &bedrock::BEDROCK,
        ProviderId::Vertex => &vertex::VERTEX,
        ProviderId::Cohere => &cohere::COHERE,
        other => openai::compatible(other),
    }
}

/// The price of one request before it runs.
#[derive(Clone, Debug)]
pub struct Quote {
    /// Canonical priced model name (the price table's key).
    pub model: String,
    pub price: ModelPrice,
    pub worst_input_tokens: u64,
    /// All choices together.
    pub worst_output_tokens: u64,
    /// `price` applied to the worst-case input (at the dearest input rate the request can incur)
    /// and output.
    pub worst_case: MicroUsd,
    pub stream: bool,
    /// `Some(new body)` when the adapter changed the request (output cap, usage in streams).
    pub body_rewrite: Option<Vec<u8>>,
    pub(crate) tap: TapSpec,
}

/// How to read usage from the response of a quoted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TapSpec {
    /// Chat Completions / Completions; `drop_usage_chunk`: we injected `include_usage`, so the
    /// usage-only chunk must not reach the client.
    OpenAiChat {
        drop_usage_chunk: bool,
    },
    OpenAiResponses,
    OpenAiEmbeddings,
    Anthropic,
    /// `sse`: `alt=sse` was asked (otherwise a stream is one JSON array).
    Gemini {
        sse: bool,
    },
    /// Gemini embeddings: usage is read if present (it usually is not: the reservation stands).
    GeminiEmbed,
    /// Bedrock Converse (JSON `usage`).
    BedrockConverse,
    /// Bedrock InvokeModel: the token-count headers, else the model family's native body.
    BedrockInvoke {
        family: Option<bedrock::Family>,
    },
    /// Bedrock ConverseStream / InvokeModelWithResponseStream (binary event stream).
    BedrockStream,
    /// Cohere v2 chat: JSON `usage.billed_units`, or the `message-end` event of a stream.
    Cohere,
    /// Perplexity chat: `usage` with its search fields, cumulative on stream chunks; `size` is
    /// the quoted search context size, billed when the answer reports none.
    Perplexity {
        size: crate::usage::SearchContext,
    },
}

impl Quote {
    /// A tap for the response body: forwards bytes and collects usage. `status` >= 400: the
    /// provider does not bill it, usage is zero. `content_type` `text/event-stream` selects the
    /// SSE reader (without a content type, the request's `stream` flag decides).
    ///
    /// The body must reach the tap uncompressed: for priced requests the proxy should send
    /// `Accept-Encoding: identity` upstream (or decompress before tapping). A compressed body
    /// yields no usage (the reservation is charged) and, when the injected usage chunk must be
    /// filtered, is only forwarded at the end.
    pub fn response_tap(&self, status: u16, content_type: Option<&str>) -> Box<dyn UsageTap> {
        self.tap_for(status, content_type, None)
    }

    /// [`Quote::response_tap`] for a response whose headers are known: some providers report
    /// usage in them (Bedrock InvokeModel's `x-amzn-bedrock-*-token-count`).
    pub fn response_tap_for(&self, status: u16, headers: &http::HeaderMap) -> Box<dyn UsageTap> {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        self.tap_for(status, ct, Some(headers))
    }

    fn tap_for(
        &self,
        status: u16,
        content_type: Option<&str>,
        headers: Option<&http::HeaderMap>,
    ) -> Box<dyn UsageTap> {
        if status >= 400 {
            return Box::new(ErrorTap);
        }
        let tap = self.body_tap(content_type, headers);
        match self.tap {
            TapSpec::Perplexity { size } => Box::new(perplexity::FeeTap { inner: tap, size }),
            _ => tap,
        }
    }

    /// The tap of a successful response's body.
    fn body_tap(
        &self,
        content_type: Option<&str>,
        headers: Option<&http::HeaderMap>,
    ) -> Box<dyn UsageTap> {
        match self.tap {
            TapSpec::BedrockStream => return Box::<bedrock::EventStreamTap>::default(),
            TapSpec::BedrockInvoke { family } => {
                if let Some(u) = headers.and_then(bedrock::header_usage) {
                    return Box::new(KnownUsageTap(u));
                }
                return Box::new(JsonTap::new(Reader::BedrockInvoke(family)));
            }
            TapSpec::BedrockConverse => {
                return Box::new(JsonTap::new(Reader::Members(
                    USAGE,
                    bedrock::converse_body_usage,
                )))
            }
            _ => {}
        }
        let sse = match content_type {
            Some(ct) => ct.to_ascii_lowercase().contains("text/event-stream"),
            None => match self.tap {
                TapSpec::Gemini { sse } => sse,
                _ => self.stream,
            },
        };
        if sse {
            let (state, filter): (Box<dyn StreamState>, bool) = match self.tap {
                TapSpec::OpenAiChat { drop_usage_chunk } => (
                    Box::new(openai::ChatStream::new(drop_usage_chunk)),
                    drop_usage_chunk,
                ),
                TapSpec::Perplexity { .. } => (Box::new(openai::ChatStream::perplexity()), false),
                TapSpec::OpenAiResponses => (Box::<openai::ResponsesStream>::default(), false),
                TapSpec::Anthropic => (Box::<anthropic::MessagesStream>::default(), false),
                TapSpec::Cohere => (Box::<cohere::ChatStream>::default(), false),
                TapSpec::Gemini { .. } | TapSpec::GeminiEmbed => {
                    (Box::<gemini::GenerateStream>::default(), false)
                }
                TapSpec::OpenAiEmbeddings
                | TapSpec::BedrockConverse
                | TapSpec::BedrockInvoke { .. }
                | TapSpec::BedrockStream => (Box::new(NoStreamUsage), false),
            };
            return Box::new(SseTap::new(state, filter));
        }
        // Each reader's members are every top-level member its usage function looks at.
        let reader = match self.tap {
            TapSpec::OpenAiChat { .. } => {
                Reader::Members(&["usage", "x_groq"], openai::chat_body_usage)
            }
            TapSpec::Perplexity { .. } => Reader::Members(USAGE, perplexity::body_usage),
            TapSpec::OpenAiResponses => Reader::Members(USAGE, openai::responses_body_usage),
            TapSpec::OpenAiEmbeddings => Reader::Members(USAGE, openai::embeddings_body_usage),
            TapSpec::Anthropic => Reader::Members(&["type", "usage"], anthropic::body_usage),
            // A JSON answer, or a stream sent without an event-stream content type.
            TapSpec::Cohere => Reader::Raw(cohere::body_usage),
            // A Gemini body may be a streamed JSON array of responses: read whole.
            TapSpec::Gemini { .. } | TapSpec::GeminiEmbed => Reader::Whole(gemini::body_usage),
            TapSpec::BedrockConverse | TapSpec::BedrockStream => {
                Reader::Members(USAGE, bedrock::converse_body_usage)
            }
            // Handled above; if ever reached, no usage: the reservation stands.
            TapSpec::BedrockInvoke { .. } => Reader::Whole(|_| None),
        };
        Box::new(JsonTap::new(reader))
    }
}

/// Reads usage from a response body as it streams to the client.
pub trait UsageTap: Send {
    /// Each response body chunk in order; returns the bytes to forward to the client now.
    /// Normally the chunk unchanged (zero added latency); it may hold back an incomplete SSE
    /// event only when it must filter.
    fn on_chunk(&mut self, chunk: &[u8]) -> Bytes;
    /// End of body (clean or not): the bytes still to forward, and the usage seen
    /// (`None` = no usage seen).
    fn finish(&mut self) -> (Bytes, Option<Usage>);
}

/// Providers do not bill error responses: forward as is, report zero usage.
#[derive(Debug)]
struct ErrorTap;

impl UsageTap for ErrorTap {
    fn on_chunk(&mut self, chunk: &[u8]) -> Bytes {
        Bytes::copy_from_slice(chunk)
    }
    fn finish(&mut self) -> (Bytes, Option<Usage>) {
        (Bytes::new(), Some(Usage::default()))
    }
}

/// Usage the response headers already told: the body is forwarded untouched.
struct KnownUsageTap(Usage);

impl UsageTap for KnownUsageTap {
    fn on_chunk(&mut self, chunk: &[u8]) -> Bytes {
        Bytes::copy_from_slice(chunk)
    }
    fn finish(&mut self) -> (Bytes, Option<Usage>) {
        (Bytes::new(), Some(self.0))
    }
}

const USAGE: &[&str] = &["usage"];

/// How a non-streamed body's usage is read.
#[derive(Clone, Copy)]
enum Reader {
    /// Only these top-level members are built (`json_pick`); the rest of the answer is skipped.
    Members(&'static [&'static str], fn(&Value) -> Option<Usage>),
    /// The whole body as a `Value` (Gemini's streamed arrays).
    Whole(fn(&Value) -> Option<Usage>),
    /// Bedrock InvokeModel: the model family's native body (members vary by family).
    BedrockInvoke(Option<bedrock::Family>),
    /// The raw bytes (bodies that may not be one JSON value).
    Raw(fn(&[u8]) -> Option<Usage>),
}

impl Reader {
    fn usage(self, body: &[u8]) -> Option<Usage> {
        match self {
            Reader::Members(keep, usage) => {
                json_pick::pick_members(body, keep).and_then(|v| usage(&v))
            }
            Reader::Whole(usage) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| usage(&v)),
            Reader::BedrockInvoke(family) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| bedrock::invoke_body_usage(family, &v)),
            Reader::Raw(usage) => usage(body),
        }
    }
}

/// A non-streamed body: forwarded unchanged, a bounded copy read at the end.
struct JsonTap {
    buf: Vec<u8>,
    overflow: bool,
    reader: Reader,
}

impl JsonTap {
    fn new(reader: Reader) -> JsonTap {
        JsonTap {
            buf: Vec::new(),
            overflow: false,
            reader,
        }
    }
}

impl UsageTap for JsonTap {
    fn on_chunk(&mut self, chunk: &[u8]) -> Bytes {
        if !self.overflow {
            if self.buf.len().saturating_add(chunk.len()) > MAX_JSON_BODY_BYTES {
                self.overflow = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
        Bytes::copy_from_slice(chunk)
    }

    fn finish(&mut self) -> (Bytes, Option<Usage>) {
        if self.overflow {
            tracing::warn!(
                limit = MAX_JSON_BODY_BYTES,
                "response body too large to read usage from"
            );
            return (Bytes::new(), None);
        }
        let buf = std::mem::take(&mut self.buf);
        (Bytes::new(), self.reader.usage(&buf))
    }
}

/// Per-format state of a streamed response.
pub(crate) trait StreamState: Send {
    /// One event; returns false when the event must not reach the client.
    fn on_event(&mut self, ev: &SseEvent) -> bool;
    /// Usage, once the stream has shown its final counts.
    fn usage(&self) -> Option<Usage>;
}

struct NoStreamUsage;

impl StreamState for NoStreamUsage {
    fn on_event(&mut self, _: &SseEvent) -> bool {
        true
    }
    fn usage(&self) -> Option<Usage> {
        None
    }
}

/// A streamed (SSE) body. Without filtering, chunks pass through untouched and a parse-only SSE
/// parser follows along. With filtering, whole events are forwarded as soon as they are complete
/// and filtered ones dropped with their exact bytes.
struct SseTap {
    parser: SseParser,
    state: Box<dyn StreamState>,
    filter: bool,
    /// The last dropped event ended in CR: an LF right after it belongs to it.
    drop_lf: bool,
    /// The last block ended in CR: an LF starting the next block belongs to the last one.
    prev_ended_cr: bool,
    blocks: Vec<SseBlock>,
}

impl SseTap {
    fn new(state: Box<dyn StreamState>, filter: bool) -> SseTap {
        SseTap {
            parser: if filter {
                SseParser::with_raw()
            } else {
                SseParser::new()
            },
            state,
            filter,
            drop_lf: false,
            prev_ended_cr: false,
            blocks: Vec::new(),
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, raw: &[u8]) {
        let raw = if std::mem::take(&mut self.drop_lf) {
            raw.strip_prefix(b"\n").unwrap_or(raw)
        } else {
            raw
        };
        out.extend_from_slice(raw);
    }
}

impl UsageTap for SseTap {
    fn on_chunk(&mut self, chunk: &[u8]) -> Bytes {
        let mut blocks = std::mem::take(&mut self.blocks);
        self.parser.feed(chunk, &mut blocks);
        if !self.filter {
            for b in blocks.drain(..) {
                if let Some(ev) = &b.event {
                    self.state.on_event(ev);
                }
            }
            self.blocks = blocks;
            return Bytes::copy_from_slice(chunk);
        }
        let mut out = Vec::with_capacity(chunk.len());
        for b in blocks.drain(..) {
            let keep = b.event.as_ref().is_none_or(|ev| self.state.on_event(ev));
            if keep {
                self.emit(&mut out, &b.raw);
            } else {
                // An LF starting a dropped block ends the previous (kept) block's CRLF.
                if std::mem::take(&mut self.drop_lf) {
                    // The previous block was dropped too: its LF goes with it.
                } else if self.prev_ended_cr && b.raw.first() == Some(&b'\n') {
                    out.push(b'\n');
                }
                self.drop_lf = b.raw.last() == Some(&b'\r');
            }
            if !b.raw.is_empty() {
                self.prev_ended_cr = b.raw.last() == Some(&b'\r');
            }
        }
        self.blocks = blocks;
        Bytes::from(out)
    }

    fn finish(&mut self) -> (Bytes, Option<Usage>) {
        let rest = self.parser.finish();
        let mut out = Vec::new();
        if self.filter {
            self.emit(&mut out, &rest);
        }
        (Bytes::from(out), self.state.usage())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the provider modules.

/// The query-less path, without a trailing slash.
pub(crate) fn split_path(path_and_query: &str) -> (&str, &str) {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    (path, query)
}

/// A query parameter's raw value.
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn malformed(detail: impl Into<String>) -> PricingError {
    PricingError::MalformedBody {
        detail: detail.into(),
    }
}

pub(crate) fn unpriced(why: impl Into<String>) -> PricingError {
    PricingError::Unpriced { why: why.into() }
}

/// Shortens a client-supplied name for an error message.
pub(crate) fn short(name: &str) -> String {
    name.chars().take(200).collect()
}

/// Parses a request body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, PricingError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(malformed("the body is JSON but not an object")),
        Err(e) => Err(malformed(format!(
            "the body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

/// A token-count field: absent or null → None; a non-negative integer → Some; anything else is
/// malformed (the provider would refuse it too).
pub(crate) fn count_field(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<u64>, PricingError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => count_value(v)
            .map(Some)
            .ok_or_else(|| malformed(format!("'{key}' must be a non-negative integer"))),
    }
}

/// A non-null token count: a non-negative integer, or a float spelling one.
pub(crate) fn count_value(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        // 100.0 is how some clients spell 100; fractions, negatives and strings are refused.
        v.is_f64()
            .then(|| v.to_string())
            .and_then(|s| s.strip_suffix(".0").and_then(|i| i.parse::<u64>().ok()))
    })
}

/// The largest of several limit fields that are present.
pub(crate) fn max_limit(
    obj: &Map<String, Value>,
    keys: &[&str],
) -> Result<Option<u64>, PricingError> {
    let mut best: Option<u64> = None;
    for k in keys {
        if let Some(n) = count_field(obj, k)? {
            best = Some(best.map_or(n, |b| b.max(n)));
        }
    }
    Ok(best)
}

/// A number inside nested objects (`["usage", "prompt_tokens_details", "cached_tokens"]`).
pub(crate) fn num(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_u64()
}

/// What one content part of a request is, for the input bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text or structure: its bytes are in the body.
    Plain,
    /// An image: at most the provider's per-image bound.
    Image,
    /// Audio: billed at audio rates the table does not carry.
    Audio,
    /// Size unknowable from the request (file by id/URL, PDF, video…).
    Unbounded,
}

/// The parts of a request that change its input bound.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PartCounts {
    pub images: u64,
    pub audio: u64,
    pub unbounded: u64,
}

/// Walks every object of a request and classifies it.
pub(crate) fn count_parts(v: &Value, classify: &dyn Fn(&Map<String, Value>) -> Part) -> PartCounts {
    let mut c = PartCounts::default();
    walk(v, classify, &mut c);
    c
}

fn walk(v: &Value, classify: &dyn Fn(&Map<String, Value>) -> Part, c: &mut PartCounts) {
    match v {
        Value::Object(m) => {
            match classify(m) {
                Part::Plain => {}
                Part::Image => c.images += 1,
                Part::Audio => c.audio += 1,
                Part::Unbounded => c.unbounded += 1,
            }
            for child in m.values() {
                walk(child, classify, c);
            }
        }
        Value::Array(a) => {
            for child in a {
                walk(child, classify, c);
            }
        }
        _ => {}
    }
}

/// The inputs of an input bound (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InputBound {
    pub body_bytes: u64,
    pub messages: u64,
    /// Hidden tokens of tools, system prompts and the like.
    pub extra_tokens: u64,
    pub images: u64,
    pub per_image_tokens: u64,
    pub unbounded: bool,
}

impl InputBound {
    /// The bound, capped at `cap` (the context window, scaled for multi-input requests).
    pub fn tokens(&self, cap: u64) -> u64 {
        if self.unbounded {
            return cap;
        }
        let sum = REQUEST_OVERHEAD_TOKENS
            .saturating_add(self.body_bytes)
            .saturating_add(self.messages.saturating_mul(MESSAGE_OVERHEAD_TOKENS))
            .saturating_add(self.extra_tokens)
            .saturating_add(self.images.saturating_mul(self.per_image_tokens));
        sum.min(cap)
    }
}

/// How the output limit of a request is settled.
#[derive(Clone, Debug)]
pub(crate) struct OutputPlan {
    /// Output tokens of one choice.
    pub per_choice: u64,
    /// When the client set no limit and an output cap applies: the limit to write.
    pub write_limit: Option<u64>,
}

/// The per-choice output bound: the client's limit capped by the model's maximum; else the
/// configured cap (to be written into the request); else the model's maximum.
pub(crate) fn plan_output(
    client_limit: Option<u64>,
    price: &ModelPrice,
    opts: &QuoteOptions,
) -> OutputPlan {
    let model_max = price.max_output_tokens;
    let capped = |n: u64| if model_max > 0 { n.min(model_max) } else { n };
    match (client_limit, opts.output_cap) {
        (Some(limit), _) => OutputPlan {
            per_choice: capped(limit),
            write_limit: None,
        },
        (None, Some(cap)) => {
            let c = capped(cap);
            OutputPlan {
                per_choice: c,
                write_limit: Some(c),
            }
        }
        (None, None) => OutputPlan {
            per_choice: model_max,
            write_limit: None,
        },
    }
}

/// Whether a request asks for prompt-cache writes: `None` no, `Some(false)` 5-minute only,
/// `Some(true)` a 1-hour TTL somewhere.
pub(crate) fn cache_write_request(v: &Value) -> Option<bool> {
    fn visit(v: &Value, found: &mut Option<bool>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "cache_control" && !child.is_null() {
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
    let mut found = None;
    visit(v, &mut found);
    found
}

/// Applies splices to the body, checking that the result is still valid JSON.
pub(crate) fn rewrite_body(
    body: &[u8],
    splices: Vec<rewrite::Splice>,
) -> Result<Vec<u8>, PricingError> {
    let out =
        rewrite::apply(body, splices).ok_or_else(|| malformed("the body could not be edited"))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&out)
        .map_err(|_| malformed("editing the body produced invalid JSON"))?;
    Ok(out)
}

/// Everything a quote is made of.
pub(crate) struct QuoteParts {
    pub model: String,
    pub price: ModelPrice,
    pub input: u64,
    pub output: u64,
    pub cache_write: Option<bool>,
    pub stream: bool,
    pub body_rewrite: Option<Vec<u8>>,
    pub tap: TapSpec,
}

impl QuoteParts {
    pub fn into_quote(self) -> Quote {
        let worst_case = self
            .price
            .worst_case_cost(self.input, self.output, self.cache_write);
        Quote {
            model: self.model,
            price: self.price,
            worst_input_tokens: self.input,
            worst_output_tokens: self.output,
            worst_case,
            stream: self.stream,
            body_rewrite: self.body_rewrite,
            tap: self.tap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_map_to_providers() {
        let cases = [
            ("api.openai.com", Some(ProviderId::OpenAi)),
            ("API.OpenAI.com:443", Some(ProviderId::OpenAi)),
            ("api.openai.com.", Some(ProviderId::OpenAi)),
            ("myres.openai.azure.com", Some(ProviderId::AzureOpenAi)),
            ("a.b.openai.azure.com", None),
            (".openai.azure.com", None),
            ("openai.azure.com", None),
            ("api.anthropic.com", Some(ProviderId::Anthropic)),
            (
                "generativelanguage.googleapis.com",
                Some(ProviderId::Gemini),
            ),
            ("api.mistral.ai", Some(ProviderId::Mistral)),
            ("api.groq.com", Some(ProviderId::Groq)),
            ("api.deepseek.com", Some(ProviderId::DeepSeek)),
            ("api.together.xyz", Some(ProviderId::Together)),
            ("openrouter.ai", Some(ProviderId::OpenRouter)),
            ("api.x.ai", Some(ProviderId::Xai)),
            ("api.cohere.com", Some(ProviderId::Cohere)),
            ("api.cohere.ai", Some(ProviderId::Cohere)),
            ("api.fireworks.ai", Some(ProviderId::Fireworks)),
            ("api.perplexity.ai", Some(ProviderId::Perplexity)),
            ("api.cerebras.ai", Some(ProviderId::Cerebras)),
            ("router.huggingface.co", Some(ProviderId::HuggingFace)),
            ("huggingface.co", None),
            (
                "us-central1-aiplatform.googleapis.com",
                Some(ProviderId::Vertex),
            ),
            ("aiplatform.googleapis.com", Some(ProviderId::Vertex)),
            ("-aiplatform.googleapis.com", None),
            ("x.us-central1-aiplatform.googleapis.com", None),
            ("evil-api.openai.com", None),
            ("api.openai.com.evil.net", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(ProviderId::known_host(host), want, "{host}");
            // Any other host on the provider list is a self-hosted OpenAI-compatible server.
            let served = want.unwrap_or(ProviderId::SelfHosted);
            let want = (!host.is_empty()).then_some(served);
            assert_eq!(ProviderId::from_host(host), want, "{host}");
        }
        assert_eq!(
            ProviderId::from_host("vllm.internal.example:8443"),
            Some(ProviderId::SelfHosted)
        );
        for id in ProviderId::ALL {
            assert_eq!(adapter_for(id).id(), id);
        }
    }

    #[test]
    fn count_fields_are_validated() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"a":5,"b":null,"c":-1,"d":"7","e":100.0,"f":1.5}"#).unwrap();
        assert_eq!(count_field(&obj, "a"), Ok(Some(5)));
        assert_eq!(count_field(&obj, "b"), Ok(None));
        assert_eq!(count_field(&obj, "zz"), Ok(None));
        assert!(count_field(&obj, "c").is_err());
        assert!(count_field(&obj, "d").is_err());
        assert_eq!(count_field(&obj, "e"), Ok(Some(100)));
        assert!(count_field(&obj, "f").is_err());
        assert_eq!(max_limit(&obj, &["a", "e", "b"]), Ok(Some(100)));
    }

    #[test]
    fn cache_control_is_found_anywhere() {
        let v: Value =
            serde_json::from_str(r#"{"a":[{"cache_control":{"type":"ephemeral"}}]}"#).unwrap();
        assert_eq!(cache_write_request(&v), Some(false));
        let v: Value =
            serde_json::from_str(r#"{"s":{"cache_control":{"type":"ephemeral","ttl":"1h"}},"m":[{"cache_control":{"type":"ephemeral"}}]}"#).unwrap();
        assert_eq!(cache_write_request(&v), Some(true));
        let v: Value = serde_json::from_str(r#"{"cache_control":null}"#).unwrap();
        assert_eq!(cache_write_request(&v), None);
    }

    /// The JSON tap builds only the usage members, wherever they sit in the answer, and still
    /// reads nothing from a body that is not valid JSON (the reservation is then charged).
    #[test]
    fn json_tap_reads_only_usage_members() {
        let read = |body: &[u8]| {
            let mut tap = JsonTap::new(Reader::Members(
                &["usage", "x_groq"],
                openai::chat_body_usage,
            ));
            let (head, tail) = body.split_at(body.len() / 2);
            assert_eq!(&tap.on_chunk(head)[..], head, "forwarded unchanged");
            assert_eq!(&tap.on_chunk(tail)[..], tail);
            tap.finish().1
        };
        let usage = r#""usage":{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":10}}"#;
        let first = format!(
            r#"{{{usage},"choices":[{{"message":{{"content":"the \"usage\": {{}} here"}}}}]}}"#
        );
        let last = format!(r#"{{"id":"x","choices":[{{"message":{{"content":"hi"}}}}],{usage}}}"#);
        let want = Usage {
            input_uncached: 90,
            input_cached: 10,
            output: 20,
            ..Usage::default()
        };
        assert_eq!(read(first.as_bytes()), Some(want));
        assert_eq!(read(last.as_bytes()), Some(want));
        let groq = r#"{"x_groq":{"usage":{"prompt_tokens":5,"completion_tokens":1}},"usage":null}"#;
        assert_eq!(read(groq.as_bytes()).map(|u| u.output), Some(1));
        assert_eq!(read(&last.as_bytes()[..last.len() - 1]), None, "truncated");
        assert_eq!(read(b"[{\"usage\":{\"prompt_tokens\":1}}]"), None);
    }

    #[test]
    fn paths_and_queries_split() {
        assert_eq!(
            split_path("/v1/chat/completions/?x=1"),
            ("/v1/chat/completions", "x=1")
        );
        assert_eq!(split_path("/"), ("/", ""));
        assert_eq!(query_param("alt=sse&key=k", "alt"), Some("sse"));
        assert_eq!(query_param("alt", "alt"), Some(""));
        assert_eq!(query_param("x=1", "alt"), None);
    }
}
