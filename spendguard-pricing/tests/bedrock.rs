//! AWS Bedrock Runtime: Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream
//! on recorded-format bodies (the shapes of AWS's API reference and the SDKs' types).

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests: a panic with its message is how a check fails"
)]

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};
use spendguard_pricing::eventstream::encode;
use spendguard_pricing::{
    adapter_for, PriceTable, PricingError, ProviderId, Quote, QuoteOptions, Route, Usage,
};

fn prices() -> PriceTable {
    PriceTable::bundled()
}

fn quote_with(path: &str, body: &Value, opts: &QuoteOptions) -> Result<Quote, PricingError> {
    let bytes = serde_json::to_vec(body).unwrap();
    adapter_for(ProviderId::Bedrock).quote(
        &Method::POST,
        path,
        &HeaderMap::new(),
        &bytes,
        &prices(),
        opts,
    )
}

fn quote(path: &str, body: &Value) -> Quote {
    quote_with(path, body, &QuoteOptions::none()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn price_of(key: &str) -> spendguard_pricing::ModelPrice {
    prices()
        .lookup(key)
        .unwrap_or_else(|| panic!("{key} not in the table"))
        .1
        .clone()
}

/// Feeds `bytes` to the quote's tap in pieces of `step` and checks they pass unchanged.
fn tap_usage(q: &Quote, headers: &HeaderMap, bytes: &[u8], step: usize) -> Option<Usage> {
    let mut tap = q.response_tap_for(200, headers);
    let mut out = Vec::new();
    for c in bytes.chunks(step.max(1)) {
        out.extend_from_slice(&tap.on_chunk(c));
    }
    let (rest, usage) = tap.finish();
    out.extend_from_slice(&rest);
    assert_eq!(out, bytes, "the tap must forward every byte unchanged");
    usage
}

fn ct(v: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static(v));
    h
}

fn event(kind: &str, payload: &Value) -> Vec<u8> {
    encode(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

const NOVA: &str = "/model/amazon.nova-pro-v1%3A0";
const SONNET_US: &str = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0";

fn converse_body(max_tokens: Option<u64>) -> Value {
    let mut b = json!({
        "messages": [{"role": "user", "content": [{"text": "Summarise the plot of Hamlet."}]}],
        "system": [{"text": "Be brief."}],
    });
    if let Some(n) = max_tokens {
        b["inferenceConfig"] = json!({"maxTokens": n, "temperature": 0.5});
    }
    b
}

#[test]
fn the_four_operations_are_priced_and_never_rewritten() {
    let a = adapter_for(ProviderId::Bedrock);
    assert_eq!(
        ProviderId::known_host("bedrock-runtime.eu-central-1.amazonaws.com"),
        Some(ProviderId::Bedrock)
    );
    assert_eq!(
        ProviderId::known_host("bedrock-runtime-fips.us-east-1.amazonaws.com"),
        Some(ProviderId::Bedrock)
    );
    assert_eq!(
        ProviderId::known_host("bedrock.us-east-1.amazonaws.com"),
        None
    );
    assert_eq!(
        ProviderId::known_host("bedrock-runtime.a.b.amazonaws.com"),
        None
    );
    let capped = QuoteOptions {
        output_cap: Some(100),
        ..QuoteOptions::none()
    };
    for op in ["converse", "converse-stream"] {
        let path = format!("{NOVA}/{op}");
        assert_eq!(a.route(&Method::POST, &path), Route::Priced);
        let q = quote_with(&path, &converse_body(None), &capped).unwrap();
        assert!(
            q.body_rewrite.is_none(),
            "SigV4-signed bodies are never rewritten"
        );
        let nova = price_of("bedrock/amazon.nova-pro-v1:0");
        assert_eq!(
            q.worst_output_tokens, nova.max_output_tokens,
            "no limit: the model's maximum"
        );
        assert_eq!(q.model, "bedrock/amazon.nova-pro-v1:0");
        assert_eq!(q.stream, op == "converse-stream");
    }
    let q = quote(&format!("{NOVA}/converse"), &converse_body(Some(300)));
    assert_eq!(q.worst_output_tokens, 300);
    let nova = price_of("bedrock/amazon.nova-pro-v1:0");
    assert_eq!(
        q.worst_case,
        nova.worst_case_cost(q.worst_input_tokens, 300, None)
    );
    let body_len = serde_json::to_vec(&converse_body(Some(300))).unwrap().len() as u64;
    assert!(
        q.worst_input_tokens >= body_len,
        "every body byte may be a token"
    );
    for op in ["invoke", "invoke-with-response-stream"] {
        let path = format!("{SONNET_US}/{op}");
        assert_eq!(a.route(&Method::POST, &path), Route::Priced);
        let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1000,
            "messages": [{"role": "user", "content": "hi"}]});
        let q = quote_with(&path, &body, &capped).unwrap();
        assert!(q.body_rewrite.is_none());
        assert_eq!(q.worst_output_tokens, 1000);
    }
}

#[test]
fn inference_profiles_price_as_their_model_or_their_own_key() {
    // us. has its own (dearer) key in the table: that is the price.
    let q = quote(
        &format!("{SONNET_US}/invoke"),
        &json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(
        q.model,
        "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    );
    let base = price_of("bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0");
    assert!(
        q.price.input_per_mtok > base.input_per_mtok,
        "regional uplift kept"
    );
    // A profile without a key of its own prices as its model.
    let q = quote(
        "/model/global.amazon.nova-pro-v1%3A0/converse",
        &converse_body(Some(10)),
    );
    assert_eq!(q.model, "bedrock/amazon.nova-pro-v1:0");
    // A system inference-profile ARN prices as the profile.
    let arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.amazon.nova-pro-v1%3A0";
    let q = quote(&format!("/model/{arn}/converse"), &converse_body(Some(10)));
    assert_eq!(q.model, "bedrock/us.amazon.nova-pro-v1:0");
    // A new Claude on Bedrock without a Bedrock key prices as the Anthropic model.
    let mut t = prices();
    let claude = t.lookup("claude-sonnet-4-5").unwrap().1.clone();
    t.set("claude-future-9", claude.clone());
    let q = adapter_for(ProviderId::Bedrock)
        .quote(
            &Method::POST,
            "/model/eu.anthropic.claude-future-9-20300101-v1%3A0/converse",
            &HeaderMap::new(),
            &serde_json::to_vec(&converse_body(Some(10))).unwrap(),
            &t,
            &QuoteOptions::none(),
        )
        .unwrap();
    assert_eq!(q.model, "claude-future-9");
}

#[test]
fn unknown_models_and_unboundable_requests_are_refused() {
    for id in [
        "amazon.titan-text-express-v1",
        "meta.llama9-1t-instruct-v1%3A0",
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aprovisioned-model%2Fabc123",
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fxyz",
    ] {
        let e = quote_with(
            &format!("/model/{id}/converse"),
            &converse_body(Some(10)),
            &QuoteOptions::none(),
        )
        .unwrap_err();
        assert!(matches!(e, PricingError::UnknownModel { .. }), "{id}: {e}");
    }
    let mut optimized = converse_body(Some(10));
    optimized["performanceConfig"] = json!({"latency": "optimized"});
    let mut guarded = converse_body(Some(10));
    guarded["guardrailConfig"] = json!({"guardrailIdentifier": "g", "guardrailVersion": "1"});
    let mut priority = converse_body(Some(10));
    priority["serviceTier"] = json!({"type": "priority"});
    for body in [optimized, guarded, priority] {
        let e = quote_with(&format!("{NOVA}/converse"), &body, &QuoteOptions::none()).unwrap_err();
        assert!(matches!(e, PricingError::Unpriced { .. }), "{body}: {e}");
    }
    // Content in S3 or a video: the input bound is the context window.
    let s3 = json!({"messages": [{"role": "user", "content": [
        {"text": "what is this"},
        {"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k.png"}}}}]}],
        "inferenceConfig": {"maxTokens": 10}});
    let q = quote(&format!("{NOVA}/converse"), &s3);
    assert_eq!(
        q.worst_input_tokens,
        price_of("bedrock/amazon.nova-pro-v1:0").context_window
    );
    let e = quote_with(
        &format!("{NOVA}/converse"),
        &json!({"messages": "nope"}),
        &QuoteOptions::none(),
    )
    .unwrap_err();
    assert!(matches!(e, PricingError::MalformedBody { .. }), "{e}");
}

