//! Google Gemini API (`generativelanguage.googleapis.com`).
//!
//! The model is in the URL path: `/v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (`?alt=sse` for SSE; without it, a streamed JSON array),
//! `:embedContent`, `:batchEmbedContents`; `:countTokens` is free. The OpenAI-compatible
//! endpoint `/v1beta/openai/…` is priced like OpenAI Chat Completions.
//! The JSON API accepts both lowerCamel and snake_case field names (`generationConfig` and
//! `generation_config`), so both are read.
//!
//! # Usage on the wire
//! `usageMetadata.{promptTokenCount, cachedContentTokenCount, candidatesTokenCount,
//! thoughtsTokenCount, toolUsePromptTokenCount}`. `promptTokenCount` INCLUDES the cached tokens;
//! thinking tokens are reported apart from candidates and billed as output; tool-use prompt
//! tokens are billed as input. `maxOutputTokens` bounds thinking and answer together.
//!
//! **Streaming**: every chunk may carry `usageMetadata`, growing as it goes; the last one (with a
//! candidate's `finishReason`, or a `promptFeedback.blockReason`) is complete. Usage is taken
//! from that final chunk or later; a stream cut before it reports `None`.

use serde_json::{Map, Value};

use super::body_scan::OpenAiRequest;
use super::openai::{self, route_read, Endpoint, Flavor, UNKNOWN_ENDPOINT};
use super::{
    cache_write_request, count_field, count_parts, malformed, num, parse_object, plan_output,
    query_param, rewrite, rewrite_body, short, split_path, unpriced, Adapter, InputBound, Part,
    PricingError, ProviderId, Quote, QuoteOptions, QuoteParts, Route, StreamState, TapSpec,
};
use crate::prices::PriceTable;
use crate::sse::SseEvent;
use crate::usage::Usage;

/// Tokens one image can cost at most. Gemini 2.x counts 258 tokens per 768×768 tile (an image is
/// scaled into tiles; 258 flat when both sides are ≤ 384 px); Gemini 3 caps an image at 1,120
/// tokens at `media_resolution_high`. 16,512 = 64 tiles, an image of 6,144×6,144 px at full size,
/// far beyond the ≈3,072-px images the API keeps.
pub const GEMINI_IMAGE_TOKENS: u64 = 16_512;
/// Hidden tokens per function declaration and of the tool preamble.
pub const GEMINI_TOOL_TOKENS: u64 = 64;

/// The Gemini adapter.
#[derive(Debug)]
pub struct Gemini;

pub(crate) static GEMINI: Gemini = Gemini;

const OPENAI_COMPAT: Flavor = super::openai::plain(&["/v1beta/openai"], false, "max_tokens");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Generate { stream: bool, sse: bool },
    Embed,
    OpenAi(Endpoint),
}

/// `(call, model)` for a priced request.
fn classify<'a>(method: &http::Method, path_and_query: &'a str) -> Result<(Call, &'a str), Route> {
    let (path, query) = split_path(path_and_query);
    if let Some(rest) = path.strip_prefix("/v1beta/openai") {
        return match openai::route_rest(method, rest, &OPENAI_COMPAT) {
            Some(Ok(e @ (Endpoint::Chat | Endpoint::Embeddings))) => Ok((Call::OpenAi(e), "")),
            Some(Ok(_)) => Err(UNKNOWN_ENDPOINT),
            Some(Err(r)) => Err(r),
            None => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
        };
    }
    let versioned = ["/v1beta/", "/v1/", "/v1alpha/"]
        .iter()
        .find_map(|v| path.strip_prefix(v));
    let Some(rest) = versioned else {
        return Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT));
    };
    if let Some((resource, verb)) = rest.rsplit_once(':') {
        let model = resource
            .strip_prefix("models/")
            .or_else(|| resource.strip_prefix("tunedModels/"))
            .unwrap_or(resource);
        let post = method == http::Method::POST;
        return match verb {
            "generateContent" if post => Ok((Call::Generate { stream: false, sse: false }, model)),
            "streamGenerateContent" if post => Ok((
                Call::Generate {
                    stream: true,
                    sse: query_param(query, "alt") == Some("sse"),
                },
                model,
            )),
            "embedContent" | "batchEmbedContents" if post => Ok((Call::Embed, model)),
            "countTokens" => Err(Route::Free),
            "batchGenerateContent" | "asyncBatchEmbedContent" => Err(Route::Unpriced {
                why: "batch jobs run later at batch rates; their cost is unknowable at submit",
            }),
            "predict" | "predictLongRunning" => Err(Route::Unpriced {
                why: "image, video and speech generation bill per output, which the price table does not carry",
            }),
            _ => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
        };
    }
    if rest.starts_with("cachedContents") && method == http::Method::POST {
        return Err(Route::Unpriced {
            why: "creating a context cache bills its tokens plus storage time, which cannot be bounded here",
        });
    }
    if rest.starts_with("files") && method == http::Method::POST {
        return Err(Route::Unpriced {
            why: "file uploads are used by later requests, whose cost is unknowable here",
        });
    }
    Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT))
}

