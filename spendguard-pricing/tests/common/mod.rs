//! The shared provider test suite: every check here runs against every provider (see the
//! `provider_suite!` macro in `tests/providers.rs`).

#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers: a panic with its message is how a check fails"
)]

pub mod fixtures;

use std::collections::HashMap;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use spendguard_pricing::{
    adapter_for, PriceTable, PricingError, ProviderId, Quote, QuoteOptions, Route, Usage,
};

/// One provider's fixtures and expectations.
#[derive(Clone, Debug)]
pub struct Case {
    pub provider: ProviderId,
    /// Priced path of `request` (non-streamed, no output limit).
    pub path: &'static str,
    pub request: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    pub json_response: &'static str,
    pub json_usage: Usage,
    /// Priced path of `stream_request` (streamed, with an output limit).
    pub stream_path: &'static str,
    pub stream_request: &'static str,
    pub sse: &'static str,
    pub sse_usage: Usage,
    /// A substring of the event that completes usage: a stream cut before it has no usage.
    pub sse_final_marker: &'static str,
    /// The usage chunk the provider sends because we injected `include_usage`.
    pub injected_chunk: Option<&'static str>,
    /// JSON pointer of the output limit an output cap writes into `request`.
    pub limit_pointer: &'static str,
    /// Output multiplier of `request` (n, candidateCount).
    pub choices: u64,
    /// Whether the written cap bounds the output (not for xAI, whose reasoning is outside it).
    pub cap_bounds_output: bool,
    /// A path and body naming a model the table does not price.
    pub unknown_model: (&'static str, &'static str, &'static str),
    pub unpriced: &'static [(&'static str, &'static str)],
    pub free: &'static [(&'static str, &'static str)],
}

pub fn prices() -> &'static PriceTable {
    static T: OnceLock<PriceTable> = OnceLock::new();
    T.get_or_init(PriceTable::bundled)
}

pub fn deployments() -> &'static HashMap<String, String> {
    static D: OnceLock<HashMap<String, String>> = OnceLock::new();
    D.get_or_init(|| HashMap::from([("prod-4o".to_string(), "gpt-4o".to_string())]))
}

pub fn opts(cap: Option<u64>) -> QuoteOptions<'static> {
    QuoteOptions {
        output_cap: cap,
        azure_deployments: deployments(),
    }
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

pub fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

pub fn try_quote(
    id: ProviderId,
    path: &str,
    body: &str,
    hdrs: &[(&str, &str)],
    cap: Option<u64>,
) -> Result<Quote, PricingError> {
    adapter_for(id).quote(
        &Method::POST,
        path,
        &headers(hdrs),
        body.as_bytes(),
        prices(),
        &opts(cap),
    )
}

pub fn quote(
    id: ProviderId,
    path: &str,
    body: &str,
    hdrs: &[(&str, &str)],
    cap: Option<u64>,
) -> Quote {
    try_quote(id, path, body, hdrs, cap).unwrap_or_else(|e| panic!("{id} {path}: {e}"))
}

/// Feeds `body` through a tap in the given pieces: (bytes forwarded, usage).
pub fn run_tap(
    q: &Quote,
    status: u16,
    content_type: &str,
    pieces: &[&[u8]],
) -> (Vec<u8>, Option<Usage>) {
    let mut tap = q.response_tap(status, Some(content_type));
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&tap.on_chunk(p));
    }
    let (rest, usage) = tap.finish();
    out.extend_from_slice(&rest);
    (out, usage)
}

/// Splits `body` at the given cut points (clamped, sorted).
pub fn split_at<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        pieces.push(&body[at..c]);
        at = c;
    }
    pieces.push(&body[at..]);
    pieces
}

fn json(s: &[u8]) -> Value {
    serde_json::from_slice(s).unwrap()
}

fn stream_quote(c: &Case) -> Quote {
    quote(c.provider, c.stream_path, c.stream_request, c.headers, None)
}

