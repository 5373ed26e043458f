//! Google Vertex AI: Gemini generateContent / streamGenerateContent and Claude rawPredict /
//! streamRawPredict on recorded-format bodies.

use http::{HeaderMap, HeaderValue, Method};
use spendguard_pricing::{
    adapter_for, PriceTable, PricingError, ProviderId, Quote, QuoteOptions, Usage,
};

const BASE: &str = "/v1/projects/my-proj/locations/us-east5/publishers";

fn quote(path: &str, body: &str, opts: &QuoteOptions) -> Result<Quote, PricingError> {
    adapter_for(ProviderId::Vertex).quote(
        &Method::POST,
        path,
        &HeaderMap::new(),
        body.as_bytes(),
        &PriceTable::bundled(),
        opts,
    )
}

fn usage_of(q: &Quote, content_type: &'static str, body: &str, step: usize) -> Option<Usage> {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static(content_type));
    let mut tap = q.response_tap_for(200, &h);
    let mut out = Vec::new();
    for c in body.as_bytes().chunks(step) {
        out.extend_from_slice(&tap.on_chunk(c));
    }
    let (rest, u) = tap.finish();
    out.extend_from_slice(&rest);
    assert_eq!(out, body.as_bytes(), "forwarded unchanged");
    u
}

const CLAUDE_BODY: &str = r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":256,"messages":[{"role":"user","content":"Hello"}]}"#;

#[test]
fn claude_raw_predict_prices_as_the_anthropic_model_and_reads_its_usage() {
    let q = quote(
        &format!("{BASE}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
        CLAUDE_BODY,
        &QuoteOptions::none(),
    );
    let q = q.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.model, "claude-sonnet-4-5");
    assert_eq!(q.worst_output_tokens, 256);
    assert!(!q.stream);
    let answer = r#"{"id":"msg_vrtx_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":300,"output_tokens":6}}"#;
    for step in [1, 9, answer.len()] {
        assert_eq!(
            usage_of(&q, "application/json", answer, step),
            Some(Usage {
                input_uncached: 12,
                input_cached: 300,
                output: 6,
                ..Usage::default()
            })
        );
    }
    // No max_tokens and an output cap: the cap is written (Vertex bodies are not signed).
    let capped = QuoteOptions {
        output_cap: Some(100),
        ..QuoteOptions::none()
    };
    let q = quote(
        &format!("{BASE}/anthropic/models/claude-haiku-4-5@20251001:rawPredict"),
        r#"{"anthropic_version":"vertex-2023-10-16","messages":[{"role":"user","content":"Hello"}]}"#,
        &capped,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.worst_output_tokens, 100);
    let rewritten = q.body_rewrite.expect("cap written");
    assert!(String::from_utf8_lossy(&rewritten).contains("\"max_tokens\":100"));
}

#[test]
fn claude_stream_raw_predict_takes_the_cumulative_delta() {
    let q = quote(
        &format!("{BASE}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
        r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Hello"}]}"#,
        &QuoteOptions::none(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(q.stream);
    let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_vrtx_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    for step in [1, 5, 64, sse.len()] {
        assert_eq!(
            usage_of(&q, "text/event-stream", sse, step),
            Some(Usage {
                input_uncached: 20,
                output: 15,
                ..Usage::default()
            }),
            "step {step}"
        );
    }
    let cut = sse.find("event: message_delta").unwrap_or(0);
    assert_eq!(usage_of(&q, "text/event-stream", &sse[..cut], 7), None);
}

#[test]
fn gemini_on_vertex_reads_usage_metadata() {
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"Hello"}]}],"generationConfig":{"maxOutputTokens":128}}"#;
    let q = quote(
        &format!("{BASE}/google/models/gemini-2.5-flash:generateContent"),
        body,
        &QuoteOptions::none(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.worst_output_tokens, 128);
    let answer = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"thoughtsTokenCount":10,"totalTokenCount":21,"trafficType":"ON_DEMAND"},"modelVersion":"gemini-2.5-flash","createTime":"2026-12-03T08:00:00Z","responseId":"abc"}"#;
    assert_eq!(
        usage_of(&q, "application/json", answer, 11),
        Some(Usage {
            input_uncached: 8,
            output: 13,
            reasoning: 10,
            ..Usage::default()
        })
    );
    let q = quote(
        &format!("{BASE}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        body,
        &QuoteOptions::none(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sse = "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":8,\"trafficType\":\"ON_DEMAND\"}}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":2,\"totalTokenCount\":10,\"trafficType\":\"ON_DEMAND\"}}\r\n\r\n";
    assert_eq!(
        usage_of(&q, "text/event-stream", sse, 13),
        Some(Usage {
            input_uncached: 8,
            output: 2,
            ..Usage::default()
        })
    );
}

#[test]
fn unknown_and_unpriced_vertex_calls_are_refused() {
    let e = quote(
        &format!("{BASE}/anthropic/models/claude-unheard-of@20990101:rawPredict"),
        CLAUDE_BODY,
        &QuoteOptions::none(),
    )
    .err();
    assert!(
        matches!(e, Some(PricingError::UnknownModel { .. })),
        "{e:?}"
    );
    let e = quote(
        &format!("{BASE}/meta/models/llama-4-maverick-17b-128e-instruct-maas:rawPredict"),
        "{}",
        &QuoteOptions::none(),
    )
    .err();
    assert!(
        matches!(e, Some(PricingError::NotPricedRoute { .. })),
        "{e:?}"
    );
    // Hosted tools on Vertex Gemini are refused as on the Gemini API.
    let e = quote(
        &format!("{BASE}/google/models/gemini-2.5-flash:generateContent"),
        r#"{"contents":[{"parts":[{"text":"hi"}]}],"tools":[{"googleSearch":{}}]}"#,
        &QuoteOptions::none(),
    )
    .err();
    assert!(matches!(e, Some(PricingError::Unpriced { .. })), "{e:?}");
}
