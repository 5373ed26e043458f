//! Model prices: the bundled table, overrides, name lookup and the cost of a [`Usage`].
//!
//! # Bundled data
//! `data/prices.json` (embedded with `include_str!`) is a JSON object:
//! ```json
//! { "source": "…", "date": "YYYY-MM-DD", "notes": ["…"],
//!   "models": { "gpt-4o": { "input": "2.50", "cached_input": "1.25", "output": "10.00",
//!                           "max_output_tokens": 16384, "context_window": 128000 },
//!               "gemini-2.5-pro": { …, "long_context": { "above_input_tokens": 200000,
//!                                    "input": "2.50", "cached_input": "0.25", "output": "15.00" } } },
//!   "aliases": { "claude-3-7-sonnet-latest": "claude-3-7-sonnet" } }
//! ```
//! Prices are dollars per million tokens written as decimal strings (parsed exactly by
//! [`MicroUsd::from_str`], never through a float). Optional per model: `cached_input`,
//! `cache_write` (5-minute), `cache_write_1h`, `long_context`, and for Realtime models `audio`
//! ({input, cached_input, output}) and `image` ({input, cached_input}). Perplexity's models carry
//! what it bills beyond tokens: `request_fee` ({low, medium, high}: dollars per request, by search
//! context size), and for deep research `citation` and `reasoning` (per million tokens) and
//! `search_query` (dollars per search query). Unknown fields are refused.
//!
//! # Lookup rules ([`PriceTable::lookup`])
//! Tried in order; the first hit wins and its table key is the canonical name:
//! 1. the exact name, then the name ASCII-lowercased against lowercased keys;
//! 2. an alias listed in the data file (or added with [`PriceTable::alias`]);
//! 3. a vendor prefix stripped, as OpenRouter and others spell names: `openai/`, `anthropic/`,
//!    `google/`, `gemini/`, `models/`, `x-ai/`, `xai/`, `mistralai/`, `mistral/`, `deepseek/`,
//!    `groq/`, `azure/` (only these: `meta-llama/…` is a Together model name, not a prefix);
//! 4. in the `claude-` family only, dots turned into dashes (`claude-sonnet-4.5` →
//!    `claude-sonnet-4-5`, as OpenRouter writes Anthropic versions);
//! 5. a dated snapshot suffix stripped: `-YYYY-MM-DD` (`gpt-4o-2024-08-06` → `gpt-4o`) or
//!    `-YYYYMMDD` (`claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`). Snapshots priced apart
//!    from their family (`gpt-4o-2024-05-13`) are exact keys, so rule 1 finds them first.
//!
//! Rules 3–5 combine (`anthropic/claude-3.7-sonnet-20250219`). Nothing else is tried: no prefix
//! matching (`gpt-4o-foo` is not `gpt-4o`), so a new model is never priced as an old cheaper one.
//! [`PriceTable::lookup_for`] first tries `"{provider}/{model}"` (e.g. `together/openai/gpt-oss-20b`)
//! for names that cost differently at one provider.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use serde::Deserialize;

use crate::money::MicroUsd;
use crate::usage::{SearchContext, Usage};
use crate::ProviderId;

/// The bundled price list (see the module docs for its format).
const BUNDLED_JSON: &str = include_str!("../data/prices.json");

/// Tokens per unit of `*_per_mtok` prices.
const TOKENS_PER_MTOK: u128 = 1_000_000;