/// What the client must receive for the case's SSE fixture.
pub fn expected_client_bytes(c: &Case) -> Vec<u8> {
    match c.injected_chunk {
        Some(chunk) => {
            assert!(
                c.sse.contains(chunk),
                "fixture: injected chunk not in stream"
            );
            c.sse.replacen(chunk, "", 1).into_bytes()
        }
        None => c.sse.as_bytes().to_vec(),
    }
}

// ------------------------------------------------------------------------------- the checks

pub fn check_routes(c: &Case) {
    let a = adapter_for(c.provider);
    assert_eq!(a.id(), c.provider);
    assert_eq!(a.route(&Method::POST, c.path), Route::Priced, "{}", c.path);
    assert_eq!(
        a.route(&Method::POST, c.stream_path),
        Route::Priced,
        "{}",
        c.stream_path
    );
    for (m, p) in c.unpriced {
        assert!(
            matches!(a.route(&method(m), p), Route::Unpriced { .. }),
            "{m} {p} should be unpriced"
        );
        let err = a
            .quote(
                &method(m),
                p,
                &HeaderMap::new(),
                b"{}",
                prices(),
                &opts(None),
            )
            .unwrap_err();
        assert!(matches!(err, PricingError::NotPricedRoute { .. }), "{err}");
    }
    for (m, p) in c.free {
        assert_eq!(
            a.route(&method(m), p),
            Route::Free,
            "{m} {p} should be free"
        );
    }
    // Fail closed on the unknown, open on reads.
    assert!(matches!(
        a.route(&Method::POST, "/v9/never/heard/of"),
        Route::Unpriced { .. }
    ));
    assert!(matches!(
        a.route(&Method::PUT, "/whatever"),
        Route::Unpriced { .. }
    ));
    assert_eq!(a.route(&Method::GET, "/v9/never/heard/of"), Route::Free);
    assert_eq!(a.route(&Method::HEAD, "/"), Route::Free);
}

pub fn check_json_usage(c: &Case) {
    let q = quote(c.provider, c.path, c.request, c.headers, None);
    let body = c.json_response.as_bytes();
    let (out, usage) = run_tap(
        &q,
        200,
        "application/json",
        &split_at(body, &[1, body.len() / 2]),
    );
    assert_eq!(out, body, "a JSON body is forwarded unchanged");
    assert_eq!(usage, Some(c.json_usage));
    // The same with no content type and in one piece.
    let mut tap = q.response_tap(200, None);
    assert_eq!(&tap.on_chunk(body)[..], body);
    assert_eq!(tap.finish().1, Some(c.json_usage));
}

pub fn check_worst_case_bounds_real_cost(c: &Case) {
    for (path, request, usage) in [
        (c.path, c.request, c.json_usage),
        (c.stream_path, c.stream_request, c.sse_usage),
    ] {
        let q = quote(c.provider, path, request, c.headers, None);
        let (_, price) = prices().lookup(&q.model).unwrap();
        assert_eq!(price, &q.price);
        let real = q.price.cost(&usage);
        assert!(
            q.worst_case >= real,
            "{path}: worst {} < real {}",
            q.worst_case,
            real
        );
        assert!(
            q.worst_input_tokens >= usage.total_input(),
            "{path}: input bound {} < {}",
            q.worst_input_tokens,
            usage.total_input()
        );
        assert!(
            q.worst_output_tokens >= usage.output,
            "{path}: output bound {} < {}",
            q.worst_output_tokens,
            usage.output
        );
        assert!(q.worst_input_tokens <= q.price.context_window.max(1_000_000) * 2048);
        assert!(real.0 > 0, "{path}: fixture usage should cost something");
    }
}

