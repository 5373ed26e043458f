//! OpenAI and the OpenAI-compatible providers (Mistral, Groq, DeepSeek, Together, OpenRouter, xAI,
//! Fireworks, Cerebras, the Hugging Face router, Perplexity, self-hosted servers).
//!
//! # Usage on the wire
//! * Chat Completions / Completions: `usage.{prompt_tokens, completion_tokens}`;
//!   `prompt_tokens_details.cached_tokens` is INSIDE `prompt_tokens` (billed at the cached rate, not
//!   twice); `completion_tokens_details.reasoning_tokens` is inside `completion_tokens`.
//!   **Streaming**: usage comes only in a final chunk with `choices: []`, and only when the request
//!   sets `stream_options.include_usage`; earlier chunks then carry `"usage": null`. When the client
//!   did not ask, we add the option and drop that one chunk, keeping every other byte identical.
//! * Responses: `usage.{input_tokens, input_tokens_details.cached_tokens, output_tokens,
//!   output_tokens_details.reasoning_tokens}`; streaming: in the `response.completed` event (also
//!   `response.incomplete` / `response.failed`). An aborted stream has none.
//! * Embeddings: `usage.prompt_tokens` only.
//!
//! # Differences of the compatible providers
//! | provider | API base paths | streamed usage | output-limit field we write |
//! |---|---|---|---|
//! | OpenAI | `/v1` | only with `include_usage` (we inject it) | `max_completion_tokens` (o-series refuse `max_tokens`) |
//! | DeepSeek | `/`, `/v1`, `/beta` | only with `include_usage` (we inject it); also `prompt_cache_hit_tokens` / `prompt_cache_miss_tokens` | `max_tokens` |
//! | Groq | `/openai/v1` | sent unasked in the last chunk's `x_groq.usage` (also `usage` when asked) | `max_completion_tokens` |
//! | Mistral | `/v1` (+ `/v1/fim/completions`) | sent unasked in the last chunk (with `finish_reason`) | `max_tokens` |
//! | Together | `/v1` | sent unasked in the last chunk | `max_tokens` |
//! | OpenRouter | `/api/v1` | sent unasked in the last chunk (`choices: []`); `models` fallbacks and `:nitro`-style suffixes | `max_tokens` |
//! | Fireworks | `/inference/v1` | read from the last chunk when sent; not injected (acceptance undocumented) | `max_tokens` |
//! | Cerebras | `/v1` | read from the last chunk when sent; not injected (acceptance undocumented) | `max_completion_tokens` |
//! | Hugging Face router | `/v1` | only with `include_usage` (we inject it) | `max_tokens` |
//! | Perplexity | `/`, `/v1` (chat only) | sent unasked, on every chunk (cumulative): the latest is kept once a final chunk was seen; plus a request fee by `search_context_size`, see [`super::perplexity`] | `max_tokens` |
//! | self-hosted (`extra_provider_hosts`) | `/v1`, `/` | with `include_usage` (we inject it: vLLM, llama.cpp, Ollama ≥ 0.5.2) | `max_tokens` |
//! | xAI | `/v1` | sent unasked (usage on chunks; the last one is complete); `reasoning_tokens` are NOT inside `completion_tokens` (only inside `total_tokens`), and no limit field is documented to bound them, so the worst case uses the model's maximum output | `max_completion_tokens` |
//!
//! Output is read as `max(completion_tokens, total_tokens - prompt_tokens)`, which is right for
//! both conventions.
//!
//! We inject `include_usage` only where usage is otherwise missing (OpenAI, Azure, DeepSeek, the
//! Hugging Face router, self-hosted servers):
//! options a provider does not know may be refused. Where a provider sends no usage after all,
//! the tap reports `None` and the reservation is charged.
//! Usage is trusted only from a final chunk: one with `choices: []`, or whose every choice has a
//! `finish_reason`, or followed by `[DONE]`; a stream cut before that reports `None`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::body_scan::{Key, OpenAiRequest, Shape};
use super::{
    malformed, num, perplexity, plan_output, rewrite, rewrite_body, short, split_path, unpriced,
    Adapter, InputBound, Part, PricingError, ProviderId, Quote, QuoteOptions, QuoteParts, Route,
    StreamState, TapSpec,
};
use crate::prices::{ModelPrice, PriceTable};
use crate::sse::SseEvent;
use crate::usage::Usage;

/// Tokens one image can cost at most on OpenAI models: gpt-4o-mini counts 2,833 + 5,667 per
/// 512-px tile with up to 8 tiles (an image is fitted into 2048×2048, then its short side to 768)
/// = 48,169, the largest published per-image count; every other model counts fewer.
pub const OPENAI_IMAGE_TOKENS: u64 = 50_000;
/// Hidden tokens per tool definition beyond its JSON bytes (the namespace wrapper the model sees).
pub const OPENAI_TOOL_TOKENS: u64 = 32;
/// Hidden tokens of the tool-use preamble when any tool is given.
pub const OPENAI_TOOLS_PREAMBLE_TOKENS: u64 = 256;