/// Prices of one model, per million tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ModelPrice {
    pub input_per_mtok: MicroUsd,
    /// Cache-read price; `None` => cached tokens are billed as input.
    pub cached_input_per_mtok: Option<MicroUsd>,
    /// 5-minute cache write (Anthropic 1.25x input); `None` => billed as input.
    pub cache_write_per_mtok: Option<MicroUsd>,
    /// 1-hour cache write (Anthropic 2x input); `None` => the 5-minute price.
    pub cache_write_1h_per_mtok: Option<MicroUsd>,
    pub output_per_mtok: MicroUsd,
    /// The provider's hard limit on output tokens of one response (0 for embedding models).
    pub max_output_tokens: u64,
    /// The most input tokens one request can carry.
    pub context_window: u64,
    /// Higher prices for the whole request once its input exceeds a threshold (Gemini 2.5 Pro,
    /// Claude long context, GPT-5.4 and later). `None`: one price at every size.
    pub long_context: Option<LongContextPrice>,
    /// Audio token prices (OpenAI Realtime models); `None`: the model takes no audio.
    pub audio: Option<AudioPrice>,
    /// Image input token prices (Realtime models price image tokens apart); `None`: not apart.
    pub image: Option<ImagePrice>,
    /// A fee per request on top of tokens, by search context size (Perplexity Sonar); `None`: no
    /// request fee.
    pub request_fee: Option<RequestFee>,
    /// Citation token price (Perplexity deep research); `None`: citation tokens are not billed.
    pub citation_per_mtok: Option<MicroUsd>,
    /// Price of reasoning tokens billed apart from output (Perplexity deep research); `None`:
    /// reasoning is billed as output.
    pub reasoning_per_mtok: Option<MicroUsd>,
    /// Price of one search query the provider runs (Perplexity deep research); `None`: not billed.
    pub search_query_fee: Option<MicroUsd>,
}

/// Dollars per request by search context size (Perplexity's request fee).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestFee {
    pub low: MicroUsd,
    pub medium: MicroUsd,
    pub high: MicroUsd,
}

impl RequestFee {
    /// The fee of one request at `size`.
    pub fn at(&self, size: SearchContext) -> MicroUsd {
        match size {
            SearchContext::Low => self.low,
            SearchContext::Medium => self.medium,
            SearchContext::High => self.high,
        }
    }
}

/// Per-million-token prices of audio tokens (Realtime sessions), which cost several times
/// their text counterparts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AudioPrice {
    pub input_per_mtok: MicroUsd,
    /// `None`: cached audio is billed as audio input.
    pub cached_input_per_mtok: Option<MicroUsd>,
    pub output_per_mtok: MicroUsd,
}

/// Per-million-token prices of image input tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImagePrice {
    pub input_per_mtok: MicroUsd,
    /// `None`: cached image tokens are billed as image input.
    pub cached_input_per_mtok: Option<MicroUsd>,
}

/// Prices that apply to a whole request whose input tokens exceed `above_input_tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LongContextPrice {
    pub above_input_tokens: u64,
    pub input_per_mtok: MicroUsd,
    pub cached_input_per_mtok: Option<MicroUsd>,
    pub cache_write_per_mtok: Option<MicroUsd>,
    pub cache_write_1h_per_mtok: Option<MicroUsd>,
    pub output_per_mtok: MicroUsd,
}

/// The per-token rates that apply to one request (base or long-context tier).
#[derive(Clone, Copy, Debug)]
struct Rates {
    input: MicroUsd,
    cached: Option<MicroUsd>,
    write_5m: Option<MicroUsd>,
    write_1h: Option<MicroUsd>,
    output: MicroUsd,
}

impl Rates {
    fn cached(&self) -> MicroUsd {
        self.cached.unwrap_or(self.input)
    }
    fn write_5m(&self) -> MicroUsd {
        self.write_5m.unwrap_or(self.input)
    }
    fn write_1h(&self) -> MicroUsd {
        self.write_1h.unwrap_or_else(|| self.write_5m())
    }
}

impl ModelPrice {
    fn rates_for(&self, input_tokens: u64) -> Rates {
        match &self.long_context {
            Some(lc) if input_tokens > lc.above_input_tokens => Rates {
                input: lc.input_per_mtok,
                cached: lc.cached_input_per_mtok,
                write_5m: lc.cache_write_per_mtok,
                write_1h: lc.cache_write_1h_per_mtok,
                output: lc.output_per_mtok,
            },
            _ => Rates {
                input: self.input_per_mtok,
                cached: self.cached_input_per_mtok,
                write_5m: self.cache_write_per_mtok,
                write_1h: self.cache_write_1h_per_mtok,
                output: self.output_per_mtok,
            },
        }
    }