/// A field under either of its JSON spellings.
fn field<'a>(m: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    m.get(camel)
        .or_else(|| m.get(snake))
        .filter(|v| !v.is_null())
}

/// How a Gemini part counts toward the input bound.
fn classify_part(m: &Map<String, Value>) -> Part {
    let media = field(m, "inlineData", "inline_data").or_else(|| field(m, "fileData", "file_data"));
    let Some(media) = media.and_then(Value::as_object) else {
        return Part::Plain;
    };
    let mime = field(media, "mimeType", "mime_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    if mime.starts_with("image/") {
        Part::Image
    } else if mime.starts_with("audio/") {
        Part::Audio
    } else {
        // Video, PDFs and other documents: their token count is not knowable from the request.
        Part::Unbounded
    }
}

/// Tools that run on Google's side and bill per query.
const HOSTED_TOOLS: &[(&str, &str)] = &[
    ("googleSearch", "google_search"),
    ("googleSearchRetrieval", "google_search_retrieval"),
    ("codeExecution", "code_execution"),
    ("urlContext", "url_context"),
    ("googleMaps", "google_maps"),
    ("fileSearch", "file_search"),
    ("computerUse", "computer_use"),
    ("enterpriseWebSearch", "enterprise_web_search"),
];

impl Adapter for Gemini {
    fn id(&self) -> ProviderId {
        ProviderId::Gemini
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
        opts: &QuoteOptions,
    ) -> Result<Quote, PricingError> {
        let (call, url_model) =
            classify(method, path_and_query).map_err(|route| PricingError::NotPricedRoute {
                provider: ProviderId::Gemini,
                route,
            })?;
        if let Call::OpenAi(endpoint) = call {
            let req = OpenAiRequest::parse(body)?;
            let name = req.model()?;
            let (canonical, price) = prices
                .lookup_for(ProviderId::Gemini, name)
                .ok_or_else(|| PricingError::UnknownModel { model: short(name) })?;
            return openai::quote_body(
                endpoint,
                &OPENAI_COMPAT,
                ProviderId::Gemini,
                body,
                &req,
                canonical,
                price,
                opts,
                false,
            );
        }
        let obj = parse_object(body)?;
        let (canonical, price) = prices
            .lookup_for(ProviderId::Gemini, url_model)
            .ok_or_else(|| PricingError::UnknownModel {
                model: short(url_model),
            })?;
        let has_input = match call {
            Call::Embed => {
                obj.get("content").is_some() || obj.get("requests").is_some_and(Value::is_array)
            }
            _ => obj.get("contents").is_some_and(Value::is_array),
        };
        if !has_input {
            return Err(malformed(
                "the body has no 'contents' (or 'content'/'requests' for embeddings)",
            ));
        }
        let whole = Value::Object(obj.clone());
        let parts = count_parts(&whole, &classify_part);
        if parts.audio > 0 {
            return Err(unpriced(
                "audio input bills at audio-token rates the price table does not carry",
            ));
        }
        let body_bytes = u64::try_from(body.len()).unwrap_or(u64::MAX);

        if call == Call::Embed {
            let inputs = obj
                .get("requests")
                .and_then(Value::as_array)
                .map_or(1, Vec::len) as u64;
            let bound = InputBound {
                body_bytes,
                messages: inputs,
                images: parts.images,
                per_image_tokens: GEMINI_IMAGE_TOKENS,
                unbounded: parts.unbounded > 0,
                ..InputBound::default()
            };
            return Ok(QuoteParts {
                model: canonical.to_string(),
                price: price.clone(),
                input: bound.tokens(price.context_window.saturating_mul(inputs.max(1))),
                output: 0,
                cache_write: None,
                stream: false,
                body_rewrite: None,
                tap: TapSpec::GeminiEmbed,
            }
            .into_quote());
        }

        let mut tool_count = 0u64;
        if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
            for t in tools.iter().filter_map(Value::as_object) {
                if HOSTED_TOOLS.iter().any(|(c, s)| field(t, c, s).is_some()) {
                    return Err(unpriced(
                        "Google-hosted tools (search grounding, code execution, URL context, maps, file search) bill per use and add server-side turns, which cannot be bounded",
                    ));
                }
                tool_count += field(t, "functionDeclarations", "function_declarations")
                    .and_then(Value::as_array)
                    .map_or(1, Vec::len) as u64;
            }
        }
        let config =
            field(&obj, "generationConfig", "generation_config").and_then(Value::as_object);
        if let Some(cfg) = config {
            let modalities =
                field(cfg, "responseModalities", "response_modalities").and_then(Value::as_array);
            if modalities.is_some_and(|m| {
                m.iter()
                    .filter_map(Value::as_str)
                    .any(|x| !x.eq_ignore_ascii_case("text"))
            }) {
                return Err(unpriced(
                    "audio and image output bill at rates the price table does not carry",
                ));
            }
            if field(cfg, "speechConfig", "speech_config").is_some() {
                return Err(unpriced(
                    "speech output bills at rates the price table does not carry",
                ));
            }
        }
        let contents = obj
            .get("contents")
            .and_then(Value::as_array)
            .map_or(0, Vec::len) as u64;
        let bound = InputBound {
            body_bytes,
            messages: contents + 1,
            extra_tokens: if tool_count > 0 {
                GEMINI_TOOL_TOKENS * (tool_count + 1)
            } else {
                0
            },
            images: parts.images,
            per_image_tokens: GEMINI_IMAGE_TOKENS,
            // A cached context's tokens are not in the body.
            unbounded: parts.unbounded > 0
                || field(&obj, "cachedContent", "cached_content").is_some(),
        };
        let input = bound.tokens(price.context_window);