pub fn check_sse_every_split(c: &Case) {
    let q = stream_quote(c);
    assert!(q.stream);
    let body = c.sse.as_bytes();
    let want = expected_client_bytes(c);
    let (out, usage) = run_tap(&q, 200, "text/event-stream; charset=utf-8", &[body]);
    assert_eq!(usage, Some(c.sse_usage), "whole stream");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want)
    );
    for cut in 0..=body.len() {
        let (out, usage) = run_tap(&q, 200, "text/event-stream", &[&body[..cut], &body[cut..]]);
        assert_eq!(usage, Some(c.sse_usage), "split at {cut}");
        assert_eq!(out, want, "split at {cut}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let (out, usage) = run_tap(&q, 200, "text/event-stream", &bytes);
    assert_eq!((out, usage), (want, Some(c.sse_usage)), "byte by byte");
}

pub fn check_random_splits(c: &Case, cuts: &[usize]) {
    let q = stream_quote(c);
    let body = c.sse.as_bytes();
    let (out, usage) = run_tap(&q, 200, "text/event-stream", &split_at(body, cuts));
    assert_eq!(usage, Some(c.sse_usage));
    assert_eq!(out, expected_client_bytes(c));
}

pub fn check_truncated_streams(c: &Case) {
    let q = stream_quote(c);
    let body = c.sse.as_bytes();
    let marker = c
        .sse
        .find(c.sse_final_marker)
        .expect("fixture: final marker not in stream");
    for cut in 0..body.len() {
        let (out, usage) = run_tap(&q, 200, "text/event-stream", &[&body[..cut]]);
        if cut <= marker {
            assert_eq!(usage, None, "usage from a stream cut at {cut}");
        }
        match c.injected_chunk {
            None => assert_eq!(out, &body[..cut], "bytes of a cut stream pass unchanged"),
            Some(chunk) => {
                let u_start = c.sse.find(chunk).unwrap();
                let u_end = u_start + chunk.len();
                if cut <= u_start {
                    assert_eq!(out, &body[..cut], "cut at {cut}");
                } else if cut >= u_end {
                    assert_eq!(
                        out,
                        [&body[..u_start], &body[u_end..cut]].concat(),
                        "cut at {cut}"
                    );
                } else {
                    // Cut inside the usage chunk: forwarded as the incomplete event it is (which
                    // SSE clients discard), or already dropped once its blank line was seen.
                    assert!(out == body[..cut] || out == body[..u_start], "cut at {cut}");
                }
            }
        }
    }
    // Truncated JSON.
    let jq = quote(c.provider, c.path, c.request, c.headers, None);
    let jb = c.json_response.as_bytes();
    for cut in [0, 1, jb.len() / 3, jb.len() - 1] {
        assert_eq!(
            run_tap(&jq, 200, "application/json", &[&jb[..cut]]).1,
            None,
            "json cut at {cut}"
        );
    }
}

pub fn check_malformed_bodies(c: &Case) {
    let jq = quote(c.provider, c.path, c.request, c.headers, None);
    let sq = stream_quote(c);
    let garbage: [&[u8]; 7] = [
        b"\xff\xfe\x00garbage",
        b"<html>502 Bad Gateway</html>",
        b"{\"usage\": \"lots\"}",
        b"{\"usage\": {\"prompt_tokens\": -5, \"input_tokens\": 1.5}}",
        b"[[[[[[[[[[[[[[[[",
        b"data: {\"usage\":\n\ndata: [DONE\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":7}\n\n",
        b"",
    ];
    for g in garbage {
        assert_eq!(
            run_tap(&jq, 200, "application/json", &[g]).1,
            None,
            "{:?}",
            String::from_utf8_lossy(g)
        );
        let (out, usage) = run_tap(&sq, 200, "text/event-stream", &[g]);
        assert_eq!(usage, None, "{:?}", String::from_utf8_lossy(g));
        if c.injected_chunk.is_none() {
            assert_eq!(out, g);
        }
    }
    // Bad requests are refused with a message that names no body content.
    for bad in ["", "[]", "{\"model\": 5}", "{not json", "{\"model\":\"gpt-4o\",\"max_tokens\":-1,\"max_output_tokens\":-1,\"generationConfig\":{\"maxOutputTokens\":\"x\"}}"] {
        match try_quote(c.provider, c.path, bad, c.headers, None) {
            Err(PricingError::MalformedBody { detail }) => assert!(!detail.contains("not json")),
            Err(PricingError::UnknownModel { .. }) => {}
            other => panic!("{bad:?} -> {other:?}"),
        }
    }
}