    /// The cost of `usage`: each bucket's tokens times its rate, summed exactly in u128 and divided
    /// by one million once, rounding up (a provider never bills less than a whole micro-dollar
    /// below us); then the per-request fee of the reported search context size and the
    /// per-query fees, which are whole micro-dollars already. Saturates at [`MicroUsd::MAX`].
    pub fn cost(&self, usage: &Usage) -> MicroUsd {
        let r = self.rates_for(usage.total_input());
        let term = |tokens: u64, rate: MicroUsd| u128::from(tokens) * u128::from(rate.0);
        // Reasoning is inside `output`; a model with its own reasoning rate bills that part at it.
        let (reasoning, reasoning_rate) = match self.reasoning_per_mtok {
            Some(rate) => (usage.reasoning.min(usage.output), rate),
            None => (0, MicroUsd(0)),
        };
        let sum = term(usage.input_uncached, r.input)
            + term(usage.input_cached, r.cached())
            + term(usage.cache_write_5m, r.write_5m())
            + term(usage.cache_write_1h, r.write_1h())
            + term(usage.output - reasoning, r.output)
            + term(reasoning, reasoning_rate)
            + term(
                usage.citation,
                self.citation_per_mtok.unwrap_or(MicroUsd(0)),
            );
        let fees = self.request_fee_for(usage.search_context)
            + term(
                usage.search_queries,
                self.search_query_fee.unwrap_or(MicroUsd(0)),
            );
        let micro = sum.div_ceil(TOKENS_PER_MTOK).saturating_add(fees);
        MicroUsd(u64::try_from(micro).unwrap_or(u64::MAX))
    }

    /// The request fee at `size` (none without a size or without a fee table).
    fn request_fee_for(&self, size: Option<SearchContext>) -> u128 {
        match (&self.request_fee, size) {
            (Some(fee), Some(size)) => u128::from(fee.at(size).0),
            _ => 0,
        }
    }

    /// The most expensive rate any input token of a request could be billed at, given whether the
    /// request asks for cache writes (`None`: no caching; `Some(false)`: 5-minute; `Some(true)`:
    /// 1-hour or unknown TTL), at the tier that `input_tokens` falls in.
    pub fn worst_input_rate(&self, input_tokens: u64, cache_write: Option<bool>) -> MicroUsd {
        let r = self.rates_for(input_tokens);
        let mut rate = r.input.max(r.cached());
        if let Some(one_hour) = cache_write {
            rate = rate.max(r.write_5m());
            if one_hour {
                rate = rate.max(r.write_1h());
            }
        }
        rate
    }

    /// Worst-case cost of `input` tokens (all billed at the worst input rate) plus `output` tokens.
    pub fn worst_case_cost(&self, input: u64, output: u64, cache_write: Option<bool>) -> MicroUsd {
        let rate = self.worst_input_rate(input, cache_write);
        let r = self.rates_for(input);
        let sum =
            u128::from(input) * u128::from(rate.0) + u128::from(output) * u128::from(r.output.0);
        MicroUsd(u64::try_from(sum.div_ceil(TOKENS_PER_MTOK)).unwrap_or(u64::MAX))
    }
}

