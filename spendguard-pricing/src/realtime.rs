//! OpenAI Realtime (WebSocket) events, priced: what a client event asks for, the usage of a
//! server `response.done`, and the worst case of one response. No I/O; the session meter in the
//! agent (`metering/realtime.rs`) decides with these.
//!
//! Usage facts (PROVIDERS.md): `response.done` carries `response.usage` = {`input_tokens`,
//! `output_tokens`, `input_token_details` {`text_tokens`, `audio_tokens`, `image_tokens`,
//! `cached_tokens`, `cached_tokens_details` {`text_tokens`, `audio_tokens`, `image_tokens`}},
//! `output_token_details` {`text_tokens`, `audio_tokens`}}; `input_tokens` includes the cached
//! ones. Tokens the details do not place (missing or inconsistent details) are billed at the
//! dearest rate of their side: a reading error never lowers a charge.

use serde_json::Value;

use crate::money::MicroUsd;
use crate::prices::ModelPrice;

/// Tokens per unit of `*_per_mtok` prices.
const TOKENS_PER_MTOK: u128 = 1_000_000;

/// One response's tokens in disjoint billable buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealtimeUsage {
    pub text_in: u64,
    pub text_cached: u64,
    pub audio_in: u64,
    pub audio_cached: u64,
    pub image_in: u64,
    pub image_cached: u64,
    /// Input tokens the details do not place: billed at the dearest input rate.
    pub unplaced_in: u64,
    pub text_out: u64,
    pub audio_out: u64,
    /// Output tokens the details do not place: billed at the dearest output rate.
    pub unplaced_out: u64,
}

/// A client event, as far as metering cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// `response.create`: a response will run. `max_output_tokens` is its own cap, if any
    /// (`None` for absent or `"inf"`).
    ResponseCreate { max_output_tokens: Option<u64> },
    /// `session.update`: the session-wide output cap (`Some(None)`: set to `"inf"`), and a model
    /// if it names one.
    SessionUpdate {
        max_output_tokens: Option<Option<u64>>,
        model: Option<String>,
        /// It turns on input audio transcription (`audio.input.transcription`, or the beta
        /// `input_audio_transcription`), which is billed apart from `response.usage`.
        transcription: bool,
    },
    /// Anything else (audio appends, conversation items, cancels): costs nothing by itself.
    Other,
}

/// A server event, as far as metering cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// `response.created`: a response started (asked for by the client, or by server-side turn
    /// detection).
    ResponseCreated,
    /// `response.done` and its usage (`None`: absent or unreadable).
    ResponseDone(Option<RealtimeUsage>),
    Other,
}

