#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: any failure should abort loudly"
)]
#![expect(
    unsafe_code,
    reason = "a counting global allocator (GlobalAlloc is an unsafe trait); it only forwards to System"
)]
//! The request path's pricing pieces, per call: the quote of the bench's chat request (plain and
//! streamed) and of a 2.3 KB one (how the quote grows with the body), and the usage tap over a JSON answer and over a 20-chunk SSE stream, per chunk.
//! `cargo bench -p spendguard-pricing --bench hot` (criterion: time per call, regressions against
//! the last run). Before criterion runs, each piece's heap allocations per call are counted with a
//! counting global allocator and printed — deterministic, unlike the time, so a fix shows in them
//! even on a noisy machine. Nothing is asserted.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spendguard_pricing::*;

#[path = "../../spendguard-ledger/benches/support/counting_alloc.rs"]
mod counting_alloc;

/// Heap allocations (and bytes) per call of `f`, averaged over `n` calls.
fn count(name: &str, n: u64, mut f: impl FnMut()) {
    f(); // lazily initialised statics are not the steady state
    let start = counting_alloc::counted();
    for _ in 0..n {
        f();
    }
    let (a, b) = counting_alloc::per(start, n);
    println!("allocations {name}: {a:.1} per call, {b:.0} bytes per call");
}

/// The bench's request (xtask/src/bin/sg-load.rs).
const CHAT: &[u8] =
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;
const CHAT_STREAM: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16,"stream":true}"#;
/// What the fake provider answers (tests/src/fake_provider.rs, chat).
const ANSWER: &[u8] = br#"{"id":"chatcmpl-fake","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the fake provider."},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":10}}}"#;

/// A 20-chunk SSE answer, one event per network chunk, the usage chunk last.
fn sse_chunks() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..19)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    out.push(
        b"data: {\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20,\"total_tokens\":120}}\n\ndata: [DONE]\n\n"
            .to_vec(),
    );
    out
}

/// A bigger chat request: a system prompt, 10 turns (one with an image part), 2 tools.
fn chat_big() -> Vec<u8> {
    let mut messages = vec![
        r#"{"role":"system","content":"You are a careful assistant. Answer briefly."}"#.to_string(),
    ];
    for i in 0..10 {
        messages.push(format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"Question {i}: what is in this picture, and why?"}}{}]}}"#,
            if i == 9 { r#",{"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"low"}}"# } else { "" }
        ));
        messages.push(format!(
            r#"{{"role":"assistant","content":"Answer {i}: a cat, because it has whiskers."}}"#
        ));
    }
    let tool = |n: &str| {
        format!(
            r#"{{"type":"function","function":{{"name":"{n}","description":"Looks things up.","parameters":{{"type":"object","properties":{{"q":{{"type":"string"}}}},"required":["q"]}}}}}}"#
        )
    };
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{}],"tools":[{},{}],"temperature":0.2,"max_tokens":256,"user":"u-42"}}"#,
        messages.join(","),
        tool("search"),
        tool("fetch")
    )
    .into_bytes()
}

fn quote(body: &[u8], prices: &PriceTable, headers: &http::HeaderMap) -> Quote {
    let adapter = adapter_for(ProviderId::OpenAi);
    adapter
        .quote(
            &http::Method::POST,
            "/v1/chat/completions",
            headers,
            body,
            prices,
            &QuoteOptions::none(),
        )
        .unwrap()
}

fn tap_json(q: &Quote) -> Option<Usage> {
    let mut tap = q.response_tap(200, Some("application/json"));
    black_box(tap.on_chunk(ANSWER));
    tap.finish().1
}

fn tap_sse(q: &Quote, chunks: &[Vec<u8>]) -> Option<Usage> {
    let mut tap = q.response_tap(200, Some("text/event-stream"));
    for c in chunks {
        black_box(tap.on_chunk(c));
    }
    tap.finish().1
}

fn benches(c: &mut Criterion) {
    let prices = PriceTable::bundled();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let q = quote(CHAT, &prices, &headers);
    let qs = quote(CHAT_STREAM, &prices, &headers);
    let chunks = sse_chunks();
    assert!(tap_json(&q).is_some() && tap_sse(&qs, &chunks).is_some());

    count("quote (chat, 93-byte body)", 1000, || {
        black_box(quote(CHAT, &prices, &headers));
    });
    let big = chat_big();
    count(
        &format!(
            "quote (chat, {}-byte body: 21 messages, an image, 2 tools)",
            big.len()
        ),
        1000,
        || {
            black_box(quote(&big, &prices, &headers));
        },
    );
    count("quote (chat, stream: usage injected)", 1000, || {
        black_box(quote(CHAT_STREAM, &prices, &headers));
    });
    count("usage tap (JSON answer, one chunk + finish)", 1000, || {
        black_box(tap_json(&q));
    });
    count("usage tap (SSE, 20 chunks + finish)", 1000, || {
        black_box(tap_sse(&qs, &chunks));
    });

    c.bench_function("quote/chat", |b| {
        b.iter(|| quote(black_box(CHAT), &prices, &headers))
    });
    c.bench_function("quote/chat_big", |b| {
        b.iter(|| quote(black_box(&big), &prices, &headers))
    });
    c.bench_function("quote/chat_stream", |b| {
        b.iter(|| quote(black_box(CHAT_STREAM), &prices, &headers))
    });
    c.bench_function("usage_tap/json", |b| b.iter(|| tap_json(&q)));
    let mut g = c.benchmark_group("usage_tap/sse_20_chunks");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("per_stream", |b| b.iter(|| tap_sse(&qs, &chunks)));
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);