/// The API surfaces this module prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Responses,
    Embeddings,
    /// Mistral fill-in-the-middle (Completions-shaped request and response).
    Fim,
}

/// What sets one OpenAI-compatible provider apart.
#[derive(Debug)]
pub(crate) struct Flavor {
    /// API base paths, longest first.
    pub prefixes: &'static [&'static str],
    pub inject_include_usage: bool,
    /// The field we add to cap output on Chat Completions / Completions.
    pub limit_field: &'static str,
    pub responses: bool,
    pub fim: bool,
    pub openrouter: bool,
    /// OpenAI's own free extras (moderations, input-token counting).
    pub openai_extras: bool,
    /// Reasoning tokens are reported apart from `completion_tokens` and no documented limit
    /// field bounds them (xAI): the output bound is the model's maximum output.
    pub reasoning_outside_limit: bool,
    /// Every POST is refused as unpriced, for this reason (the provider bills in a way the price
    /// table cannot carry).
    pub unpriced: Option<&'static str>,
}

const OPENAI: Flavor = Flavor {
    prefixes: &["/v1"],
    inject_include_usage: true,
    limit_field: "max_completion_tokens",
    responses: true,
    fim: false,
    openrouter: false,
    openai_extras: true,
    reasoning_outside_limit: false,
    unpriced: None,
};

/// An OpenAI-compatible adapter.
#[derive(Debug)]
pub struct OpenAiCompatible {
    id: ProviderId,
    flavor: Flavor,
}

pub(crate) static OPENAI_ADAPTER: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::OpenAi,
    flavor: OPENAI,
};
static MISTRAL: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Mistral,
    flavor: Flavor {
        fim: true,
        ..plain(&["/v1"], false, "max_tokens")
    },
};
static GROQ: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Groq,
    flavor: Flavor {
        responses: true,
        ..plain(&["/openai/v1"], false, "max_completion_tokens")
    },
};
static DEEPSEEK: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::DeepSeek,
    flavor: plain(&["/beta", "/v1", ""], true, "max_tokens"),
};
static TOGETHER: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Together,
    flavor: plain(&["/v1"], false, "max_tokens"),
};
static OPENROUTER: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::OpenRouter,
    flavor: Flavor {
        openrouter: true,
        ..plain(&["/api/v1"], false, "max_tokens")
    },
};
static XAI: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Xai,
    flavor: Flavor {
        responses: true,
        reasoning_outside_limit: true,
        ..plain(&["/v1"], false, "max_completion_tokens")
    },
};

/// A flavor with OpenAI's shape and none of its extras.
pub(crate) const fn plain(
    prefixes: &'static [&'static str],
    inject_include_usage: bool,
    limit_field: &'static str,
) -> Flavor {
    Flavor {
        prefixes,
        inject_include_usage,
        limit_field,
        responses: false,
        fim: false,
        openrouter: false,
        openai_extras: false,
        reasoning_outside_limit: false,
        unpriced: None,
    }
}

// Fireworks (`https://api.fireworks.ai/inference/v1`, <https://docs.fireworks.ai/api-reference/post-chatcompletions>):
// usage in the answer as OpenAI's; a stream's last chunk (the one with `finish_reason`) carries
// it. Whether the API accepts `stream_options` is not documented in what we could read
// (2026-12-06), so nothing is injected: a stream without usage is charged its reservation.
static FIREWORKS: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Fireworks,
    flavor: plain(&["/inference/v1"], false, "max_tokens"),
};
// Cerebras (`https://api.cerebras.ai/v1`, <https://inference-docs.cerebras.ai/api-reference/chat-completions>):
// OpenAI's `usage` (with `prompt_tokens_details.cached_tokens`) plus `time_info`;
// `max_completion_tokens` "including reasoning tokens". Streams: usage read from the final chunk
// when sent; `stream_options` is not injected (not documented), so a stream without usage is
// charged its reservation.
static CEREBRAS: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Cerebras,
    flavor: plain(&["/v1"], false, "max_completion_tokens"),
};
// Hugging Face inference router (`https://router.huggingface.co/v1`,
// <https://huggingface.co/changelog/inference-providers-openai-compatible>): OpenAI-compatible in
// front of many providers; streams carry usage only when `stream_options.include_usage` is set,
// which the router accepts and forwards, and end with `data: [DONE]`
// (<https://github.com/maximhq/bifrost/pull/6478>). So we inject it and drop the usage chunk.
// Model names are `org/model` or `org/model:provider`; each is priced only by its exact name.
static HUGGINGFACE: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::HuggingFace,
    flavor: plain(&["/v1"], true, "max_tokens"),
};
// Perplexity (`https://api.perplexity.ai`, `/chat/completions` at the root or under `/v1`):
// Chat Completions with a per-request fee and search usage fields; see [`super::perplexity`].
// Only chat is priced (the Agent API's `/v1/responses` bills per tool call; async, search and
// embeddings endpoints are not known here), and usage is sent unasked, so nothing is injected.
static PERPLEXITY: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::Perplexity,
    flavor: plain(&["/v1", ""], false, "max_tokens"),
};
// A self-hosted OpenAI-compatible server named in `extra_provider_hosts` (vLLM, Ollama,
// llama.cpp, … behind TLS): `/v1` or the root. `stream_options.include_usage` is injected: vLLM
// and llama.cpp support it, Ollama since v0.5.2 (<https://github.com/ollama/ollama/releases/tag/v0.5.2>,
// <https://github.com/jundot/omlx/issues/61>). A server that sends no usage leaves the reservation
// as the charge.
static SELF_HOSTED: OpenAiCompatible = OpenAiCompatible {
    id: ProviderId::SelfHosted,
    flavor: plain(&["/v1", ""], true, "max_tokens"),
};

