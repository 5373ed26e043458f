//! One borrowed pass over an OpenAI-shaped request body: what the quote reads, and nothing else.
//!
//! Parsing the body into a `serde_json::Value` (and cloning it to walk it) cost ~28 allocations
//! for the bench's 93-byte chat request: every key, every string, every array and map node. The
//! quote reads ~20 top-level fields and, anywhere in the tree, each object's `type` (content parts:
//! images, audio, files) and every `cache_control`. So the body is driven through
//! `serde_json::Deserializer` with a visitor that reduces each value to a [`Shape`] as it goes:
//! strings borrowed from the body (an owned copy only for a string with JSON escapes), arrays and
//! objects to a few counters and flags. The tree walk the `Value` path did afterwards
//! (`count_parts`, `cache_write_request`) happens during the same pass.
//!
//! Same answers as the `Value` path, with one deliberate difference: a key repeated in one object
//! counts as in the `Value` (the last one wins) for every field the quote reads, but the earlier
//! copies' subtrees are still walked, so images or `cache_control` hidden in a shadowed duplicate
//! are counted too. That can only raise the worst case, never lower it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::json_pick::KeySeed;
use super::{cache_write_request, count_parts, malformed, Part, PartCounts, PricingError};

/// The top-level fields an OpenAI-shaped quote reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Model,
    Models,
    Plugins,
    Messages,
    Prompt,
    Input,
    Audio,
    Modalities,
    WebSearchOptions,
    ServiceTier,
    SearchParameters,
    Tools,
    Functions,
    Stream,
    StreamOptions,
    N,
    BestOf,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    PreviousResponseId,
    Conversation,
}

const KEYS: [(&str, Key); 22] = [
    ("model", Key::Model),
    ("models", Key::Models),
    ("plugins", Key::Plugins),
    ("messages", Key::Messages),
    ("prompt", Key::Prompt),
    ("input", Key::Input),
    ("audio", Key::Audio),
    ("modalities", Key::Modalities),
    ("web_search_options", Key::WebSearchOptions),
    ("service_tier", Key::ServiceTier),
    ("search_parameters", Key::SearchParameters),
    ("tools", Key::Tools),
    ("functions", Key::Functions),
    ("stream", Key::Stream),
    ("stream_options", Key::StreamOptions),
    ("n", Key::N),
    ("best_of", Key::BestOf),
    ("max_tokens", Key::MaxTokens),
    ("max_completion_tokens", Key::MaxCompletionTokens),
    ("max_output_tokens", Key::MaxOutputTokens),
    ("previous_response_id", Key::PreviousResponseId),
    ("conversation", Key::Conversation),
];

impl Key {
    fn of(name: &str) -> Option<Key> {
        KEYS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    fn name(self) -> &'static str {
        KEYS[self as usize].0
    }
}

/// A JSON value reduced to what a quote asks of it.
#[derive(Debug, PartialEq)]
pub(crate) enum Shape<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(ArrayShape<'a>),
    Object(ObjectShape),
}

/// What a quote asks of an array.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ArrayShape<'a> {
    pub len: u64,
    /// Elements that are numbers (a token array is a prompt, not a list of prompts).
    pub numbers: u64,
    /// Elements that are not strings.
    pub non_strings: u64,
    /// Some element is the string `"audio"` (`modalities`).
    pub has_audio: bool,
    /// Some element is an object whose `type` is a string other than `function` / `custom`
    /// (a hosted tool, in `tools`).
    pub hosted_tool: bool,
    /// The string elements, kept only where the quote needs them (`models`).
    pub strings: Vec<Cow<'a, str>>,
}

/// What a quote asks of an object (each member: the last of a repeated key wins).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ObjectShape {
    /// `type` is a string other than `function` / `custom`.
    pub hosted_tool: bool,
    /// `ttl` is `"1h"` (a `cache_control`).
    pub ttl_1h: bool,
    /// `mode` is `"off"` (xAI `search_parameters`).
    pub mode_off: bool,
    /// `include_usage` is `true` (`stream_options`).
    pub include_usage: bool,
}

