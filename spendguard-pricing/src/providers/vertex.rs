//! Google Vertex AI (`{region}-aiplatform.googleapis.com`, `aiplatform.googleapis.com`).
//!
//! Publisher models are addressed by path:
//! `/{v1|v1beta1}/projects/P/locations/L/publishers/{publisher}/models/{model}:{verb}` (also
//! without `projects/P/locations/L/`, as the global endpoint and express mode accept).
//!
//! * `publishers/google`: Gemini `generateContent` / `streamGenerateContent` (`?alt=sse` for SSE,
//!   else a streamed JSON array) — Gemini's own body and usage (`usageMetadata`), priced by the
//!   Gemini adapter; `countTokens` / `computeTokens` are free; `predict` (embeddings, Imagen) is
//!   not priced.
//! * `publishers/anthropic`: Claude `rawPredict` / `streamRawPredict` — Anthropic's Messages body
//!   (`anthropic_version` in the body, the model only in the path, e.g.
//!   `claude-sonnet-4-5@20250929`) and Anthropic's usage and SSE events (`message_delta.usage` is
//!   cumulative). Priced as `vertex/{model}` if the table has it, else as the Anthropic model
//!   (`claude-sonnet-4-5@20250929` → `claude-sonnet-4-5-20250929`). `models/count-tokens:rawPredict`
//!   is free.
//!
//! Vertex requests carry an OAuth bearer token, not a body signature, so the output cap may be
//! written as for the providers' own APIs. Everything else that costs money — other publishers
//! (Llama, Mistral, …), the OpenAI-compatible `endpoints/openapi`, dedicated endpoints, batch
//! prediction, context caches, tuning — is refused as `unpriced_request` until it is priced.

use serde_json::Value;

use super::anthropic::{quote_messages, MessagesCall};
use super::gemini::GEMINI;
use super::openai::{route_read, UNKNOWN_ENDPOINT};
use super::{
    parse_object, short, split_path, Adapter, PricingError, ProviderId, Quote, QuoteOptions, Route,
    TapSpec,
};
use crate::prices::PriceTable;

/// The Vertex AI adapter.
#[derive(Debug)]
pub struct Vertex;

pub(crate) static VERTEX: Vertex = Vertex;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    /// A Gemini call, as the Gemini API would spell its path and query.
    Gemini(String),
    /// Claude `rawPredict` (`stream: false`) or `streamRawPredict`.
    Claude { model: String, stream: bool },
}

fn classify(method: &http::Method, path_and_query: &str) -> Result<Call, Route> {
    let (path, query) = split_path(path_and_query);
    let post = method == http::Method::POST;
    let Some((_, rest)) = path.split_once("/publishers/") else {
        if post && path.contains("/endpoints/") {
            return Err(Route::Unpriced {
                why: "Vertex AI endpoints (OpenAI-compatible, dedicated or tuned models) are not priced",
            });
        }
        return Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT));
    };
    let Some((publisher, model_verb)) = rest.split_once("/models/") else {
        return Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT));
    };
    let Some((model, verb)) = model_verb.rsplit_once(':') else {
        return Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT));
    };
    match publisher {
        "google" => match verb {
            "countTokens" | "computeTokens" => Err(Route::Free),
            "generateContent" | "streamGenerateContent" if post => {
                let q = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                Ok(Call::Gemini(format!("/v1beta/models/{model}:{verb}{q}")))
            }
            "predict" | "predictLongRunning" if post => Err(Route::Unpriced {
                why: "Vertex AI predict (embeddings, image, video) bills at rates the price table does not carry",
            }),
            _ => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
        },
        "anthropic" => match verb {
            _ if model == "count-tokens" => Err(Route::Free),
            "rawPredict" if post => Ok(Call::Claude {
                model: model.to_string(),
                stream: false,
            }),
            "streamRawPredict" if post => Ok(Call::Claude {
                model: model.to_string(),
                stream: true,
            }),
            _ => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
        },
        _ if post => Err(Route::Unpriced {
            why: "this publisher's models on Vertex AI are not priced",
        }),
        _ => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
    }
}