/// The adapter of an OpenAI-compatible provider (Azure, Anthropic and Gemini have their own).
pub(crate) fn compatible(id: ProviderId) -> &'static OpenAiCompatible {
    match id {
        ProviderId::Mistral => &MISTRAL,
        ProviderId::Groq => &GROQ,
        ProviderId::DeepSeek => &DEEPSEEK,
        ProviderId::Together => &TOGETHER,
        ProviderId::OpenRouter => &OPENROUTER,
        ProviderId::Xai => &XAI,
        ProviderId::Fireworks => &FIREWORKS,
        ProviderId::Cerebras => &CEREBRAS,
        ProviderId::HuggingFace => &HUGGINGFACE,
        ProviderId::Perplexity => &PERPLEXITY,
        ProviderId::SelfHosted => &SELF_HOSTED,
        _ => &OPENAI_ADAPTER,
    }
}

/// Routes shared by OpenAI-shaped APIs (also used by Azure): `rest` is the path after the base.
pub(crate) fn route_rest(
    method: &http::Method,
    rest: &str,
    flavor: &Flavor,
) -> Option<Result<Endpoint, Route>> {
    use http::Method;
    let is = |m: &Method| method == m;
    let hit = match rest {
        "/chat/completions" if is(&Method::POST) => Ok(Endpoint::Chat),
        "/completions" if is(&Method::POST) => Ok(Endpoint::Completions),
        "/embeddings" if is(&Method::POST) => Ok(Endpoint::Embeddings),
        "/responses" if is(&Method::POST) && flavor.responses => Ok(Endpoint::Responses),
        "/fim/completions" if is(&Method::POST) && flavor.fim => Ok(Endpoint::Fim),
        "/responses/input_tokens" if flavor.openai_extras => Err(Route::Free),
        "/moderations" if flavor.openai_extras => Err(Route::Free),
        _ => {
            let first = rest.trim_start_matches('/').split('/').next().unwrap_or("");
            let segments = rest.trim_start_matches('/').split('/').count();
            match first {
                "batches" => Err(Route::Unpriced {
                    why: "batch jobs name only an uploaded file: their cost is unknowable at submit",
                }),
                "files" | "uploads" => Err(Route::Unpriced {
                    why: "file uploads feed batch jobs and hosted tools, whose cost is unknowable here",
                }),
                "realtime" => Err(Route::Unpriced {
                    why: "Realtime is metered over WebSocket only (an upgrade to /v1/realtime?model=M); its WebRTC calls, client secrets and plain HTTP requests cannot be priced",
                }),
                "audio" => Err(Route::Unpriced {
                    why: "audio endpoints bill per second, character or audio token, which the price table does not carry",
                }),
                "images" | "videos" => Err(Route::Unpriced {
                    why: "image and video generation bill per image or second, which the price table does not carry",
                }),
                "fine_tuning" | "fine-tuning" => Err(Route::Unpriced {
                    why: "fine-tuning jobs bill for training, which cannot be priced before it runs",
                }),
                // Deleting or cancelling stored responses/completions costs nothing.
                "responses" | "chat" if segments >= 2 && (is(&Method::DELETE) || rest.ends_with("/cancel")) => {
                    Err(Route::Free)
                }
                _ => return None,
            }
        }
    };
    Some(hit)
}

/// GET/HEAD are free except realtime (a WebSocket upgrade is a GET).
pub(crate) fn route_read(method: &http::Method, path: &str) -> Option<Route> {
    if method == http::Method::GET || method == http::Method::HEAD {
        if path.contains("/realtime") {
            return Some(Route::Unpriced {
                why: "Realtime is metered over WebSocket only (an upgrade to /v1/realtime?model=M); its WebRTC calls, client secrets and plain HTTP requests cannot be priced",
            });
        }
        return Some(Route::Free);
    }
    None
}