impl Shape<'_> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Shape::Null)
    }
    pub(crate) fn as_array(&self) -> Option<&ArrayShape<'_>> {
        match self {
            Shape::Array(a) => Some(a),
            _ => None,
        }
    }
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Shape::Str(s) => Some(s),
            _ => None,
        }
    }
    pub(crate) fn as_object(&self) -> Option<&ObjectShape> {
        match self {
            Shape::Object(o) => Some(o),
            _ => None,
        }
    }
}

/// An OpenAI-shaped request body, read once.
#[derive(Debug)]
pub(crate) struct OpenAiRequest<'a> {
    fields: [Option<Shape<'a>>; KEYS.len()],
    /// Content parts found anywhere in the body (OpenAI's `type` values).
    pub parts: PartCounts,
    /// Prompt-cache writes asked anywhere: `None` no, `Some(true)` a 1-hour TTL somewhere.
    pub cache_write: Option<bool>,
    /// `prediction`, when present and not null: the length of its compact JSON (rejected
    /// prediction tokens bill as output).
    pub prediction_len: Option<u64>,
}

impl<'a> OpenAiRequest<'a> {
    /// Reads a body that must be a JSON object; the errors are those of `parse_object`.
    pub(crate) fn parse(body: &'a [u8]) -> Result<OpenAiRequest<'a>, PricingError> {
        let mut scan = Scan {
            fields: Default::default(),
            parts: PartCounts::default(),
            cache_write: None,
            prediction_len: None,
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let root = Walk {
            scan: &mut scan,
            depth: 0,
            keep_strings: false,
        }
        .deserialize(&mut de)
        .and_then(|root| de.end().map(|()| root))
        .map_err(|e| {
            malformed(format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if !matches!(root, Shape::Object(_)) {
            return Err(malformed("the body is JSON but not an object"));
        }
        Ok(OpenAiRequest {
            fields: scan.fields,
            parts: scan.parts,
            cache_write: scan.cache_write,
            prediction_len: scan.prediction_len,
        })
    }

    /// A top-level field, `None` when absent.
    pub(crate) fn get(&self, key: Key) -> Option<&Shape<'a>> {
        self.fields[key as usize].as_ref()
    }

    /// Present and not null.
    pub(crate) fn present(&self, key: Key) -> bool {
        self.get(key).is_some_and(|v| !v.is_null())
    }

    /// The body's `model` string.
    pub(crate) fn model(&self) -> Result<&str, PricingError> {
        match self.get(Key::Model) {
            Some(Shape::Str(s)) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(malformed("'model' must be a non-empty string")),
            None => Err(malformed("the body names no 'model'")),
        }
    }

    /// A token-count field, as `count_field` reads it from a `Value`.
    pub(crate) fn count(&self, key: Key) -> Result<Option<u64>, PricingError> {
        let bad = || malformed(format!("'{}' must be a non-negative integer", key.name()));
        match self.get(key) {
            None | Some(Shape::Null) => Ok(None),
            Some(Shape::UInt(n)) => Ok(Some(*n)),
            // 100.0 is how some clients spell 100: the same reading as `count_field`'s.
            Some(Shape::Float(f)) => {
                super::count_value(&Value::from(*f)).map_or_else(|| Err(bad()), |n| Ok(Some(n)))
            }
            Some(_) => Err(bad()),
        }
    }

    /// The largest of several limit fields that are present.
    pub(crate) fn max_limit(&self, keys: &[Key]) -> Result<Option<u64>, PricingError> {
        let mut best: Option<u64> = None;
        for k in keys {
            if let Some(n) = self.count(*k)? {
                best = Some(best.map_or(n, |b| b.max(n)));
            }
        }
        Ok(best)
    }
}

/// What the pass collects besides the shape of each value.
struct Scan<'a> {
    fields: [Option<Shape<'a>>; KEYS.len()],
    parts: PartCounts,
    cache_write: Option<bool>,
    prediction_len: Option<u64>,
}

impl Scan<'_> {
    fn count_part(&mut self, part: Part) {
        match part {
            Part::Plain => {}
            Part::Image => self.parts.images += 1,
            Part::Audio => self.parts.audio += 1,
            Part::Unbounded => self.parts.unbounded += 1,
        }
    }

    fn cache_control(&mut self, one_hour: bool) {
        self.cache_write = Some(self.cache_write.unwrap_or(false) || one_hour);
    }
}

/// Reads one value (and, for the root object, the top-level fields).
struct Walk<'s, 'a> {
    scan: &'s mut Scan<'a>,
    depth: u32,
    keep_strings: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = Shape<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, 'de> {
    type Value = Shape<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Shape<'de>, E> {
        Ok(Shape::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Shape<'de>, E> {
        Ok(Shape::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shape<'de>, E> {
        Ok(Shape::UInt(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shape<'de>, E> {
        Ok(if v >= 0 {
            Shape::UInt(v.unsigned_abs())
        } else {
            Shape::Int(v)
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Shape<'de>, E> {
        Ok(Shape::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Borrowed(v)))
    }
    // A string with escapes is unescaped into a scratch buffer: it needs its own copy.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape<'de>, A::Error> {
        let mut a = ArrayShape::default();
        while let Some(item) = seq.next_element_seed(Walk {
            scan: &mut *self.scan,
            depth: self.depth + 1,
            keep_strings: false,
        })? {
            a.len += 1;
            match item {
                Shape::UInt(_) | Shape::Int(_) | Shape::Float(_) => a.numbers += 1,
                Shape::Object(ref o) => a.hosted_tool |= o.hosted_tool,
                _ => {}
            }
            match item {
                Shape::Str(s) => {
                    a.has_audio |= s == "audio";
                    if self.keep_strings {
                        a.strings.push(s);
                    }
                }
                _ => a.non_strings += 1,
            }
        }
        Ok(Shape::Array(a))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
        let mut o = ObjectShape::default();
        // The last `type` that was a string (a later non-string one clears it, as `get` would).
        let mut kind: Option<Cow<'de, str>> = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let top = if self.depth == 0 { Key::of(&key) } else { None };
            if self.depth == 0 && key == "prediction" {
                // Rare, and priced by its compact JSON length: read it as a Value, as before.
                let v: Value = map.next_value()?;
                let parts = count_parts(&v, &|m| super::openai::classify_part(m));
                self.scan.parts.images += parts.images;
                self.scan.parts.audio += parts.audio;
                self.scan.parts.unbounded += parts.unbounded;
                if let Some(one_hour) = cache_write_request(&v) {
                    self.scan.cache_control(one_hour);
                }
                self.scan.prediction_len = (!v.is_null()).then(|| v.to_string().len() as u64);
                continue;
            }
            let v = map.next_value_seed(Walk {
                scan: &mut *self.scan,
                depth: self.depth + 1,
                keep_strings: top == Some(Key::Models),
            })?;
            match &*key {
                "type" => {
                    kind = match v {
                        Shape::Str(s) => Some(s),
                        _ => None,
                    };
                    continue;
                }
                "ttl" => o.ttl_1h = v.as_str() == Some("1h"),
                "mode" => o.mode_off = v.as_str() == Some("off"),
                "include_usage" => o.include_usage = v == Shape::Bool(true),
                "cache_control" if !v.is_null() => {
                    self.scan
                        .cache_control(v.as_object().is_some_and(|c| c.ttl_1h));
                }
                _ => {}
            }
            if let Some(k) = top {
                self.scan.fields[k as usize] = Some(v);
            }
        }
        o.hosted_tool = kind
            .as_deref()
            .is_some_and(|t| !matches!(t, "function" | "custom"));
        self.scan
            .count_part(super::openai::part_of_type(kind.as_deref()));
        Ok(Shape::Object(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{adapter_for, ProviderId, QuoteOptions};
    use crate::PriceTable;

    fn quote(body: &[u8]) -> crate::Quote {
        adapter_for(ProviderId::OpenAi)
            .quote(
                &http::Method::POST,
                "/v1/chat/completions",
                &http::HeaderMap::new(),
                body,
                &PriceTable::bundled(),
                &QuoteOptions::none(),
            )
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Fields the quote does not read, however deep and whatever they hold, change nothing but
    /// the body's byte count.
    #[test]
    fn unknown_fields_are_skipped() {
        let plain = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#;
        let noisy = br#"{"x_meta":{"deep":[1,-2,3.5,{"a":null,"b":[true,false]}],"s":"\"q\" \u00e9 \ud83d\ude00"},"model":"gpt-4o-mini","user":"u-1","messages":[{"role":"user","content":"hi","name":"n"}],"metadata":{},"max_tokens":16,"temperature":0.2,"seed":-7}"#;
        let (a, b) = (quote(plain), quote(noisy));
        assert_eq!(a.model, b.model);
        assert_eq!((a.worst_output_tokens, b.worst_output_tokens), (16, 16));
        assert_eq!(
            b.worst_input_tokens - a.worst_input_tokens,
            (noisy.len() - plain.len()) as u64
        );
        assert!(!b.stream && b.body_rewrite.is_none());
    }

    /// Escapes in keys and strings are read as their characters (the owned-copy path).
    #[test]
    fn escaped_names_and_keys_are_unescaped() {
        let q = quote(
            br#"{"model":"gpt\u002d4o\u002dmini","messages":[],"max\u005ftokens":7,"str\u0065am":true,"stream_options":{"include_us\u0061ge":true}}"#,
        );
        assert_eq!(q.model, "gpt-4o-mini");
        assert_eq!(q.worst_output_tokens, 7);
        assert!(q.stream);
        assert!(q.body_rewrite.is_none(), "include_usage was asked already");
        let r = OpenAiRequest::parse(br#"{"model":"\"quoted\"","x":[{"type":"image\u005furl"}]}"#)
            .unwrap();
        assert_eq!(r.model().unwrap(), "\"quoted\"");
        assert_eq!(r.parts.images, 1);
    }

    /// A big conversation is counted without keeping it: every message, every image part.
    #[test]
    fn huge_messages_are_counted() {
        let text = "x".repeat(1000);
        let mut body = String::from(r#"{"model":"gpt-4o-mini","max_tokens":1,"messages":["#);
        for i in 0..10_000 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"role":"user","content":[{{"type":"text","text":"{text}"}},{{"type":"image_url","image_url":{{"url":"u"}}}}]}}"#
            ));
        }
        body.push_str("]}");
        let r = OpenAiRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(
            r.get(Key::Messages)
                .and_then(Shape::as_array)
                .map(|a| a.len),
            Some(10_000)
        );
        assert_eq!(r.parts.images, 10_000);
        let q = quote(body.as_bytes());
        assert_eq!(
            q.worst_input_tokens, q.price.context_window,
            "capped at the window"
        );
    }

    #[test]
    fn repeated_keys_read_the_last_one() {
        let r = OpenAiRequest::parse(
            br#"{"model":"a","model":"b","max_tokens":5,"max_tokens":9,"stream":true,"stream":false}"#,
        )
        .unwrap();
        assert_eq!(r.model().unwrap(), "b");
        assert_eq!(r.count(Key::MaxTokens), Ok(Some(9)));
        assert_eq!(r.get(Key::Stream), Some(&Shape::Bool(false)));
    }

    #[test]
    fn counts_read_as_count_field_does() {
        let r = OpenAiRequest::parse(br#"{"n":3,"best_of":100.0,"max_tokens":-1,"max_completion_tokens":"7","max_output_tokens":1.5}"#)
            .unwrap();
        assert_eq!(r.count(Key::N), Ok(Some(3)));
        assert_eq!(r.count(Key::BestOf), Ok(Some(100)));
        assert_eq!(r.count(Key::Prompt), Ok(None));
        for k in [
            Key::MaxTokens,
            Key::MaxCompletionTokens,
            Key::MaxOutputTokens,
        ] {
            let e = r.count(k).unwrap_err().to_string();
            assert!(e.contains(k.name()), "{e}");
        }
    }

    /// `type`, `cache_control`, `ttl`, `mode` and `include_usage` are read at any depth,
    /// the way `count_parts` and `cache_write_request` read them from a `Value`.
    #[test]
    fn tree_facts_match_the_value_walk() {
        let bodies: [&[u8]; 5] = [
            br#"{"messages":[{"content":[{"type":"input_audio"},{"type":"file","file":{"type":"image_url"}}]}],"type":"text"}"#,
            br#"{"system":[{"cache_control":{"type":"ephemeral","ttl":"1h"}}],"m":{"cache_control":null}}"#,
            br#"{"a":{"cache_control":true},"b":[[{"type":"input_image"}]]}"#,
            br#"{"prediction":{"type":"content","content":[{"type":"image_url"}]},"cache_control":{}}"#,
            br#"{"type":"image_url","tools":[{"type":"web_search"},{"name":"f"},{"type":7}]}"#,
        ];
        for body in bodies {
            let v: Value = serde_json::from_slice(body).unwrap();
            let want = count_parts(&v, &|m| super::super::openai::classify_part(m));
            let r = OpenAiRequest::parse(body).unwrap();
            let got = r.parts;
            let name = String::from_utf8_lossy(body);
            assert_eq!(
                (got.images, got.audio, got.unbounded),
                (want.images, want.audio, want.unbounded),
                "{name}"
            );
            assert_eq!(r.cache_write, cache_write_request(&v), "{name}");
        }
        let r = OpenAiRequest::parse(
            br#"{"tools":[{"type":"function"},{"type":"custom"},{"type":7},3]}"#,
        )
        .unwrap();
        assert!(
            !r.get(Key::Tools)
                .and_then(Shape::as_array)
                .unwrap()
                .hosted_tool
        );
        let r = OpenAiRequest::parse(br#"{"tools":[{"type":"function"},{"type":"web_search"}],"search_parameters":{"mode":"off"}}"#).unwrap();
        assert!(
            r.get(Key::Tools)
                .and_then(Shape::as_array)
                .unwrap()
                .hosted_tool
        );
        assert!(
            r.get(Key::SearchParameters)
                .and_then(Shape::as_object)
                .unwrap()
                .mode_off
        );
        let r =
            OpenAiRequest::parse(br#"{"prediction":{"type":"content","content":"a b"}}"#).unwrap();
        assert_eq!(
            r.prediction_len,
            Some(r#"{"content":"a b","type":"content"}"#.len() as u64)
        );
    }

    #[test]
    fn bad_bodies_keep_their_errors() {
        let e = OpenAiRequest::parse(b"[1,2]").unwrap_err().to_string();
        assert!(e.contains("JSON but not an object"), "{e}");
        let e = OpenAiRequest::parse(b"{\"model\":\n\"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON (line 2"), "{e}");
        let e = OpenAiRequest::parse(b"{} x").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = OpenAiRequest::parse(format!(r#"{{"a":{deep}}}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = OpenAiRequest::parse(br#"{"model":" "}"#)
            .unwrap()
            .model()
            .unwrap_err();
        assert!(e.to_string().contains("non-empty string"), "{e}");
        let e = OpenAiRequest::parse(br#"{}"#).unwrap().model().unwrap_err();
        assert!(e.to_string().contains("names no 'model'"), "{e}");
    }
}