/// The output cap a JSON value states: a number, or `"inf"` / absent (`None`: no cap).
fn cap(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// Reads a client text message. A message that is not a JSON object with a string `type` is
/// `Other` (the provider refuses it) — unless its bytes mention `response.create` at all: then a
/// parser that reads duplicate keys or odd encodings differently from ours might still start a
/// response, so it is metered as one (at the model's output cap).
pub fn classify_client(msg: &[u8]) -> ClientEvent {
    let parsed: Option<Value> = serde_json::from_slice(msg).ok();
    let ty = parsed
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    match (ty, &parsed) {
        (Some("response.create"), Some(v)) => {
            let r = v.get("response");
            ClientEvent::ResponseCreate {
                max_output_tokens: cap(r.and_then(|r| {
                    r.get("max_output_tokens")
                        .or_else(|| r.get("max_response_output_tokens"))
                })),
            }
        }
        (Some("session.update"), Some(v)) if !mentions(msg, b"response.create") => {
            let s = v.get("session");
            let field = s.and_then(|s| {
                s.get("max_output_tokens")
                    .or_else(|| s.get("max_response_output_tokens"))
            });
            let on = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
            ClientEvent::SessionUpdate {
                max_output_tokens: field.map(|f| f.as_u64()),
                model: s
                    .and_then(|s| s.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                transcription: on(s.and_then(|s| s.pointer("/audio/input/transcription")))
                    || on(s.and_then(|s| s.get("input_audio_transcription"))),
            }
        }
        _ if mentions(msg, b"response.create") => ClientEvent::ResponseCreate {
            max_output_tokens: None,
        },
        _ => ClientEvent::Other,
    }
}

fn mentions(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads a server text message.
pub fn classify_server(msg: &[u8]) -> ServerEvent {
    let Ok(v) = serde_json::from_slice::<Value>(msg) else {
        return ServerEvent::Other;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("response.created") => ServerEvent::ResponseCreated,
        Some("response.done") => ServerEvent::ResponseDone(
            v.get("response")
                .and_then(|r| r.get("usage"))
                .and_then(usage),
        ),
        _ => ServerEvent::Other,
    }
}

/// `response.usage` in billable buckets; `None` without `input_tokens` and `output_tokens`.
pub fn usage(u: &Value) -> Option<RealtimeUsage> {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let input = u.get("input_tokens")?.as_u64()?;
    let output = u.get("output_tokens")?.as_u64()?;
    let ind = u.get("input_token_details");
    let cached = ind.and_then(|d| d.get("cached_tokens_details"));
    let pick = |d: Option<&Value>, k: &str| n(d.and_then(|d| d.get(k)));
    let (text, audio, image) = (
        pick(ind, "text_tokens"),
        pick(ind, "audio_tokens"),
        pick(ind, "image_tokens"),
    );
    // Cached tokens of a kind can never exceed that kind's tokens.
    let (text_c, audio_c, image_c) = (
        pick(cached, "text_tokens").min(text),
        pick(cached, "audio_tokens").min(audio),
        pick(cached, "image_tokens").min(image),
    );
    let placed_in = text.saturating_add(audio).saturating_add(image);
    let outd = u.get("output_token_details");
    let (text_out, audio_out) = (pick(outd, "text_tokens"), pick(outd, "audio_tokens"));
    let placed_out = text_out.saturating_add(audio_out);
    Some(RealtimeUsage {
        text_in: text - text_c,
        text_cached: text_c,
        audio_in: audio - audio_c,
        audio_cached: audio_c,
        image_in: image - image_c,
        image_cached: image_c,
        unplaced_in: input.saturating_sub(placed_in),
        text_out,
        audio_out,
        unplaced_out: output.saturating_sub(placed_out),
    })
}

/// The per-token rates of a Realtime model.
struct Rates {
    text_in: MicroUsd,
    text_cached: MicroUsd,
    audio_in: MicroUsd,
    audio_cached: MicroUsd,
    image_in: MicroUsd,
    image_cached: MicroUsd,
    text_out: MicroUsd,
    audio_out: MicroUsd,
}

impl Rates {
    /// `None` when the model has no audio prices: a Realtime session of it cannot be priced.
    fn of(p: &ModelPrice) -> Option<Rates> {
        let a = p.audio.as_ref()?;
        let text_cached = p.cached_input_per_mtok.unwrap_or(p.input_per_mtok);
        // Without image prices of its own, an image token costs what a text token does.
        let (image_in, image_cached) = match &p.image {
            Some(i) => (
                i.input_per_mtok,
                i.cached_input_per_mtok.unwrap_or(i.input_per_mtok),
            ),
            None => (p.input_per_mtok, text_cached),
        };
        Some(Rates {
            text_in: p.input_per_mtok,
            text_cached,
            audio_in: a.input_per_mtok,
            audio_cached: a.cached_input_per_mtok.unwrap_or(a.input_per_mtok),
            image_in,
            image_cached,
            text_out: p.output_per_mtok,
            audio_out: a.output_per_mtok,
        })
    }

    fn max_in(&self) -> MicroUsd {
        [
            self.text_in,
            self.text_cached,
            self.audio_in,
            self.audio_cached,
            self.image_in,
            self.image_cached,
        ]
        .into_iter()
        .max()
        .unwrap_or(MicroUsd::ZERO)
    }

    fn max_out(&self) -> MicroUsd {
        self.text_out.max(self.audio_out)
    }
}

/// Whether `p` can price a Realtime session (it has audio prices).
pub fn priceable(p: &ModelPrice) -> bool {
    Rates::of(p).is_some()
}

fn sum(terms: &[(u64, MicroUsd)]) -> MicroUsd {
    let total: u128 = terms
        .iter()
        .map(|(t, r)| u128::from(*t) * u128::from(r.0))
        .sum();
    MicroUsd(u64::try_from(total.div_ceil(TOKENS_PER_MTOK)).unwrap_or(u64::MAX))
}

/// The cost of one response's usage, rounded up once; `None` when `p` has no audio prices.
pub fn cost(p: &ModelPrice, u: &RealtimeUsage) -> Option<MicroUsd> {
    let r = Rates::of(p)?;
    Some(sum(&[
        (u.text_in, r.text_in),
        (u.text_cached, r.text_cached),
        (u.audio_in, r.audio_in),
        (u.audio_cached, r.audio_cached),
        (u.image_in, r.image_in),
        (u.image_cached, r.image_cached),
        (u.unplaced_in, r.max_in()),
        (u.text_out, r.text_out),
        (u.audio_out, r.audio_out),
        (u.unplaced_out, r.max_out()),
    ]))
}

/// The most one response can cost: its input is the whole conversation, at most the model's
/// context window, every token at the dearest input rate; its output at most `max_output`
/// (clamped to the model's cap), at the dearest output rate. `None` without audio prices.
pub fn worst_case_response(p: &ModelPrice, max_output: Option<u64>) -> Option<MicroUsd> {
    let r = Rates::of(p)?;
    let out = max_output
        .unwrap_or(p.max_output_tokens)
        .min(p.max_output_tokens);
    Some(sum(&[(p.context_window, r.max_in()), (out, r.max_out())]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PriceTable;

    fn gpt_realtime() -> ModelPrice {
        PriceTable::bundled()
            .lookup("gpt-realtime")
            .expect("gpt-realtime in the bundled table")
            .1
            .clone()
    }

    #[test]
    fn usage_splits_cached_and_audio_tokens_and_costs_each_at_its_rate() {
        let done = br#"{"type":"response.done","response":{"usage":{"total_tokens":1700,
            "input_tokens":1200,"output_tokens":500,
            "input_token_details":{"text_tokens":200,"audio_tokens":1000,"image_tokens":0,
              "cached_tokens":600,"cached_tokens_details":{"text_tokens":100,"audio_tokens":500}},
            "output_token_details":{"text_tokens":100,"audio_tokens":400}}}}"#;
        let ServerEvent::ResponseDone(Some(u)) = classify_server(done) else {
            panic!("not a response.done with usage")
        };
        assert_eq!(
            u,
            RealtimeUsage {
                text_in: 100,
                text_cached: 100,
                audio_in: 500,
                audio_cached: 500,
                text_out: 100,
                audio_out: 400,
                ..RealtimeUsage::default()
            }
        );
        // gpt-realtime: text 4 / 0.40 / 16, audio 32 / 0.40 / 64 per million.
        let want = (100 * 4_000_000u128
            + 100 * 400_000
            + 500 * 32_000_000
            + 500 * 400_000
            + 100 * 16_000_000
            + 400 * 64_000_000)
            .div_ceil(1_000_000);
        assert_eq!(cost(&gpt_realtime(), &u), Some(MicroUsd(want as u64)));
    }

    #[test]
    fn tokens_the_details_do_not_place_cost_the_dearest_rate() {
        let u = usage(&serde_json::json!({"input_tokens": 1000, "output_tokens": 100})).unwrap();
        assert_eq!(u.unplaced_in, 1000);
        assert_eq!(u.unplaced_out, 100);
        // 1000 at audio input (32) + 100 at audio output (64).
        assert_eq!(cost(&gpt_realtime(), &u), Some(MicroUsd(32_000 + 6_400)));
    }

    #[test]
    fn worst_case_is_a_full_context_at_audio_rates_and_honours_the_output_cap() {
        let p = gpt_realtime();
        let full = worst_case_response(&p, None).unwrap();
        assert_eq!(full, MicroUsd(32_000 * 32 + 4_096 * 64));
        let capped = worst_case_response(&p, Some(100)).unwrap();
        assert_eq!(capped, MicroUsd(32_000 * 32 + 100 * 64));
        // A cap above the model's own is the model's.
        assert_eq!(worst_case_response(&p, Some(1 << 40)).unwrap(), full);
    }

    #[test]
    fn client_events_are_read_for_what_they_ask() {
        assert_eq!(
            classify_client(br#"{"type":"response.create","response":{"max_output_tokens":50}}"#),
            ClientEvent::ResponseCreate {
                max_output_tokens: Some(50)
            }
        );
        assert_eq!(
            classify_client(
                br#"{"type":"response.create","response":{"max_output_tokens":"inf"}}"#
            ),
            ClientEvent::ResponseCreate {
                max_output_tokens: None
            }
        );
        assert_eq!(
            classify_client(br#"{"type":"session.update","session":{"max_output_tokens":"inf","model":"gpt-realtime-2"}}"#),
            ClientEvent::SessionUpdate { max_output_tokens: Some(None), model: Some("gpt-realtime-2".into()), transcription: false }
        );
        assert_eq!(
            classify_client(br#"{"type":"input_audio_buffer.append","audio":"AAA="}"#),
            ClientEvent::Other
        );
        // Duplicate keys: whichever `type` a provider's parser keeps, it is metered as a create.
        assert_eq!(
            classify_client(br#"{"type":"response.create","type":"x"}"#),
            ClientEvent::ResponseCreate {
                max_output_tokens: None
            }
        );
        assert_eq!(
            classify_client(b"not json response.create"),
            ClientEvent::ResponseCreate {
                max_output_tokens: None
            }
        );
    }

    #[test]
    fn every_bundled_realtime_model_has_audio_prices() {
        let t = PriceTable::bundled();
        for m in [
            "gpt-realtime",
            "gpt-realtime-mini",
            "gpt-realtime-2",
            "gpt-realtime-2025-08-28",
            "gpt-4o-mini-realtime-preview-2024-12-17",
        ] {
            let (_, p) = t.lookup(m).unwrap_or_else(|| panic!("{m} missing"));
            assert!(priceable(p), "{m} has no audio prices");
        }
    }
}
