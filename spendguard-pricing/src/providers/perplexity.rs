//! Perplexity (`api.perplexity.ai`): OpenAI's Chat Completions shape (the adapter is
//! [`super::openai`]'s), plus what Perplexity bills beyond tokens.
//!
//! # Billing (<https://docs.perplexity.ai/getting-started/pricing>, 2026-12-07)
//! "Total cost per query = token costs + request fee": Sonar, Sonar Pro, Sonar Reasoning (Pro)
//! add a fee per request chosen by `web_search_options.search_context_size` (low / medium /
//! high, per model; the price table's `request_fee`). Sonar Deep Research instead bills
//! citation tokens, reasoning tokens and each search query it runs; Pro Search
//! (`web_search_options.search_type` `pro` or `auto`) bills Sonar Pro at higher, per-search-type
//! request fees.
//!
//! # Worst case
//! Tokens as every OpenAI-compatible chat request (the client's `max_tokens`, else the model's
//! maximum), plus the request fee of the context size the request asks for. Without one the
//! fee is the `high` one: what Perplexity defaults to is not stated in the references we could
//! read, so the dearest size is the bound; the charge afterwards uses the size the answer reports.
//! Refused as unpriced: Sonar Deep Research (its searches, citation and reasoning tokens have no
//! documented bound: no request field limits them, and `max_tokens` does not bound reasoning),
//! Pro Search, and `best_of` above 1 (samples billed but not returned).
//!
//! # Usage on the wire (perplexity-py's `UsageInfo`, checked 2026-12-07)
//! `usage` = {`prompt_tokens`, `completion_tokens`, `total_tokens`, `citation_tokens`?,
//! `reasoning_tokens`?, `num_search_queries`?, `search_context_size`?, `cost` {…}}.
//! **Streaming**: usage may ride on every chunk (`StreamChunk.usage`), cumulative; interim chunks
//! carry a zero "cost skeleton" and only the terminal one the full cost. So the latest usage is
//! kept (never summed) and trusted once a final chunk was seen: every choice has a
//! `finish_reason`, or `choices` is empty, or `type` is `end_of_stream`, or `status` is
//! `COMPLETED`, or `[DONE]`. A final chunk stays final if later chunks (search results, the
//! terminal cost) repeat the usage. Nothing is injected (Perplexity sends usage unasked).
//!
//! # Actual cost
//! Computed from the token counts, the reported `search_context_size` and the price table, in
//! integer micro-dollars. `usage.cost` (Perplexity's own dollar figures) is not used: it is a
//! float, zero on interim chunks, optional in the SDK types, and a second source of truth would
//! have to win over the table the operator can override.

use serde_json::Value;

use super::{count_field, malformed, num, parse_object, unpriced, PricingError, UsageTap};
use crate::prices::ModelPrice;
use crate::usage::{SearchContext, Usage};

/// The context size whose fee a request without `search_context_size` is reserved at.
pub const DEFAULT_SEARCH_CONTEXT: SearchContext = SearchContext::High;

/// What a Perplexity chat request is billed at beyond tokens: the request fee's context size.
/// Refuses what the table cannot bound (see the module docs).
pub(crate) fn request_fee_size(
    body: &[u8],
    model: &str,
    price: &ModelPrice,
) -> Result<SearchContext, PricingError> {
    if price.search_query_fee.is_some()
        || price.citation_per_mtok.is_some()
        || price.reasoning_per_mtok.is_some()
    {
        return Err(unpriced(format!(
            "{model} bills each search query, citation token and reasoning token, and no request field bounds them"
        )));
    }
    if price.request_fee.is_none() {
        return Err(unpriced(format!(
            "Perplexity bills a fee per request on top of tokens, and the price of {model} has no request_fee"
        )));
    }
    let obj = parse_object(body)?;
    if count_field(&obj, "best_of")?.is_some_and(|n| n > 1) {
        return Err(unpriced(
            "best_of samples are billed but not returned, and their cost is not bounded here",
        ));
    }
    let options = match obj.get("web_search_options") {
        None | Some(Value::Null) => return Ok(DEFAULT_SEARCH_CONTEXT),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(malformed("'web_search_options' must be an object")),
    };
    match options.get("search_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "fast" => {}
        Some(Value::String(t)) if t == "pro" || t == "auto" => {
            return Err(unpriced(
                "Perplexity Pro Search bills request fees per search type that the price table does not carry",
            ))
        }
        Some(_) => {
            return Err(malformed(
                "'web_search_options.search_type' must be fast, pro or auto",
            ))
        }
    }
    match options.get("search_context_size") {
        None | Some(Value::Null) => Ok(DEFAULT_SEARCH_CONTEXT),
        Some(Value::String(s)) => SearchContext::parse(s).ok_or_else(|| {
            malformed("'web_search_options.search_context_size' must be low, medium or high")
        }),
        Some(_) => Err(malformed(
            "'web_search_options.search_context_size' must be low, medium or high",
        )),
    }
}