pub(crate) const UNKNOWN_ENDPOINT: Route = Route::Unpriced {
    why: "this endpoint is not known to the pricing adapter, so its cost cannot be bounded",
};

impl OpenAiCompatible {
    fn classify(&self, method: &http::Method, path_and_query: &str) -> Result<Endpoint, Route> {
        let (path, _) = split_path(path_and_query);
        if let Some(why) = self.flavor.unpriced {
            return Err(route_read(method, path).unwrap_or(Route::Unpriced { why }));
        }
        for prefix in self.flavor.prefixes {
            if let Some(rest) = path.strip_prefix(prefix) {
                if rest.starts_with('/') {
                    if let Some(hit) = route_rest(method, rest, &self.flavor) {
                        return hit;
                    }
                }
            }
        }
        Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT))
    }
}

impl Adapter for OpenAiCompatible {
    fn id(&self) -> ProviderId {
        self.id
    }

    fn route(&self, method: &http::Method, path_and_query: &str) -> Route {
        match self.classify(method, path_and_query) {
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
        opts: &QuoteOptions,
    ) -> Result<Quote, PricingError> {
        let endpoint = self.classify(method, path_and_query).map_err(|route| {
            PricingError::NotPricedRoute {
                provider: self.id,
                route,
            }
        })?;
        let req = OpenAiRequest::parse(body)?;
        let name = req.model()?;
        let candidates = self.model_candidates(&req, name)?;
        let mut best: Option<Quote> = None;
        for candidate in candidates {
            let (canonical, price) = prices.lookup_for(self.id, &candidate).ok_or_else(|| {
                PricingError::UnknownModel {
                    model: short(&candidate),
                }
            })?;
            let mut q = quote_body(
                endpoint,
                &self.flavor,
                self.id,
                body,
                &req,
                canonical,
                price,
                opts,
                self.flavor.inject_include_usage,
            )?;
            // After the body checks, so a malformed request is reported as such.
            let fee_size = self.fee_size(endpoint, body, canonical, price)?;
            if let (Some(size), Some(fee)) = (fee_size, &price.request_fee) {
                q.worst_case = q.worst_case.saturating_add(fee.at(size));
                q.tap = TapSpec::Perplexity { size };
            }
            if best.as_ref().is_none_or(|b| q.worst_case > b.worst_case) {
                best = Some(q);
            }
        }
        best.ok_or_else(|| malformed("no model named"))
    }
}

impl OpenAiCompatible {
    /// The request-fee size of a Perplexity request (`None` elsewhere; [`quote_body`] refuses
    /// fee-bearing prices there).
    fn fee_size(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        model: &str,
        price: &ModelPrice,
    ) -> Result<Option<crate::usage::SearchContext>, PricingError> {
        if self.id == ProviderId::Perplexity {
            if endpoint != Endpoint::Chat {
                return Err(unpriced("only Perplexity chat completions are priced here"));
            }
            return perplexity::request_fee_size(body, model, price).map(Some);
        }
        Ok(None)
    }

    /// The model names a request may run on: the model, plus OpenRouter's `models` fallbacks
    /// (any of them may serve it, so the dearest is the worst case). OpenRouter variant suffixes
    /// that keep the price (`:nitro`, `:floor`, `:exacto`) are dropped and `:free` is priced as the
    /// paid model (an upper bound); `:online` adds paid web search and is refused.
    fn model_candidates<'r>(
        &self,
        req: &'r OpenAiRequest<'_>,
        model: &'r str,
    ) -> Result<Vec<Cow<'r, str>>, PricingError> {
        if !self.flavor.openrouter {
            return Ok(vec![Cow::Borrowed(model)]);
        }
        let mut names = vec![Cow::Borrowed(model)];
        if let Some(list) = req.get(Key::Models).and_then(Shape::as_array) {
            if list.non_strings > 0 {
                return Err(malformed("'models' must list model names"));
            }
            names.extend(list.strings.iter().map(|m| Cow::Borrowed(&**m)));
        }
        if req
            .get(Key::Plugins)
            .and_then(Shape::as_array)
            .is_some_and(|p| p.len > 0)
        {
            return Err(unpriced("OpenRouter plugins (web search, file parsing) bill per use, which the price table does not carry"));
        }
        names
            .into_iter()
            .map(|n| match n.rsplit_once(':') {
                Some((_, "online")) => Err(unpriced(
                    "OpenRouter ':online' models add paid web search, which the price table does not carry",
                )),
                Some((base, "nitro" | "floor" | "exacto" | "free" | "beta" | "extended" | "thinking")) => {
                    Ok(Cow::Owned(base.to_string()))
                }
                _ => Ok(n),
            })
            .collect()
    }
}

/// The body's `model` string.
pub(crate) fn model_field(obj: &Map<String, Value>) -> Result<&str, PricingError> {
    match obj.get("model") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(malformed("'model' must be a non-empty string")),
        None => Err(malformed("the body names no 'model'")),
    }
}