        let (limit, candidates) = match config {
            Some(cfg) => {
                let mut limit = None;
                for k in ["maxOutputTokens", "max_output_tokens"] {
                    if let Some(n) = count_field(cfg, k)? {
                        limit = Some(limit.map_or(n, |l: u64| l.max(n)));
                    }
                }
                let mut cands = 1u64;
                for k in ["candidateCount", "candidate_count"] {
                    if let Some(n) = count_field(cfg, k)? {
                        cands = cands.max(n);
                    }
                }
                (limit, cands)
            }
            None => (None, 1),
        };
        let plan = plan_output(limit, price, opts);
        let body_rewrite = match plan.write_limit {
            Some(n) => {
                let splices = rewrite::set_nested(
                    body,
                    &["generationConfig", "generation_config"],
                    "maxOutputTokens",
                    &n.to_string(),
                )
                .ok_or_else(|| malformed("the body could not be edited"))?;
                Some(rewrite_body(body, splices)?)
            }
            None => None,
        };
        let (stream, sse) = match call {
            Call::Generate { stream, sse } => (stream, sse),
            _ => (false, false),
        };
        Ok(QuoteParts {
            model: canonical.to_string(),
            price: price.clone(),
            input,
            output: plan.per_choice.saturating_mul(candidates),
            cache_write: cache_write_request(&whole),
            stream,
            body_rewrite,
            tap: TapSpec::Gemini { sse },
        }
        .into_quote())
    }
}