#[test]
fn converse_json_usage_and_cache_buckets() {
    let q = quote(&format!("{SONNET_US}/converse"), &converse_body(Some(500)));
    let answer = json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "A prince..."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 30, "outputTokens": 120, "totalTokens": 1350,
                  "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 200},
        "metrics": {"latencyMs": 812}
    });
    let bytes = serde_json::to_vec(&answer).unwrap();
    for step in [1, 7, bytes.len()] {
        let u = tap_usage(&q, &ct("application/json"), &bytes, step).unwrap();
        assert_eq!(
            u,
            Usage {
                input_uncached: 30,
                input_cached: 1000,
                cache_write_5m: 200,
                output: 120,
                ..Usage::default()
            }
        );
    }
    // The worst case covers any answer within its bounds.
    let worst = Usage {
        input_uncached: q.worst_input_tokens,
        output: q.worst_output_tokens,
        ..Usage::default()
    };
    assert!(q.price.cost(&worst) <= q.worst_case);
}

#[test]
fn converse_stream_usage_from_the_metadata_event_at_every_split() {
    let q = quote(
        &format!("{NOVA}/converse-stream"),
        &converse_body(Some(200)),
    );
    let mut wire = event("messageStart", &json!({"role": "assistant"}));
    for t in ["A ", "prince ", "doubts."] {
        wire.extend(event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": t}}),
        ));
    }
    wire.extend(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
    wire.extend(event("messageStop", &json!({"stopReason": "end_turn"})));
    let metadata_at = wire.len();
    wire.extend(event(
        "metadata",
        &json!({"usage": {"inputTokens": 25, "outputTokens": 9, "totalTokens": 34},
                "metrics": {"latencyMs": 300}}),
    ));
    let want = Usage {
        input_uncached: 25,
        output: 9,
        ..Usage::default()
    };
    let h = ct("application/vnd.amazon.eventstream");
    for step in 1..=wire.len() {
        assert_eq!(tap_usage(&q, &h, &wire, step), Some(want), "step {step}");
    }
    // Without a content type the quote still reads the event stream.
    assert_eq!(tap_usage(&q, &HeaderMap::new(), &wire, 13), Some(want));
    // Cut before the metadata event: no usage, the reservation is the charge.
    assert_eq!(tap_usage(&q, &h, &wire[..metadata_at + 20], 64), None);
    // A corrupt frame (bad CRC) after the metadata: the stream is not trusted.
    let mut corrupt = wire.clone();
    corrupt.extend(event("messageStop", &json!({})));
    let at = corrupt.len() - 6;
    corrupt[at] ^= 0xff;
    assert_eq!(tap_usage(&q, &h, &corrupt, 50), None);
    // An exception event carries no usage.
    let mut ex = event("messageStart", &json!({"role": "assistant"}));
    ex.extend(encode(
        &[
            (":exception-type", "throttlingException"),
            (":message-type", "exception"),
        ],
        br#"{"message":"slow down"}"#,
    ));
    assert_eq!(tap_usage(&q, &h, &ex, 50), None);
}