/// A Perplexity `usage` object → Usage.
///
/// Output is `max(completion_tokens, total_tokens - prompt_tokens - citation_tokens)`: right
/// whether `reasoning_tokens` are inside `completion_tokens` or only inside `total_tokens`
/// (Perplexity's examples disagree); citation tokens have their own bucket.
pub(crate) fn usage(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let prompt = num(u, &["prompt_tokens"])?;
    let citation = num(u, &["citation_tokens"]).unwrap_or(0);
    let output = num(u, &["completion_tokens"]).unwrap_or(0).max(
        num(u, &["total_tokens"])
            .unwrap_or(0)
            .saturating_sub(prompt)
            .saturating_sub(citation),
    );
    Some(Usage {
        input_uncached: prompt,
        output,
        reasoning: num(u, &["reasoning_tokens"]).unwrap_or(0).min(output),
        citation,
        search_queries: num(u, &["num_search_queries"]).unwrap_or(0),
        search_context: u
            .get("search_context_size")
            .and_then(Value::as_str)
            .and_then(SearchContext::parse),
        ..Usage::default()
    })
}

/// The usage of a body or chunk.
pub(crate) fn body_usage(v: &Value) -> Option<Usage> {
    v.get("usage").and_then(usage)
}

/// Whether a chunk marks the end of a Perplexity stream by its own fields (`type`, `status`).
pub(crate) fn is_terminal_chunk(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("end_of_stream")
        || v.get("status").and_then(Value::as_str) == Some("COMPLETED")
}

/// Fills in the quoted context size when the answer's usage does not report one, so the
/// request fee is never dropped.
pub(crate) struct FeeTap {
    pub inner: Box<dyn UsageTap>,
    pub size: SearchContext,
}

impl UsageTap for FeeTap {
    fn on_chunk(&mut self, chunk: &[u8]) -> bytes::Bytes {
        self.inner.on_chunk(chunk)
    }

    fn finish(&mut self) -> (bytes::Bytes, Option<Usage>) {
        let (rest, usage) = self.inner.finish();
        let usage = usage.map(|mut u| {
            u.search_context = u.search_context.or(Some(self.size));
            u
        });
        (rest, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_research_counts_land_in_their_own_buckets() {
        // The shape of Perplexity's deep research example: reasoning and citation tokens are
        // inside total_tokens but not inside completion_tokens.
        let u = usage(&json!({
            "prompt_tokens": 18, "completion_tokens": 6627, "total_tokens": 253521,
            "citation_tokens": 34500, "num_search_queries": 30, "reasoning_tokens": 212376
        }))
        .unwrap();
        assert_eq!(
            u,
            Usage {
                input_uncached: 18,
                output: 6627 + 212376,
                reasoning: 212376,
                citation: 34500,
                search_queries: 30,
                ..Usage::default()
            }
        );
        // Reasoning inside completion_tokens (as some clients read it): not counted twice.
        let u = usage(&json!({
            "prompt_tokens": 10, "completion_tokens": 300, "total_tokens": 360,
            "citation_tokens": 50, "reasoning_tokens": 200
        }))
        .unwrap();
        assert_eq!((u.output, u.reasoning, u.citation), (300, 200, 50));
        assert_eq!(usage(&json!({"completion_tokens": 3})), None);
    }

    #[test]
    fn sonar_usage_reports_its_context_size() {
        let u = body_usage(&json!({"usage": {
            "prompt_tokens": 9, "completion_tokens": 67, "total_tokens": 76,
            "search_context_size": "medium",
            "cost": {"input_tokens_cost": 0.0, "output_tokens_cost": 0.001, "request_cost": 0.008, "total_cost": 0.009}
        }}))
        .unwrap();
        assert_eq!(
            (u.input_uncached, u.output, u.search_context),
            (9, 67, Some(SearchContext::Medium))
        );
        let u = usage(
            &json!({"prompt_tokens": 1, "completion_tokens": 1, "search_context_size": "huge"}),
        )
        .unwrap();
        assert_eq!(u.search_context, None, "an unknown size is not guessed");
    }
}
