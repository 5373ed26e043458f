//! Minimal, byte-preserving edits of a JSON request body.
//!
//! Re-serialising a parsed body would reorder keys and could change numbers (a 20-digit seed, a
//! float's spelling), so edits are splices: a member's value is replaced in place, or a new member
//! is inserted right after an object's `{`. Every other byte stays as the client sent it. Callers
//! validate the body with serde_json first; the scanner still never panics on bad input (it
//! returns `None`).

/// One member of a JSON object: its decoded key (borrowed from the body unless it has escapes)
/// and the byte span of its value.
#[derive(Debug, Clone)]
pub(crate) struct Member<'a> {
    pub key: std::borrow::Cow<'a, str>,
    pub value_start: usize,
    pub value_end: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// `i` at an opening quote: the index just past the closing quote.
fn skip_string(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match s.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// `i` at the first byte of a value: the index just past it.
fn skip_value(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i)? {
        b'"' => skip_string(s, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match s.get(j)? {
                    b'"' => {
                        j = skip_string(s, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&b) = s.get(j) {
                if is_ws(b) || matches!(b, b',' | b'}' | b']') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of the object whose `{` is at `open` (after optional whitespace).
pub(crate) fn members(s: &[u8], open: usize) -> Option<Vec<Member<'_>>> {
    let mut i = skip_ws(s, open);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(s, i + 1);
    let mut out = Vec::new();
    if s.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = skip_string(s, i)?;
        let key = serde::de::DeserializeSeed::deserialize(
            super::json_pick::KeySeed,
            &mut serde_json::Deserializer::from_slice(s.get(i..key_end)?),
        )
        .ok()?;
        i = skip_ws(s, key_end);
        if s.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(s, i + 1);
        let value_end = skip_value(s, value_start)?;
        out.push(Member {
            key,
            value_start,
            value_end,
        });
        i = skip_ws(s, value_end);
        match s.get(i)? {
            b',' => i = skip_ws(s, i + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// An edit to splice into the body: replace `start..end` with `text`.
#[derive(Debug, Clone)]
pub(crate) struct Splice {
    pub start: usize,
    pub end: usize,
    pub text: Vec<u8>,
}

/// Applies non-overlapping splices (in any order).
pub(crate) fn apply(body: &[u8], mut splices: Vec<Splice>) -> Option<Vec<u8>> {
    splices.sort_by_key(|s| s.start);
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0usize;
    for sp in splices {
        if sp.start < at || sp.end < sp.start {
            return None;
        }
        out.extend_from_slice(body.get(at..sp.start)?);
        out.extend_from_slice(&sp.text);
        at = sp.end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

/// Splices that make `key` equal `value_json` in the object at `open`: every existing occurrence
/// is replaced (JSON parsers disagree on duplicate keys, so all of them change); if there is none,
/// the member is inserted first in the object.
pub(crate) fn set_member(
    s: &[u8],
    open: usize,
    key: &str,
    value_json: &str,
) -> Option<Vec<Splice>> {
    let ms = members(s, open)?;
    let hits: Vec<Splice> = ms
        .iter()
        .filter(|m| m.key == key)
        .map(|m| Splice {
            start: m.value_start,
            end: m.value_end,
            text: value_json.as_bytes().to_vec(),
        })
        .collect();
    if !hits.is_empty() {
        return Some(hits);
    }
    Some(vec![insert_member(
        s,
        open,
        key,
        value_json,
        !ms.is_empty(),
    )?])
}

fn insert_member(
    s: &[u8],
    open: usize,
    key: &str,
    value_json: &str,
    non_empty: bool,
) -> Option<Splice> {
    let brace = skip_ws(s, open);
    if s.get(brace) != Some(&b'{') {
        return None;
    }
    let key_json = serde_json::to_string(key).ok()?;
    let mut text = format!("{key_json}:{value_json}").into_bytes();
    if non_empty {
        text.push(b',');
    }
    Some(Splice {
        start: brace + 1,
        end: brace + 1,
        text,
    })
}

/// Splices that set `outer.inner = value_json` in the top-level object: inside every existing
/// `outer` object; replacing an `outer` that is `null` or not an object; or inserting
/// `"outer":{"inner":value}` when there is no `outer` at all. `outer` may have several spellings
/// (Gemini accepts `generationConfig` and `generation_config`); the first is used to insert.
pub(crate) fn set_nested(
    s: &[u8],
    outer: &[&str],
    inner: &str,
    value_json: &str,
) -> Option<Vec<Splice>> {
    let top = members(s, 0)?;
    let mut splices = Vec::new();
    for m in top.iter().filter(|m| outer.contains(&&*m.key)) {
        if s.get(m.value_start) == Some(&b'{') {
            splices.extend(set_member(s, m.value_start, inner, value_json)?);
        } else {
            let key_json = serde_json::to_string(inner).ok()?;
            splices.push(Splice {
                start: m.value_start,
                end: m.value_end,
                text: format!("{{{key_json}:{value_json}}}").into_bytes(),
            });
        }
    }
    if splices.is_empty() {
        let first = outer.first()?;
        let key_json = serde_json::to_string(inner).ok()?;
        splices.push(insert_member(
            s,
            0,
            first,
            &format!("{{{key_json}:{value_json}}}"),
            !top.is_empty(),
        )?);
    }
    Some(splices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn edit(body: &str, f: impl Fn(&[u8]) -> Option<Vec<Splice>>) -> String {
        let b = body.as_bytes();
        String::from_utf8(apply(b, f(b).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn members_are_found_with_their_spans() {
        let s = br#" { "a" : [1, {"x":"}"}], "b\"q":"s", "c": -1.5e3 , "d":null}"#;
        let ms = members(s, 0).unwrap();
        let keys: Vec<_> = ms.iter().map(|m| &*m.key).collect();
        assert_eq!(keys, ["a", "b\"q", "c", "d"]);
        let spans: Vec<_> = ms
            .iter()
            .map(|m| std::str::from_utf8(&s[m.value_start..m.value_end]).unwrap())
            .collect();
        assert_eq!(spans, [r#"[1, {"x":"}"}]"#, r#""s""#, "-1.5e3", "null"]);
    }

    #[test]
    fn set_member_inserts_or_replaces_and_keeps_other_bytes() {
        let body = r#"{"model":"m","seed":123456789012345678901234, "x":1.10}"#;
        let out = edit(body, |b| set_member(b, 0, "max_tokens", "64"));
        assert_eq!(
            out,
            r#"{"max_tokens":64,"model":"m","seed":123456789012345678901234, "x":1.10}"#
        );
        let out = edit(r#"{"max_tokens":null,"a":1}"#, |b| {
            set_member(b, 0, "max_tokens", "9")
        });
        assert_eq!(out, r#"{"max_tokens":9,"a":1}"#);
        assert_eq!(
            edit("{ }", |b| set_member(b, 0, "k", "true")),
            r#"{"k":true }"#
        );
    }

    #[test]
    fn set_nested_handles_every_shape() {
        let cases = [
            (
                r#"{"stream":true}"#,
                json!({"stream":true,"stream_options":{"include_usage":true}}),
            ),
            (
                r#"{"stream_options":null}"#,
                json!({"stream_options":{"include_usage":true}}),
            ),
            (
                r#"{"stream_options":{"include_usage":false,"other":1}}"#,
                json!({"stream_options":{"include_usage":true,"other":1}}),
            ),
            (
                r#"{"stream_options":{}}"#,
                json!({"stream_options":{"include_usage":true}}),
            ),
        ];
        for (body, want) in cases {
            let out = edit(body, |b| {
                set_nested(b, &["stream_options"], "include_usage", "true")
            });
            let got: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn malformed_input_is_refused_not_panicked() {
        for bad in [
            &b""[..],
            b"[",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1,",
            b"{a:1}",
            b"\"s\"",
        ] {
            assert!(
                members(bad, 0).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
