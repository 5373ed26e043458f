//! Normalised token usage: disjoint billable buckets, each token in exactly one.
//!
//! Providers report usage in overlapping ways (OpenAI's `prompt_tokens` includes cached tokens,
//! Anthropic's `input_tokens` excludes cache reads and writes, Gemini's `promptTokenCount` includes
//! cached tokens and reports thinking apart from candidates). Each provider module converts its own
//! shape into this one, so [`crate::prices::ModelPrice::cost`] never has to know who reported it.

use serde::{Deserialize, Serialize};

/// Tokens of one request, split into disjoint billable buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens billed at the full input rate.
    pub input_uncached: u64,
    /// Input tokens read from a prompt cache (billed at the cached-input rate).
    pub input_cached: u64,
    /// Input tokens written to a 5-minute cache (Anthropic: 1.25x input).
    pub cache_write_5m: u64,
    /// Input tokens written to a 1-hour cache (Anthropic: 2x input).
    pub cache_write_1h: u64,
    /// Output tokens, including reasoning/thinking tokens (billed as output).
    pub output: u64,
    /// Reasoning/thinking tokens, already counted inside `output`: informational, except for a
    /// model whose price has a reasoning rate (Perplexity deep research), which bills these of
    /// the output tokens at that rate.
    pub reasoning: u64,
    /// Citation tokens (Perplexity), billed at the model's citation rate when it has one; not
    /// inside input or output.
    #[serde(default)]
    pub citation: u64,
    /// Web searches the provider ran for the request (Perplexity deep research), billed per query
    /// when the model's price has a per-query fee.
    #[serde(default)]
    pub search_queries: u64,
    /// The search context size the provider billed the request's fee at (Perplexity); `None`: no
    /// per-request fee was reported.
    #[serde(default)]
    pub search_context: Option<SearchContext>,
}

/// Perplexity's search context size (`web_search_options.search_context_size`, echoed in
/// `usage.search_context_size`): it selects the per-request fee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchContext {
    Low,
    Medium,
    High,
}

impl SearchContext {
    /// `"low"`, `"medium"` or `"high"` (as the API spells them); anything else is `None`.
    pub fn parse(s: &str) -> Option<SearchContext> {
        match s {
            "low" => Some(SearchContext::Low),
            "medium" => Some(SearchContext::Medium),
            "high" => Some(SearchContext::High),
            _ => None,
        }
    }
}

impl Usage {
    /// All input tokens, whatever their bucket (what long-context price tiers look at).
    pub fn total_input(&self) -> u64 {
        self.input_uncached
            .saturating_add(self.input_cached)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
    }

    /// All billable tokens.
    pub fn total(&self) -> u64 {
        self.total_input().saturating_add(self.output)
    }

    /// Usage of a request that only read input (embeddings, a priced count).
    pub fn input_only(tokens: u64) -> Usage {
        Usage {
            input_uncached: tokens,
            ..Usage::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_saturate_instead_of_overflowing() {
        let u = Usage {
            input_uncached: u64::MAX,
            input_cached: 5,
            output: 7,
            ..Usage::default()
        };
        assert_eq!(u.total_input(), u64::MAX);
        assert_eq!(u.total(), u64::MAX);
    }

    #[test]
    fn reasoning_is_not_added_to_the_total() {
        let u = Usage {
            input_uncached: 10,
            cache_write_1h: 2,
            output: 30,
            reasoning: 20,
            ..Usage::default()
        };
        assert_eq!(u.total_input(), 12);
        assert_eq!(u.total(), 42);
    }
}
