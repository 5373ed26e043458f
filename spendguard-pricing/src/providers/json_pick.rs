//! Reading a few members out of a JSON document without building the rest of it.
//!
//! A non-streamed answer's usage sits in one top-level member (`usage`, Groq's `x_groq`, …), yet
//! parsing the whole answer into a `serde_json::Value` costs an allocation per key, string, array
//! and map node of everything around it — the message text, the choices, the ids: 32 of the bench
//! answer's 36 allocations (benches/hot.rs). [`pick_members`] drives the same `serde_json`
//! parser over the document, keeps only the named top-level members as `Value`s and skips every
//! other one with `IgnoredAny` (syntax is still checked, so a truncated or garbled document still
//! yields nothing, as before). Keys are compared borrowed from the document.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The members of a JSON object document named in `keep` (a repeated key: the last one), as an
/// object `Value`; `None` when the document is not valid JSON or not an object.
pub(crate) fn pick_members(doc: &[u8], keep: &[&str]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(doc);
    let picked = Pick { keep }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    picked.map(Value::Object)
}

struct Pick<'k> {
    keep: &'k [&'k str],
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Option<Map<String, Value>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if self.keep.contains(&&*key) {
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }

    // Any other document: valid, but no object to pick from (its contents are still checked).
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object key, borrowed from the document unless it has escapes (then unescaped, owned).
pub(crate) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_named_members() {
        let doc = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {}"}}],"usage":{"prompt_tokens":3},"x_groq":null,"usage":{"prompt_tokens":4}}"#;
        assert_eq!(
            pick_members(doc, &["usage", "x_groq"]),
            Some(json!({"usage": {"prompt_tokens": 4}, "x_groq": null}))
        );
        assert_eq!(pick_members(doc, &[]), Some(json!({})));
        assert_eq!(
            pick_members(br#"{"us\u0061ge":{"a":1}}"#, &["usage"]),
            Some(json!({"usage": {"a": 1}}))
        );
    }

    #[test]
    fn invalid_or_non_object_documents_yield_nothing() {
        for doc in [
            &b"[1,{\"usage\":{}}]"[..],
            b"7",
            b"\"usage\"",
            b"null",
            br#"{"usage":{"a":1}"#,
            br#"{"usage":{"a":1}} trailing"#,
            br#"{"other":[1,2,}],"usage":{"a":1}}"#,
            b"",
        ] {
            assert_eq!(
                pick_members(doc, &["usage"]),
                None,
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }
}