/// How an OpenAI-shaped content object counts toward the input bound.
pub(crate) fn classify_part(m: &Map<String, Value>) -> Part {
    part_of_type(m.get("type").and_then(Value::as_str))
}

/// [`classify_part`] by the object's `type` string alone (all it looks at).
pub(crate) fn part_of_type(kind: Option<&str>) -> Part {
    match kind {
        Some("image_url" | "input_image") => Part::Image,
        Some("input_audio") => Part::Audio,
        Some("file" | "input_file" | "item_reference") => Part::Unbounded,
        _ => Part::Plain,
    }
}

/// Quotes an OpenAI-shaped body (also used by Azure and Gemini's OpenAI-compatible endpoint).
#[expect(
    clippy::too_many_arguments,
    reason = "one flat call per endpoint; a struct would only rename them"
)]
pub(crate) fn quote_body(
    endpoint: Endpoint,
    flavor: &Flavor,
    provider: ProviderId,
    body: &[u8],
    req: &OpenAiRequest<'_>,
    canonical: &str,
    price: &ModelPrice,
    opts: &QuoteOptions,
    inject_include_usage: bool,
) -> Result<Quote, PricingError> {
    let required = match endpoint {
        Endpoint::Chat => req
            .get(Key::Messages)
            .is_some_and(|m| m.as_array().is_some())
            .then_some(())
            .ok_or("'messages' must be an array"),
        Endpoint::Completions | Endpoint::Fim => req
            .get(Key::Prompt)
            .is_some()
            .then_some(())
            .ok_or("the body has no 'prompt'"),
        Endpoint::Embeddings => req
            .get(Key::Input)
            .is_some()
            .then_some(())
            .ok_or("the body has no 'input'"),
        Endpoint::Responses => Ok(()),
    };
    required.map_err(malformed)?;
    let parts = req.parts;
    if parts.audio > 0 {
        return Err(unpriced(
            "audio input bills at audio-token rates the price table does not carry",
        ));
    }
    refuse_unbounded_features(endpoint, provider, req)?;
    // A price with fees beyond tokens is quoted only by Perplexity's own adapter, which adds them;
    // anywhere else (`perplexity/sonar` through OpenRouter, an Azure deployment mapped to it) the
    // quote would leave them out.
    let fee_bearing = price.request_fee.is_some()
        || price.search_query_fee.is_some()
        || price.citation_per_mtok.is_some()
        || price.reasoning_per_mtok.is_some();
    if fee_bearing && provider != ProviderId::Perplexity {
        return Err(unpriced(format!(
            "{canonical} bills per-request or per-search fees that only Perplexity's own API reports"
        )));
    }

    let body_bytes = u64::try_from(body.len()).unwrap_or(u64::MAX);
    let mut bound = InputBound {
        body_bytes,
        images: parts.images,
        per_image_tokens: OPENAI_IMAGE_TOKENS,
        unbounded: parts.unbounded > 0,
        ..InputBound::default()
    };
    let array_len = |k: Key| req.get(k).and_then(Shape::as_array).map_or(0, |a| a.len);
    let tools = array_len(Key::Tools) + array_len(Key::Functions);
    if tools > 0 {
        bound.extra_tokens = OPENAI_TOOLS_PREAMBLE_TOKENS + tools * OPENAI_TOOL_TOKENS;
    }
    let mut context_cap = price.context_window;
    let stream = req.get(Key::Stream) == Some(&Shape::Bool(true));

    let (limit_keys, write_field, choices): (&[Key], &str, u64) = match endpoint {
        Endpoint::Chat => {
            bound.messages = array_len(Key::Messages);
            let n = req.count(Key::N)?.unwrap_or(1).max(1);
            (
                &[Key::MaxTokens, Key::MaxCompletionTokens],
                flavor.limit_field,
                n,
            )
        }
        Endpoint::Completions | Endpoint::Fim => {
            let n = req.count(Key::N)?.unwrap_or(1).max(1);
            let best_of = req.count(Key::BestOf)?.unwrap_or(1).max(1);
            let prompts = prompt_count(req.get(Key::Prompt));
            // Each prompt may fill the context window on its own.
            context_cap = context_cap.saturating_mul(prompts);
            bound.messages = prompts;
            (
                &[Key::MaxTokens],
                "max_tokens",
                n.max(best_of).saturating_mul(prompts),
            )
        }
        Endpoint::Responses => {
            if [Key::PreviousResponseId, Key::Conversation, Key::Prompt]
                .iter()
                .any(|k| req.present(*k))
            {
                // Earlier turns or a stored prompt are not in the body.
                bound.unbounded = true;
            }
            bound.messages = match req.get(Key::Input) {
                Some(Shape::Array(items)) => items.len,
                _ => 1,
            };
            (&[Key::MaxOutputTokens], "max_output_tokens", 1)
        }
        Endpoint::Embeddings => {
            let inputs = match req.get(Key::Input) {
                Some(Shape::Array(items)) if items.numbers == 0 => items.len,
                _ => 1,
            };
            bound.messages = inputs;
            // Each input may fill the context window on its own.
            context_cap = context_cap.saturating_mul(inputs.max(1));
            (&[], "", 0)
        }
    };

    let input = bound.tokens(context_cap);
    let mut splices = Vec::new();
    let output = if endpoint == Endpoint::Embeddings {
        0
    } else {
        let mut plan = plan_output(req.max_limit(limit_keys)?, price, opts);
        if let Some(limit) = plan.write_limit.take() {
            splices.extend(
                rewrite::set_member(body, 0, write_field, &limit.to_string())
                    .ok_or_else(|| malformed("the body could not be edited"))?,
            );
        }
        // Predicted outputs: rejected prediction tokens are billed as output too.
        let predicted = req.prediction_len.unwrap_or(0);
        let per_choice = if flavor.reasoning_outside_limit {
            plan.per_choice.max(price.max_output_tokens)
        } else {
            plan.per_choice
        };
        per_choice.saturating_add(predicted).saturating_mul(choices)
    };

    let mut drop_usage_chunk = false;
    if stream && inject_include_usage && matches!(endpoint, Endpoint::Chat | Endpoint::Completions)
    {
        let asked = req
            .get(Key::StreamOptions)
            .and_then(Shape::as_object)
            .is_some_and(|o| o.include_usage);
        if !asked {
            splices.extend(
                rewrite::set_nested(body, &["stream_options"], "include_usage", "true")
                    .ok_or_else(|| malformed("the body could not be edited"))?,
            );
            drop_usage_chunk = true;
        }
    }
    let body_rewrite = if splices.is_empty() {
        None
    } else {
        Some(rewrite_body(body, splices)?)
    };
    let tap = match endpoint {
        Endpoint::Chat | Endpoint::Completions | Endpoint::Fim => {
            TapSpec::OpenAiChat { drop_usage_chunk }
        }
        Endpoint::Responses => TapSpec::OpenAiResponses,
        Endpoint::Embeddings => TapSpec::OpenAiEmbeddings,
    };
    Ok(QuoteParts {
        model: canonical.to_string(),
        price: price.clone(),
        input,
        output,
        cache_write: req.cache_write,
        stream,
        body_rewrite,
        tap,
    }
    .into_quote())
}