/// `usageMetadata` → Usage.
pub(crate) fn usage_metadata(m: &Value) -> Option<Usage> {
    if !m.is_object() {
        return None;
    }
    let prompt = num(m, &["promptTokenCount"]).unwrap_or(0);
    let cached = num(m, &["cachedContentTokenCount"])
        .unwrap_or(0)
        .min(prompt);
    let tool_prompt = num(m, &["toolUsePromptTokenCount"]).unwrap_or(0);
    let candidates = num(m, &["candidatesTokenCount"]).unwrap_or(0);
    let thoughts = num(m, &["thoughtsTokenCount"]).unwrap_or(0);
    if m.get("promptTokenCount").is_none() && m.get("totalTokenCount").is_none() {
        return None;
    }
    Some(Usage {
        input_uncached: (prompt - cached).saturating_add(tool_prompt),
        input_cached: cached,
        output: candidates.saturating_add(thoughts),
        reasoning: thoughts,
        ..Usage::default()
    })
}

/// Whether a response chunk is the last one.
fn is_final(v: &Value) -> bool {
    let finished = v
        .get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|cand| cand.get("finishReason").is_some_and(|f| !f.is_null()))
        });
    let blocked = v
        .get("promptFeedback")
        .and_then(|p| p.get("blockReason"))
        .is_some_and(|b| !b.is_null());
    finished || blocked
}

/// A non-streamed body: one response object, a streamed JSON array of them, or an embedding.
pub(crate) fn body_usage(v: &Value) -> Option<Usage> {
    match v {
        Value::Array(items) => {
            let mut s = GenerateStream::default();
            items.iter().for_each(|i| s.on_value(i));
            s.usage()
        }
        Value::Object(_) => v.get("usageMetadata").and_then(usage_metadata),
        _ => None,
    }
}

/// Streamed generateContent.
#[derive(Debug, Default)]
pub(crate) struct GenerateStream {
    last: Option<Usage>,
    final_seen: bool,
    usage_after_final: bool,
}

impl GenerateStream {
    fn on_value(&mut self, v: &Value) {
        let fin = is_final(v);
        self.final_seen |= fin;
        if let Some(u) = v.get("usageMetadata").and_then(usage_metadata) {
            self.last = Some(u);
            self.usage_after_final = self.final_seen;
        }
    }
}

impl StreamState for GenerateStream {
    fn on_event(&mut self, ev: &SseEvent) -> bool {
        if let Ok(v) = serde_json::from_slice::<Value>(&ev.data) {
            self.on_value(&v);
        }
        true
    }

    fn usage(&self) -> Option<Usage> {
        self.last.filter(|_| self.usage_after_final)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_includes_cached_and_thoughts_are_output() {
        let u = usage_metadata(&json!({
            "promptTokenCount": 1000, "cachedContentTokenCount": 600, "candidatesTokenCount": 50,
            "thoughtsTokenCount": 200, "toolUsePromptTokenCount": 7, "totalTokenCount": 1257
        }))
        .unwrap();
        assert_eq!(
            u,
            Usage {
                input_uncached: 407,
                input_cached: 600,
                output: 250,
                reasoning: 200,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn routes() {
        use http::Method;
        let g = &GEMINI;
        assert_eq!(
            g.route(
                &Method::POST,
                "/v1beta/models/gemini-2.5-pro:generateContent"
            ),
            Route::Priced
        );
        assert_eq!(
            g.route(
                &Method::POST,
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=k"
            ),
            Route::Priced
        );
        assert_eq!(
            g.route(&Method::POST, "/v1beta/models/gemini-2.5-pro:countTokens"),
            Route::Free
        );
        assert_eq!(g.route(&Method::GET, "/v1beta/models"), Route::Free);
        assert!(matches!(
            g.route(
                &Method::POST,
                "/v1beta/models/gemini-2.5-pro:batchGenerateContent"
            ),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            g.route(&Method::POST, "/v1beta/cachedContents"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            g.route(&Method::POST, "/upload/v1beta/files"),
            Route::Unpriced { .. }
        ));
        assert_eq!(
            g.route(&Method::POST, "/v1beta/openai/chat/completions"),
            Route::Priced
        );
    }
}