fn chunk(v: &Value) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(v.to_string());
    event("chunk", &json!({"bytes": b64}))
}

#[test]
fn invoke_stream_usage_from_invocation_metrics() {
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
    let q = quote(&format!("{SONNET_US}/invoke-with-response-stream"), &body);
    assert!(q.stream);
    let mut wire = chunk(
        &json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
    );
    wire.extend(chunk(&json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})));
    wire.extend(chunk(
        &json!({"type": "message_delta", "usage": {"output_tokens": 40}}),
    ));
    let last_at = wire.len();
    wire.extend(chunk(
        &json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 12, "outputTokenCount": 40, "invocationLatency": 900,
        "firstByteLatency": 300, "cacheReadInputTokenCount": 500, "cacheWriteInputTokenCount": 0}}),
    ));
    let want = Usage {
        input_uncached: 12,
        input_cached: 500,
        output: 40,
        ..Usage::default()
    };
    let h = ct("application/vnd.amazon.eventstream");
    for step in [1, 3, 17, 100, wire.len()] {
        assert_eq!(tap_usage(&q, &h, &wire, step), Some(want), "step {step}");
    }
    assert_eq!(
        tap_usage(&q, &h, &wire[..last_at], 64),
        None,
        "no metrics yet"
    );
}

#[test]
fn invoke_usage_from_headers_else_the_native_body() {
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300,
        "messages": [{"role": "user", "content": "hi"}]});
    let q = quote(&format!("{SONNET_US}/invoke"), &body);
    let answer = json!({"id": "msg_bdrk_1", "type": "message", "role": "assistant",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 40, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0}});
    let bytes = serde_json::to_vec(&answer).unwrap();
    let h = ct("application/json");
    assert_eq!(
        tap_usage(&q, &h, &bytes, 5),
        Some(Usage {
            input_uncached: 12,
            output: 40,
            ..Usage::default()
        })
    );
    let mut with = h.clone();
    with.insert("x-amzn-bedrock-input-token-count", HeaderValue::from(13u64));
    with.insert(
        "x-amzn-bedrock-output-token-count",
        HeaderValue::from(41u64),
    );
    assert_eq!(
        tap_usage(&q, &with, &bytes, 5),
        Some(Usage {
            input_uncached: 13,
            output: 41,
            ..Usage::default()
        }),
        "the headers are what Bedrock bills"
    );
}