/// `claude-sonnet-4-5@20250929` → `claude-sonnet-4-5-20250929`; `claude-opus-4-6@default` →
/// `claude-opus-4-6`.
fn anthropic_name(model: &str) -> String {
    match model.split_once('@') {
        Some((name, "default" | "latest")) => name.to_string(),
        Some((name, version)) => format!("{name}-{version}"),
        None => model.to_string(),
    }
}

impl Adapter for Vertex {
    fn id(&self) -> ProviderId {
        ProviderId::Vertex
    }

    fn route(&self, method: &http::Method, path_and_query: &str) -> Route {
        match classify(method, path_and_query) {
            Ok(Call::Gemini(p)) => GEMINI.route(method, &p),
            Ok(Call::Claude { .. }) => Route::Priced,
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
        let call =
            classify(method, path_and_query).map_err(|route| PricingError::NotPricedRoute {
                provider: ProviderId::Vertex,
                route,
            })?;
        match call {
            Call::Gemini(p) => GEMINI.quote(method, &p, headers, body, prices, opts),
            Call::Claude { model, stream } => {
                let (canonical, price) = prices
                    .lookup_for(ProviderId::Vertex, &model)
                    .filter(|(k, _)| k.starts_with("vertex/"))
                    .or_else(|| prices.lookup_for(ProviderId::Anthropic, &anthropic_name(&model)))
                    .ok_or_else(|| PricingError::UnknownModel {
                        model: short(&model),
                    })?;
                let obj = parse_object(body)?;
                let long_context_beta = headers
                    .get_all("anthropic-beta")
                    .iter()
                    .filter_map(|h| h.to_str().ok())
                    .chain(
                        obj.get("anthropic_beta")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str),
                    )
                    .any(|b| b.to_ascii_lowercase().contains("context-1m"));
                quote_messages(MessagesCall {
                    obj: &obj,
                    body,
                    long_context_beta,
                    model: canonical.to_string(),
                    price,
                    output_cap: opts.output_cap,
                    stream: stream || obj.get("stream").and_then(Value::as_bool) == Some(true),
                    tap: TapSpec::Anthropic,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const BASE: &str = "/v1/projects/my-proj/locations/us-central1/publishers";

    #[test]
    fn routes() {
        let v = &VERTEX;
        let post = Method::POST;
        assert_eq!(
            v.route(
                &post,
                &format!("{BASE}/google/models/gemini-2.5-flash:generateContent")
            ),
            Route::Priced
        );
        assert_eq!(
            v.route(
                &post,
                &format!("{BASE}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
            ),
            Route::Priced
        );
        assert_eq!(
            v.route(
                &post,
                "/v1/publishers/google/models/gemini-2.5-flash:generateContent"
            ),
            Route::Priced,
            "global endpoint / express mode path"
        );
        assert_eq!(
            v.route(
                &post,
                &format!("{BASE}/google/models/gemini-2.5-flash:countTokens")
            ),
            Route::Free
        );
        for verb in ["rawPredict", "streamRawPredict"] {
            assert_eq!(
                v.route(
                    &post,
                    &format!("{BASE}/anthropic/models/claude-sonnet-4-5@20250929:{verb}")
                ),
                Route::Priced
            );
        }
        assert_eq!(
            v.route(
                &post,
                &format!("{BASE}/anthropic/models/count-tokens:rawPredict")
            ),
            Route::Free
        );
        for p in [
            format!("{BASE}/meta/models/llama-4-maverick:rawPredict"),
            format!("{BASE}/google/models/text-embedding-005:predict"),
            "/v1/projects/p/locations/l/endpoints/openapi/chat/completions".to_string(),
            "/v1/projects/p/locations/l/endpoints/123:predict".to_string(),
            "/v1/projects/p/locations/l/batchPredictionJobs".to_string(),
            "/v1/projects/p/locations/l/cachedContents".to_string(),
        ] {
            assert!(
                matches!(v.route(&post, &p), Route::Unpriced { .. }),
                "{p}: {:?}",
                v.route(&post, &p)
            );
        }
        assert_eq!(
            v.route(
                &Method::GET,
                "/v1/projects/p/locations/l/publishers/google/models"
            ),
            Route::Free
        );
        assert_eq!(
            anthropic_name("claude-sonnet-4-5@20250929"),
            "claude-sonnet-4-5-20250929"
        );
        assert_eq!(anthropic_name("claude-opus-4-6@default"), "claude-opus-4-6");
    }
}
