//! Usage extraction from response bodies (JSON and SSE), split at arbitrary points: never panics,
//! and a tap that does not filter forwards every byte unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendguard_pricing::providers::{adapter_for, QuoteOptions};
use spendguard_pricing::PriceTable;

#[path = "common.rs"]
mod common;

const STREAM_BODIES: [&[u8]; 4] = [
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#,
    br#"{"model":"claude-sonnet-4-5","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
    br#"{"model":"gpt-4o-mini","input":"hi","stream":true,"max_output_tokens":5}"#,
];

fuzz_target!(|data: &[u8]| {
    thread_local!(static PRICES: PriceTable = PriceTable::bundled());
    let Some((provider, path, rest)) = common::pick(data) else { return };
    let Some((&split, response)) = rest.split_first() else { return };
    let adapter = adapter_for(provider);
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    let body = STREAM_BODIES[(split as usize) % STREAM_BODIES.len()];
    let Ok(quote) = PRICES.with(|p| adapter.quote(&http::Method::POST, path, &headers, body, p, &QuoteOptions::none())) else {
        return;
    };
    for content_type in [Some("text/event-stream"), Some("application/json"), None] {
        let mut tap = quote.response_tap(200, content_type);
        let mut out = Vec::new();
        // Feed in chunks whose size the input chooses.
        let step = 1 + (split as usize % 64);
        for chunk in response.chunks(step) {
            out.extend_from_slice(&tap.on_chunk(chunk));
        }
        let (rest, _usage) = tap.finish();
        out.extend_from_slice(&rest);
        if quote.body_rewrite.is_none() {
            assert_eq!(out, response, "an unfiltered tap altered the body");
        }
    }
});