#[test]
fn native_bodies_of_each_family() {
    // Meta Llama: max_gen_len; usage prompt_token_count / generation_token_count.
    let q = quote(
        "/model/meta.llama3-1-70b-instruct-v1%3A0/invoke",
        &json!({"prompt": "<|begin_of_text|>hi", "max_gen_len": 256, "temperature": 0.2}),
    );
    assert_eq!(q.worst_output_tokens, 256);
    let u = tap_usage(
        &q,
        &ct("application/json"),
        br#"{"generation":"Hello","prompt_token_count":9,"generation_token_count":31,"stop_reason":"stop"}"#,
        4,
    );
    assert_eq!(
        u,
        Some(Usage {
            input_uncached: 9,
            output: 31,
            ..Usage::default()
        })
    );
    // Llama 3.2 vision: each image in `images` counts.
    let plain = quote(
        "/model/us.meta.llama3-2-11b-instruct-v1%3A0/invoke",
        &json!({"prompt": "x", "max_gen_len": 10}),
    );
    let vision = quote(
        "/model/us.meta.llama3-2-11b-instruct-v1%3A0/invoke",
        &json!({"prompt": "x", "max_gen_len": 10, "images": ["aGk="]}),
    );
    assert!(vision.worst_input_tokens >= plain.worst_input_tokens + 1000);

    // Mistral: max_tokens; the body carries no usage (the reservation stands unless the headers
    // tell).
    let q = quote(
        "/model/mistral.mistral-large-2407-v1%3A0/invoke",
        &json!({"prompt": "<s>[INST] hi [/INST]", "max_tokens": 64}),
    );
    assert_eq!(q.worst_output_tokens, 64);
    let body = br#"{"outputs":[{"text":"Hello","stop_reason":"stop"}]}"#;
    assert_eq!(tap_usage(&q, &ct("application/json"), body, 8), None);

    // Nova (native): inferenceConfig.max_new_tokens; usage.inputTokens / outputTokens.
    let q = quote(
        "/model/amazon.nova-lite-v1%3A0/invoke",
        &json!({"schemaVersion": "messages-v1",
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "inferenceConfig": {"max_new_tokens": 77}}),
    );
    assert_eq!(q.worst_output_tokens, 77);
    let u = tap_usage(
        &q,
        &ct("application/json"),
        br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":5,"outputTokens":2,"totalTokens":7,"cacheReadInputTokenCount":0,"cacheWriteInputTokenCount":0}}"#,
        3,
    );
    assert_eq!(
        u,
        Some(Usage {
            input_uncached: 5,
            output: 2,
            ..Usage::default()
        })
    );

    // Cohere: max_tokens; embeddings have no output.
    let q = quote(
        "/model/cohere.command-text-v14/invoke",
        &json!({"prompt": "hi", "max_tokens": 40}),
    );
    assert_eq!(q.worst_output_tokens, 40);
    let q = quote(
        "/model/cohere.embed-english-v3/invoke",
        &json!({"texts": ["hello world"], "input_type": "search_document"}),
    );
    assert_eq!(q.worst_output_tokens, 0);
    assert!(q.worst_case > spendguard_pricing::MicroUsd::ZERO);

    // An unknown native format (no family) is refused, not guessed.
    let mut t = prices();
    t.set(
        "bedrock/acme.model-v1",
        price_of("bedrock/amazon.nova-lite-v1:0"),
    );
    let e = adapter_for(ProviderId::Bedrock)
        .quote(
            &Method::POST,
            "/model/acme.model-v1/invoke",
            &HeaderMap::new(),
            b"{}",
            &t,
            &QuoteOptions::none(),
        )
        .unwrap_err();
    assert!(matches!(e, PricingError::Unpriced { .. }), "{e}");
}