/// Number of prompts of a Completions request (`prompt` may be a string, a token array, or an
/// array of either).
fn prompt_count(prompt: Option<&Shape<'_>>) -> u64 {
    match prompt {
        Some(Shape::Array(items)) if items.len > 0 && items.numbers < items.len => items.len,
        _ => 1,
    }
}

/// Features whose cost the table cannot bound: refused as unpriced.
fn refuse_unbounded_features(
    endpoint: Endpoint,
    provider: ProviderId,
    req: &OpenAiRequest<'_>,
) -> Result<(), PricingError> {
    if req.present(Key::Audio)
        || req
            .get(Key::Modalities)
            .and_then(Shape::as_array)
            .is_some_and(|m| m.has_audio)
    {
        return Err(unpriced(
            "audio output bills at audio-token rates the price table does not carry",
        ));
    }
    // Perplexity's searches are its request fee, which its quote adds.
    if req.present(Key::WebSearchOptions) && provider != ProviderId::Perplexity {
        return Err(unpriced(
            "web search bills per call, which the price table does not carry",
        ));
    }
    if req.get(Key::ServiceTier).and_then(Shape::as_str) == Some("priority") {
        return Err(unpriced(
            "priority processing bills at rates the price table does not carry",
        ));
    }
    if provider == ProviderId::Xai
        && req
            .get(Key::SearchParameters)
            .is_some_and(|s| !s.is_null() && !s.as_object().is_some_and(|o| o.mode_off))
    {
        return Err(unpriced(
            "xAI Live Search bills per source, which the price table does not carry",
        ));
    }
    if endpoint == Endpoint::Responses
        && req
            .get(Key::Tools)
            .and_then(Shape::as_array)
            .is_some_and(|t| t.hosted_tool)
    {
        return Err(unpriced(
            "hosted tools (web search, file search, code interpreter, MCP, image generation…) bill per call and add server-side turns, which cannot be bounded",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Usage.

/// Chat Completions / Completions `usage` object → Usage. DeepSeek's
/// `prompt_cache_hit_tokens` stands for `cached_tokens` when that is absent.
pub(crate) fn chat_usage(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let prompt = num(u, &["prompt_tokens"])?;
    // xAI counts reasoning apart from completion_tokens (but inside total_tokens); everyone else
    // has total = prompt + completion. The larger reading is the billed output.
    let completion = num(u, &["completion_tokens"]).unwrap_or(0).max(
        num(u, &["total_tokens"])
            .unwrap_or(0)
            .saturating_sub(prompt),
    );
    let cached = num(u, &["prompt_tokens_details", "cached_tokens"])
        .or_else(|| num(u, &["prompt_cache_hit_tokens"]))
        .unwrap_or(0)
        .min(prompt);
    // OpenRouter reports cache writes (Anthropic models) inside prompt_tokens.
    let written = num(u, &["prompt_tokens_details", "cache_write_tokens"])
        .unwrap_or(0)
        .min(prompt - cached);
    Some(Usage {
        input_uncached: prompt - cached - written,
        input_cached: cached,
        cache_write_5m: written,
        cache_write_1h: 0,
        output: completion,
        reasoning: num(u, &["completion_tokens_details", "reasoning_tokens"])
            .unwrap_or(0)
            .min(completion),
        ..Usage::default()
    })
}

/// Responses API `usage` object → Usage.
pub(crate) fn responses_usage(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let input = num(u, &["input_tokens"])?;
    let output = num(u, &["output_tokens"])
        .unwrap_or(0)
        .max(num(u, &["total_tokens"]).unwrap_or(0).saturating_sub(input));
    let cached = num(u, &["input_tokens_details", "cached_tokens"])
        .unwrap_or(0)
        .min(input);
    Some(Usage {
        input_uncached: input - cached,
        input_cached: cached,
        output,
        reasoning: num(u, &["output_tokens_details", "reasoning_tokens"])
            .unwrap_or(0)
            .min(output),
        ..Usage::default()
    })
}

/// The usage of a chunk or body: `usage`, or Groq's `x_groq.usage`.
fn usage_object(v: &Value) -> Option<&Value> {
    v.get("usage").filter(|u| u.is_object()).or_else(|| {
        v.get("x_groq")
            .and_then(|x| x.get("usage"))
            .filter(|u| u.is_object())
    })
}

pub(crate) fn chat_body_usage(v: &Value) -> Option<Usage> {
    usage_object(v).and_then(chat_usage)
}

pub(crate) fn responses_body_usage(v: &Value) -> Option<Usage> {
    // A background response's first body is "queued" with no usage: the reservation stands.
    v.get("usage").and_then(responses_usage)
}

pub(crate) fn embeddings_body_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    num(u, &["prompt_tokens"])
        .or_else(|| num(u, &["total_tokens"]))
        .map(Usage::input_only)
}

/// Streamed Chat Completions / Completions.
#[derive(Debug)]
pub(crate) struct ChatStream {
    drop_usage_chunk: bool,
    last: Option<Usage>,
    last_is_final: bool,
    /// How a chunk's usage is read.
    read: fn(&Value) -> Option<Usage>,
    /// Perplexity: usage rides on every chunk, so once a final chunk was seen the stream stays
    /// final while later chunks repeat (or complete) the cumulative usage.
    perplexity: bool,
}

impl ChatStream {
    pub(crate) fn new(drop_usage_chunk: bool) -> ChatStream {
        ChatStream {
            drop_usage_chunk,
            last: None,
            last_is_final: false,
            read: chat_body_usage,
            perplexity: false,
        }
    }

    /// A Perplexity stream (see [`super::perplexity`]): nothing to drop.
    pub(crate) fn perplexity() -> ChatStream {
        ChatStream {
            read: perplexity::body_usage,
            perplexity: true,
            ..ChatStream::new(false)
        }
    }
}

impl StreamState for ChatStream {
    fn on_event(&mut self, ev: &SseEvent) -> bool {
        let data = ev.data.trim_ascii();
        if data == b"[DONE]" {
            if self.last.is_some() {
                self.last_is_final = true;
            }
            return true;
        }
        // A byte scan before the parse: all but the last event of a stream carry no usage, and
        // parsing each into a `Value` cost ~22 allocations and ~3 µs (benches/hot.rs). An event
        // whose bytes never spell "usage" cannot hold a usage object; one that spells the key
        // with JSON escapes (`"us\u0061ge"`) is missed, and its request is then charged its
        // reservation — the safe side.
        if memchr::memmem::find(data, b"\"usage\"").is_none() {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return true;
        };
        let Some(usage) = (self.read)(&v) else {
            return true;
        };
        let choices = v.get("choices").and_then(Value::as_array);
        let usage_only = choices.is_some_and(Vec::is_empty);
        let all_finished = choices.is_some_and(|c| {
            !c.is_empty()
                && c.iter()
                    .all(|ch| ch.get("finish_reason").is_some_and(|f| f.is_string()))
        });
        let terminal = self.perplexity && perplexity::is_terminal_chunk(&v);
        let was_final = self.perplexity && self.last_is_final;
        self.last = Some(usage);
        self.last_is_final = usage_only || all_finished || terminal || was_final;
        !(self.drop_usage_chunk && usage_only)
    }

    fn usage(&self) -> Option<Usage> {
        self.last.filter(|_| self.last_is_final)
    }
}

/// Streamed Responses API: usage on the terminal event.
#[derive(Debug, Default)]
pub(crate) struct ResponsesStream {
    usage: Option<Usage>,
}

impl StreamState for ResponsesStream {
    fn on_event(&mut self, ev: &SseEvent) -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(&ev.data) else {
            return true;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event.as_deref())
            .unwrap_or("");
        if matches!(
            kind,
            "response.completed" | "response.incomplete" | "response.failed"
        ) {
            if let Some(u) = v
                .get("response")
                .and_then(|r| r.get("usage"))
                .and_then(responses_usage)
            {
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
    use serde_json::json;

    #[test]
    fn chat_usage_bills_cached_tokens_once() {
        let u = chat_usage(&json!({
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        }))
        .unwrap();
        assert_eq!(
            u,
            Usage {
                input_uncached: 86,
                input_cached: 1920,
                output: 300,
                reasoning: 192,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn deepseek_cache_hits_are_cached_tokens() {
        let u = chat_usage(&json!({
            "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110,
            "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36
        }))
        .unwrap();
        assert_eq!((u.input_uncached, u.input_cached, u.output), (36, 64, 10));
    }

    #[test]
    fn inconsistent_counts_never_underflow() {
        let u = chat_usage(&json!({
            "prompt_tokens": 10, "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 9}
        }))
        .unwrap();
        assert_eq!((u.input_uncached, u.input_cached, u.reasoning), (0, 10, 1));
        assert_eq!(chat_usage(&json!({"completion_tokens": 1})), None);
        assert_eq!(chat_usage(&json!(null)), None);
    }

    /// The byte scan that skips the parse of events without usage finds usage however the
    /// object sits (top level, Groq's `x_groq`), and errs to the safe side on an escaped key:
    /// no usage, so the request is charged its reservation.
    #[test]
    fn chat_stream_byte_scan_finds_usage_and_fails_safe() {
        let ev = |data: &str| crate::sse::SseEvent {
            event: None,
            data: data.as_bytes().to_vec(),
        };
        let usage = r#""usage":{"prompt_tokens":10,"completion_tokens":2}"#;
        for (final_chunk, found) in [
            (format!(r#"{{"choices":[],{usage}}}"#), true),
            (format!(r#"{{"choices":[],"x_groq":{{{usage}}}}}"#), true),
            (
                r#"{"choices":[],"us\u0061ge":{"prompt_tokens":10,"completion_tokens":2}}"#
                    .to_string(),
                false,
            ),
        ] {
            let mut s = ChatStream::new(true);
            assert!(s.on_event(&ev(r#"{"choices":[{"delta":{"content":"usage"}}]}"#)));
            let kept = s.on_event(&ev(&final_chunk));
            assert!(s.on_event(&ev("[DONE]")));
            assert_eq!(s.usage().is_some(), found, "{final_chunk}");
            assert_eq!(
                !kept, found,
                "only a recognised usage-only chunk is dropped"
            );
        }
    }

    #[test]
    fn routes() {
        use http::Method;
        let a = compatible(ProviderId::OpenAi);
        assert_eq!(
            a.route(&Method::POST, "/v1/chat/completions"),
            Route::Priced
        );
        assert_eq!(a.route(&Method::POST, "/v1/responses?x=1"), Route::Priced);
        assert_eq!(a.route(&Method::GET, "/v1/models"), Route::Free);
        assert_eq!(
            a.route(&Method::POST, "/v1/responses/input_tokens"),
            Route::Free
        );
        assert_eq!(
            a.route(&Method::DELETE, "/v1/responses/resp_1"),
            Route::Free
        );
        assert!(matches!(
            a.route(&Method::POST, "/v1/batches"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::POST, "/v1/files"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::GET, "/v1/realtime?model=x"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::POST, "/v1/audio/speech"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::POST, "/v1/something/new"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::GET, "/v1/chat/completions"),
            Route::Free
        ));
        let g = compatible(ProviderId::Groq);
        assert_eq!(
            g.route(&Method::POST, "/openai/v1/chat/completions"),
            Route::Priced
        );
        assert!(matches!(
            g.route(&Method::POST, "/v1/chat/completions"),
            Route::Unpriced { .. }
        ));
        let d = compatible(ProviderId::DeepSeek);
        assert_eq!(d.route(&Method::POST, "/chat/completions"), Route::Priced);
        assert_eq!(
            d.route(&Method::POST, "/v1/chat/completions"),
            Route::Priced
        );
        assert_eq!(d.route(&Method::POST, "/beta/completions"), Route::Priced);
        let m = compatible(ProviderId::Mistral);
        assert_eq!(m.route(&Method::POST, "/v1/fim/completions"), Route::Priced);
        assert!(matches!(
            m.route(&Method::POST, "/v1/responses"),
            Route::Unpriced { .. }
        ));
        let o = compatible(ProviderId::OpenRouter);
        assert_eq!(
            o.route(&Method::POST, "/api/v1/chat/completions"),
            Route::Priced
        );
    }
}