pub fn check_errors_are_not_billed(c: &Case) {
    let q = stream_quote(c);
    let err = br#"{"error":{"message":"Rate limit reached","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#;
    for status in [400, 401, 404, 429, 500, 529] {
        for ct in ["application/json", "text/event-stream"] {
            let (out, usage) = run_tap(&q, status, ct, &[&err[..10], &err[10..]]);
            assert_eq!(out, err.to_vec());
            assert_eq!(usage, Some(Usage::default()), "{status} {ct}");
        }
    }
}

pub fn check_unknown_model(c: &Case) {
    let (path, body, name) = c.unknown_model;
    match try_quote(c.provider, path, body, c.headers, None) {
        Err(PricingError::UnknownModel { model }) => {
            assert_eq!(model, name);
            let msg = PricingError::UnknownModel { model }.to_string();
            assert!(msg.contains(name) && msg.contains("price"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

pub fn check_output_cap_rewrite(c: &Case) {
    let plain = quote(c.provider, c.path, c.request, c.headers, None);
    assert!(plain.body_rewrite.is_none(), "no cap, no rewrite");
    let model_max = plain.price.max_output_tokens;
    assert_eq!(
        plain.worst_output_tokens,
        model_max * c.choices,
        "no limit: the model's maximum"
    );

    let q = quote(c.provider, c.path, c.request, c.headers, Some(123));
    let new = q
        .body_rewrite
        .clone()
        .expect("a cap must be written into the request");
    let mut got = json(&new);
    let want = json(c.request.as_bytes());
    assert_eq!(
        got.pointer(c.limit_pointer),
        Some(&Value::from(123u64)),
        "{}",
        String::from_utf8_lossy(&new)
    );
    if c.cap_bounds_output {
        assert_eq!(q.worst_output_tokens, 123 * c.choices);
        assert!(q.worst_case < plain.worst_case || model_max <= 123);
    } else {
        assert_eq!(q.worst_output_tokens, model_max * c.choices);
    }
    // Everything else is intact: remove what we added and compare.
    let (parent, leaf) = c.limit_pointer.rsplit_once('/').unwrap();
    got.pointer_mut(if parent.is_empty() { "" } else { parent })
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(leaf);
    if !parent.is_empty() && want.pointer(parent).is_none() {
        let (pp, pl) = parent.rsplit_once('/').unwrap();
        got.pointer_mut(pp)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(pl);
    }
    assert_eq!(got, want);
    // Byte-level: the original body's bytes survive in order (only an insertion was made).
    let orig = c.request.as_bytes();
    assert!(new.len() > orig.len());
    let mut it = new.iter();
    assert!(
        orig.iter().all(|b| it.any(|x| x == b)),
        "original bytes kept in order"
    );

    // A cap above the model's maximum is clamped to it.
    let big = quote(c.provider, c.path, c.request, c.headers, Some(u64::MAX / 4));
    assert_eq!(
        json(&big.body_rewrite.unwrap()).pointer(c.limit_pointer),
        Some(&Value::from(model_max))
    );
}

pub fn check_stream_rewrite(c: &Case) {
    let q = stream_quote(c);
    match c.injected_chunk {
        Some(_) => {
            let new = json(
                &q.body_rewrite
                    .clone()
                    .expect("include_usage must be injected"),
            );
            assert_eq!(
                new.pointer("/stream_options/include_usage"),
                Some(&Value::Bool(true))
            );
            let mut new = new;
            new.as_object_mut().unwrap().remove("stream_options");
            assert_eq!(new, json(c.stream_request.as_bytes()));
        }
        None => assert!(
            q.body_rewrite.is_none(),
            "{:?}",
            q.body_rewrite.map(String::from_utf8)
        ),
    }
}
