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
    /// Reasoning/thinking tokens: informational only, already counted inside `output`.
    pub reasoning: u64,
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