/// Why the bundled or an operator-supplied price list was refused.
#[derive(Debug, thiserror::Error)]
pub enum PriceTableError {
    #[error("price list is not valid JSON of the expected shape: {0}; check field names and types against the prices module docs")]
    Json(#[from] serde_json::Error),
    #[error("price list: model '{model}': field '{field}' is not a dollar amount ({source})")]
    Price {
        model: String,
        field: &'static str,
        source: crate::money::MoneyParseError,
    },
    #[error("price list: alias '{alias}' points at '{target}', which is not a model of the list")]
    DanglingAlias { alias: String, target: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    source: String,
    date: String,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "human notes in the data file, kept for readers only"
    )]
    notes: Vec<String>,
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    input: String,
    #[serde(default)]
    cached_input: Option<String>,
    #[serde(default)]
    cache_write: Option<String>,
    #[serde(default)]
    cache_write_1h: Option<String>,
    output: String,
    max_output_tokens: u64,
    context_window: u64,
    #[serde(default)]
    long_context: Option<RawLongContext>,
    #[serde(default)]
    audio: Option<RawAudio>,
    #[serde(default)]
    image: Option<RawImage>,
    #[serde(default)]
    request_fee: Option<RawRequestFee>,
    #[serde(default)]
    citation: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    search_query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestFee {
    low: String,
    medium: String,
    high: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudio {
    input: String,
    #[serde(default)]
    cached_input: Option<String>,
    output: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    input: String,
    #[serde(default)]
    cached_input: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongContext {
    above_input_tokens: u64,
    input: String,
    #[serde(default)]
    cached_input: Option<String>,
    #[serde(default)]
    cache_write: Option<String>,
    #[serde(default)]
    cache_write_1h: Option<String>,
    output: String,
}

/// Model name → price, with aliases and a lowercase index for case-insensitive lookups.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    source: String,
    date: String,
    models: BTreeMap<String, ModelPrice>,
    aliases: BTreeMap<String, String>,
    lowercase: HashMap<String, String>,
}

/// Vendor prefixes that rule 3 strips (see the module docs).
const VENDOR_PREFIXES: &[&str] = &[
    "openai/",
    "anthropic/",
    "google/",
    "gemini/",
    "models/",
    "x-ai/",
    "xai/",
    "mistralai/",
    "mistral/",
    "deepseek/",
    "groq/",
    "azure/",
];

impl PriceTable {
    /// The table shipped with this crate. The data file is checked by this crate's tests, so a
    /// failure here is a build defect: it logs and yields an empty table (every model unknown,
    /// every priced request blocked) rather than panicking inside the proxy.
    pub fn bundled() -> PriceTable {
        match PriceTable::from_json(BUNDLED_JSON) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "bundled price list is invalid; every model is unknown");
                PriceTable::default()
            }
        }
    }

    /// Parses a price list in the bundled format (see the module docs).
    pub fn from_json(json: &str) -> Result<PriceTable, PriceTableError> {
        let raw: RawTable = serde_json::from_str(json)?;
        let mut table = PriceTable {
            source: raw.source,
            date: raw.date,
            ..PriceTable::default()
        };
        for (name, m) in raw.models {
            let price = m.into_price(&name)?;
            table.set(&name, price);
        }
        for (alias, target) in raw.aliases {
            if !table.models.contains_key(&target) {
                return Err(PriceTableError::DanglingAlias { alias, target });
            }
            table.alias(&alias, &target);
        }
        Ok(table)
    }

    /// Where the bundled prices came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// When the bundled prices were taken.
    pub fn date(&self) -> &str {
        &self.date
    }

    /// Sets (adds or overrides) the price of `model`, e.g. from config or `spendguard price set`.
    pub fn set(&mut self, model: &str, price: ModelPrice) {
        self.lowercase
            .insert(model.to_ascii_lowercase(), model.to_string());
        self.models.insert(model.to_string(), price);
    }

    /// Makes `alias` name the model `target` (which should be a key of the table).
    pub fn alias(&mut self, alias: &str, target: &str) {
        self.aliases.insert(alias.to_string(), target.to_string());
    }

    /// Every model and its price, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of priced models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Finds the price of `model` by the rules in the module docs; returns the canonical name.
    pub fn lookup(&self, model: &str) -> Option<(&str, &ModelPrice)> {
        let model = model.trim();
        if model.is_empty() {
            return None;
        }
        if let Some(hit) = self.exact(model) {
            return Some(hit);
        }
        let unprefixed = VENDOR_PREFIXES
            .iter()
            .find_map(|p| strip_prefix_ignore_case(model, p))
            .unwrap_or(model);
        let dotted = if unprefixed
            .get(..7)
            .is_some_and(|head| head.eq_ignore_ascii_case("claude-"))
        {
            Some(unprefixed.replace('.', "-"))
        } else {
            None
        };
        let base = dotted.as_deref().unwrap_or(unprefixed);
        if base != model {
            if let Some(hit) = self.exact(base) {
                return Some(hit);
            }
        }
        let undated = strip_date_suffix(base)?;
        self.exact(undated)
    }

    /// Like [`PriceTable::lookup`], but first tries the provider-qualified name
    /// `"{provider}/{model}"` for models that cost differently at that provider.
    pub fn lookup_for(&self, provider: ProviderId, model: &str) -> Option<(&str, &ModelPrice)> {
        let qualified = format!("{}/{}", provider.as_str(), model.trim());
        self.exact(&qualified).or_else(|| self.lookup(model))
    }

    /// Rules 1 and 2: exact key, lowercase key, alias.
    fn exact(&self, name: &str) -> Option<(&str, &ModelPrice)> {
        if let Some((k, v)) = self.models.get_key_value(name) {
            return Some((k.as_str(), v));
        }
        // Most names are lowercase already: look them up without a lowercased copy.
        let lower = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        if let Some(key) = self.lowercase.get(&*lower) {
            if let Some((k, v)) = self.models.get_key_value(key) {
                return Some((k.as_str(), v));
            }
        }
        let target = self.aliases.get(name)?;
        self.models
            .get_key_value(target)
            .map(|(k, v)| (k.as_str(), v))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..).filter(|rest| !rest.is_empty())
    } else {
        None
    }
}

/// Strips `-YYYY-MM-DD` or `-YYYYMMDD` (a plausible date: year 20xx, month 01–12, day 01–31).
fn strip_date_suffix(name: &str) -> Option<&str> {
    [11usize, 9].into_iter().find_map(|len| {
        let split = name.len().checked_sub(len)?;
        let head = name.get(..split).filter(|h| !h.is_empty())?;
        let tail = name.get(split..)?.strip_prefix('-')?;
        let compact = if len == 11 {
            let mut it = tail.split('-');
            let (y, m, d) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
                return None;
            }
            format!("{y}{m}{d}")
        } else {
            tail.to_string()
        };
        if compact.len() != 8 || !compact.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let month: u32 = compact.get(4..6)?.parse().ok()?;
        let day: u32 = compact.get(6..8)?.parse().ok()?;
        let plausible =
            compact.starts_with("20") && (1..=12).contains(&month) && (1..=31).contains(&day);
        plausible.then_some(head)
    })
}

impl RawModel {
    fn into_price(self, model: &str) -> Result<ModelPrice, PriceTableError> {
        let p = |field: &'static str, v: &str| {
            MicroUsd::from_str(v).map_err(|source| PriceTableError::Price {
                model: model.to_string(),
                field,
                source,
            })
        };
        let opt = |field: &'static str, v: Option<&String>| v.map(|v| p(field, v)).transpose();
        let long_context = match &self.long_context {
            Some(lc) => Some(LongContextPrice {
                above_input_tokens: lc.above_input_tokens,
                input_per_mtok: p("long_context.input", &lc.input)?,
                cached_input_per_mtok: opt("long_context.cached_input", lc.cached_input.as_ref())?,
                cache_write_per_mtok: opt("long_context.cache_write", lc.cache_write.as_ref())?,
                cache_write_1h_per_mtok: opt(
                    "long_context.cache_write_1h",
                    lc.cache_write_1h.as_ref(),
                )?,
                output_per_mtok: p("long_context.output", &lc.output)?,
            }),
            None => None,
        };
        let audio = match &self.audio {
            Some(a) => Some(AudioPrice {
                input_per_mtok: p("audio.input", &a.input)?,
                cached_input_per_mtok: opt("audio.cached_input", a.cached_input.as_ref())?,
                output_per_mtok: p("audio.output", &a.output)?,
            }),
            None => None,
        };
        let image = match &self.image {
            Some(i) => Some(ImagePrice {
                input_per_mtok: p("image.input", &i.input)?,
                cached_input_per_mtok: opt("image.cached_input", i.cached_input.as_ref())?,
            }),
            None => None,
        };
        let request_fee = match &self.request_fee {
            Some(f) => Some(RequestFee {
                low: p("request_fee.low", &f.low)?,
                medium: p("request_fee.medium", &f.medium)?,
                high: p("request_fee.high", &f.high)?,
            }),
            None => None,
        };
        Ok(ModelPrice {
            input_per_mtok: p("input", &self.input)?,
            cached_input_per_mtok: opt("cached_input", self.cached_input.as_ref())?,
            cache_write_per_mtok: opt("cache_write", self.cache_write.as_ref())?,
            cache_write_1h_per_mtok: opt("cache_write_1h", self.cache_write_1h.as_ref())?,
            output_per_mtok: p("output", &self.output)?,
            max_output_tokens: self.max_output_tokens,
            context_window: self.context_window,
            long_context,
            audio,
            image,
            request_fee,
            citation_per_mtok: opt("citation", self.citation.as_ref())?,
            reasoning_per_mtok: opt("reasoning", self.reasoning.as_ref())?,
            search_query_fee: opt("search_query", self.search_query.as_ref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> MicroUsd {
        s.parse().unwrap()
    }

    fn simple(input: &str, output: &str) -> ModelPrice {
        ModelPrice {
            input_per_mtok: usd(input),
            output_per_mtok: usd(output),
            max_output_tokens: 1000,
            context_window: 10_000,
            ..ModelPrice::default()
        }
    }

    #[test]
    fn bundled_table_parses_and_names_its_source() {
        let t = PriceTable::from_json(BUNDLED_JSON).unwrap();
        assert!(t.len() > 200, "only {} models", t.len());
        assert!(t.source().contains("litellm"));
        assert_eq!(t.date().len(), 10);
        assert_eq!(PriceTable::bundled().len(), t.len());
    }

    #[test]
    fn bundled_prices_are_the_published_ones() {
        let t = PriceTable::bundled();
        let (_, p) = t.lookup("gpt-4o").unwrap();
        assert_eq!(p.input_per_mtok, usd("2.50"));
        assert_eq!(p.cached_input_per_mtok, Some(usd("1.25")));
        assert_eq!(p.output_per_mtok, usd("10"));
        let (_, p) = t.lookup("claude-sonnet-4-5").unwrap();
        assert_eq!(p.input_per_mtok, usd("3"));
        assert_eq!(p.cache_write_per_mtok, Some(usd("3.75")));
        assert_eq!(p.cache_write_1h_per_mtok, Some(usd("6")));
        assert_eq!(p.cached_input_per_mtok, Some(usd("0.30")));
        let (_, p) = t.lookup("gemini-2.5-pro").unwrap();
        let lc = p.long_context.as_ref().unwrap();
        assert_eq!(lc.above_input_tokens, 200_000);
        assert_eq!(lc.input_per_mtok, usd("2.50"));
    }

    #[test]
    fn every_bundled_model_is_sane() {
        for (name, p) in PriceTable::bundled().iter() {
            assert!(p.context_window > 0, "{name}: no context window");
            if let Some(c) = p.cached_input_per_mtok {
                assert!(
                    c <= p.input_per_mtok,
                    "{name}: cache read dearer than input"
                );
            }
            if let Some(w) = p.cache_write_per_mtok {
                assert!(w.0 <= p.input_per_mtok.0 * 3, "{name}: odd cache write");
            }
        }
    }

    #[test]
    fn cost_sums_buckets_and_rounds_up_once() {
        let p = ModelPrice {
            input_per_mtok: usd("3"),
            cached_input_per_mtok: Some(usd("0.30")),
            cache_write_per_mtok: Some(usd("3.75")),
            cache_write_1h_per_mtok: Some(usd("6")),
            output_per_mtok: usd("15"),
            ..ModelPrice::default()
        };
        let u = Usage {
            input_uncached: 1,
            input_cached: 1,
            cache_write_5m: 1,
            cache_write_1h: 1,
            output: 1,
            reasoning: 1,
            ..Usage::default()
        };
        // 3 + 0.3 + 3.75 + 6 + 15 = 28.05 µ$ summed exactly, rounded up once: 29.
        assert_eq!(p.cost(&u), MicroUsd(29));
        assert_eq!(p.cost(&Usage::default()), MicroUsd(0));
        // 1M input at $3/Mtok is exactly $3.
        assert_eq!(p.cost(&Usage::input_only(1_000_000)), MicroUsd::from_usd(3));
        // One token at $0.000001/Mtok still costs one micro-dollar (never rounds down to free).
        assert_eq!(
            simple("0.000001", "0").cost(&Usage::input_only(1)),
            MicroUsd(1)
        );
    }

    /// Perplexity: the request fee of the reported context size is added once; deep research
    /// bills citation tokens, its reasoning share of the output at the reasoning rate, and each
    /// search query.
    #[test]
    fn request_and_search_fees_are_added_exactly() {
        let t = PriceTable::bundled();
        let (_, sonar) = t.lookup("perplexity/sonar").unwrap();
        let fee = sonar.request_fee.as_ref().unwrap();
        assert_eq!(
            (fee.low, fee.medium, fee.high),
            (usd("0.005"), usd("0.008"), usd("0.012"))
        );
        let u = Usage {
            input_uncached: 1000,
            output: 500,
            ..Usage::default()
        };
        assert_eq!(
            sonar.cost(&u),
            MicroUsd(1500),
            "no size reported: tokens only"
        );
        for (size, fee) in [
            (SearchContext::Low, 5_000),
            (SearchContext::Medium, 8_000),
            (SearchContext::High, 12_000),
        ] {
            let u = Usage {
                search_context: Some(size),
                ..u
            };
            assert_eq!(sonar.cost(&u), MicroUsd(1500 + fee), "{size:?}");
        }
        let (_, deep) = t.lookup("perplexity/sonar-deep-research").unwrap();
        assert_eq!(deep.request_fee, None);
        assert_eq!(deep.citation_per_mtok, Some(usd("2")));
        assert_eq!(deep.reasoning_per_mtok, Some(usd("3")));
        assert_eq!(deep.search_query_fee, Some(usd("0.005")));
        // Perplexity's example: 18 in, 6,627 out, 212,376 reasoning, 34,500 citation, 30 searches.
        let u = Usage {
            input_uncached: 18,
            output: 6627 + 212_376,
            reasoning: 212_376,
            citation: 34_500,
            search_queries: 30,
            ..Usage::default()
        };
        // (18×2 + 6,627×8 + 212,376×3 + 34,500×2) / 1e6 dollars = 0.759180, + 30 × 0.005.
        assert_eq!(deep.cost(&u), MicroUsd(759_180 + 150_000));
        // A model without a reasoning rate bills reasoning as the output it is inside.
        let r = Usage {
            output: 10,
            reasoning: 10,
            ..Usage::default()
        };
        assert_eq!(simple("0", "1").cost(&r), MicroUsd(10));
    }

    #[test]
    fn missing_cache_prices_fall_back_to_input() {
        let p = simple("2", "8");
        let u = Usage {
            input_cached: 1_000_000,
            cache_write_5m: 1_000_000,
            cache_write_1h: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u), MicroUsd::from_usd(6));
    }

    #[test]
    fn cost_saturates() {
        let p = simple("1000000", "1000000");
        let u = Usage {
            input_uncached: u64::MAX,
            output: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u), MicroUsd::MAX);
    }

    #[test]
    fn long_context_tier_applies_to_the_whole_request() {
        let mut p = simple("1.25", "10");
        p.long_context = Some(LongContextPrice {
            above_input_tokens: 200_000,
            input_per_mtok: usd("2.50"),
            output_per_mtok: usd("15"),
            ..LongContextPrice::default()
        });
        let small = Usage {
            input_uncached: 200_000,
            output: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(p.cost(&small), usd("10.25"));
        let big = Usage {
            input_uncached: 200_001,
            output: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(p.cost(&big), MicroUsd(500_003 + 15_000_000));
        assert!(p.worst_case_cost(200_001, 0, None) >= p.cost(&Usage::input_only(200_001)));
    }

    #[test]
    fn worst_input_rate_includes_cache_writes_only_when_asked() {
        let p = ModelPrice {
            input_per_mtok: usd("3"),
            cache_write_per_mtok: Some(usd("3.75")),
            cache_write_1h_per_mtok: Some(usd("6")),
            ..ModelPrice::default()
        };
        assert_eq!(p.worst_input_rate(10, None), usd("3"));
        assert_eq!(p.worst_input_rate(10, Some(false)), usd("3.75"));
        assert_eq!(p.worst_input_rate(10, Some(true)), usd("6"));
    }

    #[test]
    fn lookup_rules() {
        let t = PriceTable::bundled();
        let name = |m: &str| t.lookup(m).map(|(n, _)| n.to_string());
        assert_eq!(name("gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(name("GPT-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(name("gpt-4o-2024-08-06").as_deref(), Some("gpt-4o"));
        // A snapshot priced apart from its family wins by exact match.
        assert_eq!(
            name("gpt-4o-2024-05-13").as_deref(),
            Some("gpt-4o-2024-05-13")
        );
        assert_eq!(name("openai/gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(
            name("openai/gpt-4o-mini-2024-07-18").as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            name("claude-sonnet-4-5-20250929").as_deref(),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            name("anthropic/claude-sonnet-4.5").as_deref(),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            name("anthropic/claude-3.7-sonnet").as_deref(),
            Some("claude-3-7-sonnet")
        );
        assert_eq!(
            name("claude-3-7-sonnet-latest").as_deref(),
            Some("claude-3-7-sonnet")
        );
        assert_eq!(
            name("google/gemini-2.5-pro").as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            name("models/gemini-2.5-flash").as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(name("x-ai/grok-4").as_deref(), Some("grok-4"));
        assert_eq!(
            name("meta-llama/Llama-3.3-70B-Instruct-Turbo").as_deref(),
            Some("meta-llama/Llama-3.3-70B-Instruct-Turbo")
        );
        // Never guessed across families or by prefix.
        assert_eq!(name("gpt-4o-foo"), None);
        assert_eq!(name("gpt-4"), Some("gpt-4".to_string()));
        assert_eq!(name("gpt-4-9999"), None);
        assert_eq!(name("gpt-4o-2024-13-01"), None, "not a date");
        assert_eq!(name("claude-sonnet"), None);
        assert_eq!(
            name("gpt-4.5o"),
            None,
            "dots are only rewritten for claude-"
        );
        assert_eq!(name(""), None);
        assert_eq!(name("-2024-08-06"), None);
        assert_eq!(name("openai/"), None);
    }

    #[test]
    fn lookup_for_prefers_the_provider_qualified_price() {
        let t = PriceTable::bundled();
        let (n, together) = t
            .lookup_for(ProviderId::Together, "openai/gpt-oss-20b")
            .unwrap();
        assert_eq!(n, "together/openai/gpt-oss-20b");
        let (n, groq) = t
            .lookup_for(ProviderId::Groq, "openai/gpt-oss-20b")
            .unwrap();
        assert_eq!(n, "openai/gpt-oss-20b");
        assert_ne!(together, groq);
    }

    #[test]
    fn set_overrides_and_adds() {
        let mut t = PriceTable::bundled();
        t.set("gpt-4o", simple("1", "2"));
        assert_eq!(
            t.lookup("gpt-4o-2024-08-06").unwrap().1.input_per_mtok,
            usd("1")
        );
        t.set("my-finetune", simple("9", "9"));
        assert_eq!(t.lookup("MY-FINETUNE").unwrap().0, "my-finetune");
    }

    #[test]
    fn bad_price_lists_are_refused_with_the_field_named() {
        let bad = r#"{"source":"s","date":"d","models":{"m":{"input":"1.5.0","output":"1","max_output_tokens":1,"context_window":1}}}"#;
        let e = PriceTable::from_json(bad).unwrap_err().to_string();
        assert!(e.contains("'m'") && e.contains("'input'"), "{e}");
        let unknown = r#"{"source":"s","date":"d","models":{"m":{"input":"1","output":"1","max_output_tokens":1,"context_window":1,"typo":1}}}"#;
        let fee = r#"{"source":"s","date":"d","models":{"m":{"input":"1","output":"1","max_output_tokens":1,"context_window":1,"request_fee":{"low":"0.005","medium":"x","high":"0.01"}}}}"#;
        let e = PriceTable::from_json(fee).unwrap_err().to_string();
        assert!(e.contains("'request_fee.medium'"), "{e}");
        assert!(PriceTable::from_json(unknown).is_err());
        let dangling = r#"{"source":"s","date":"d","models":{},"aliases":{"a":"b"}}"#;
        assert!(matches!(
            PriceTable::from_json(dangling),
            Err(PriceTableError::DanglingAlias { .. })
        ));
    }
}
