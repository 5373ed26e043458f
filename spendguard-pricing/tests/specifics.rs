//! Provider-specific behaviour beyond the shared suite.

mod common;

use common::fixtures::*;
use common::*;
use serde_json::{json, Value};
use spendguard_pricing::{MicroUsd, PricingError, ProviderId, Usage};

#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helper: a panic is the failure report"
)]
fn body_json(q: &spendguard_pricing::Quote) -> Value {
    serde_json::from_slice(q.body_rewrite.as_ref().expect("rewritten")).unwrap()
}

// ------------------------------------------------------------------------- OpenAI streaming

#[test]
fn include_usage_false_is_turned_on_and_the_usage_chunk_hidden() {
    let req = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":false,"include_obfuscation":false},"max_tokens":256,"messages":[{"role":"user","content":"Say hello"}]}"#;
    let q = quote(ProviderId::OpenAi, "/v1/chat/completions", req, &[], None);
    let new = body_json(&q);
    assert_eq!(
        new["stream_options"],
        json!({"include_usage": true, "include_obfuscation": false})
    );
    let (out, usage) = run_tap(&q, 200, "text/event-stream", &[OPENAI_CHAT_SSE.as_bytes()]);
    assert_eq!(
        out,
        OPENAI_CHAT_SSE
            .replacen(OPENAI_CHAT_SSE_USAGE_CHUNK, "", 1)
            .into_bytes()
    );
    assert_eq!(usage.unwrap().output, 9);
}

#[test]
fn a_client_that_asked_for_usage_keeps_its_usage_chunk() {
    let req = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#;
    let q = quote(ProviderId::OpenAi, "/v1/chat/completions", req, &[], None);
    assert!(q.body_rewrite.is_none());
    let (out, usage) = run_tap(&q, 200, "text/event-stream", &[OPENAI_CHAT_SSE.as_bytes()]);
    assert_eq!(out, OPENAI_CHAT_SSE.as_bytes());
    assert_eq!(usage.unwrap().input_uncached, 9);
}

#[test]
fn filtering_keeps_every_other_byte_with_any_line_ending() {
    let q = quote(
        ProviderId::OpenAi,
        "/v1/chat/completions",
        OPENAI_CHAT_STREAM_REQUEST,
        &[],
        None,
    );
    let usage_chunk = r#"data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    for eol in ["\n", "\r", "\r\n"] {
        let ev = |s: &str| format!("{s}{eol}{eol}");
        let first = ev(
            r#"data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":null}"#,
        );
        let last = ev(
            r#"data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        );
        let comment = format!(": ping{eol}{eol}");
        let stream = [
            first.clone(),
            comment.clone(),
            last.clone(),
            ev(usage_chunk),
            ev("data: [DONE]"),
        ]
        .concat();
        let want = [first, comment, last, ev("data: [DONE]")].concat();
        let body = stream.as_bytes();
        for cut in 0..=body.len() {
            let (out, usage) = run_tap(&q, 200, "text/event-stream", &[&body[..cut], &body[cut..]]);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want,
                "eol {eol:?} cut {cut}"
            );
            assert_eq!(usage.map(|u| (u.input_uncached, u.output)), Some((3, 2)));
        }
    }
}

#[test]
fn completions_multiply_output_by_prompts_and_best_of() {
    let req = r#"{"model":"gpt-3.5-turbo-instruct","prompt":["Say this","Say that"],"max_tokens":7,"n":2,"best_of":3}"#;
    let q = quote(ProviderId::OpenAi, "/v1/completions", req, &[], None);
    assert_eq!(q.worst_output_tokens, 7 * 3 * 2);
    let tokens =
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":[1212,318,257,1332],"max_tokens":5}"#;
    assert_eq!(
        quote(ProviderId::OpenAi, "/v1/completions", tokens, &[], None).worst_output_tokens,
        5
    );
}

#[test]
fn chat_takes_the_larger_of_two_limits_and_caps_at_the_model_maximum() {
    let req = r#"{"model":"gpt-4o","max_tokens":10,"max_completion_tokens":100,"messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(
        quote(ProviderId::OpenAi, "/v1/chat/completions", req, &[], None).worst_output_tokens,
        100
    );
    let req = r#"{"model":"gpt-4o","max_completion_tokens":10000000,"messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(
        quote(ProviderId::OpenAi, "/v1/chat/completions", req, &[], None).worst_output_tokens,
        16_384
    );
}

#[test]
fn input_bound_counts_bytes_messages_and_images_and_stops_at_the_context_window() {
    let text = "é".repeat(1000); // 2,000 UTF-8 bytes
    let req = json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": text}]}).to_string();
    let q = quote(ProviderId::OpenAi, "/v1/chat/completions", &req, &[], None);
    assert!(
        q.worst_input_tokens >= 2000 && q.worst_input_tokens < 2000 + 200,
        "{}",
        q.worst_input_tokens
    );
    let img = json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}},
        {"type": "image_url", "image_url": {"url": "https://e.x/b.png"}}]}]})
    .to_string();
    let q = quote(ProviderId::OpenAi, "/v1/chat/completions", &img, &[], None);
    assert!(q.worst_input_tokens >= 100_000);
    let huge = json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "x".repeat(500_000)}]}).to_string();
    assert_eq!(
        quote(ProviderId::OpenAi, "/v1/chat/completions", &huge, &[], None).worst_input_tokens,
        128_000
    );
    let file = r#"{"model":"gpt-4o","max_tokens":1,"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-abc"}}]}]}"#;
    assert_eq!(
        quote(ProviderId::OpenAi, "/v1/chat/completions", file, &[], None).worst_input_tokens,
        128_000
    );
}

#[test]
fn features_that_cannot_be_bounded_are_unpriced() {
    let cases = [
        (
            ProviderId::OpenAi,
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}"#,
        ),
        (
            ProviderId::OpenAi,
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","modalities":["text","audio"],"messages":[]}"#,
        ),
        (
            ProviderId::OpenAi,
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","web_search_options":{},"messages":[]}"#,
        ),
        (
            ProviderId::OpenAi,
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","service_tier":"priority","messages":[]}"#,
        ),
        (
            ProviderId::OpenAi,
            "/v1/responses",
            r#"{"model":"gpt-4.1","tools":[{"type":"web_search"}],"input":"news?"}"#,
        ),
        (
            ProviderId::OpenAi,
            "/v1/responses",
            r#"{"model":"gpt-4.1","tools":[{"type":"mcp","server_url":"https://x"}],"input":"?"}"#,
        ),
        (
            ProviderId::Xai,
            "/v1/chat/completions",
            r#"{"model":"grok-4","search_parameters":{"mode":"auto"},"messages":[]}"#,
        ),
        (
            ProviderId::OpenRouter,
            "/api/v1/chat/completions",
            r#"{"model":"openai/gpt-4o:online","messages":[]}"#,
        ),
        (
            ProviderId::OpenRouter,
            "/api/v1/chat/completions",
            r#"{"model":"openai/gpt-4o","plugins":[{"id":"web"}],"messages":[]}"#,
        ),
        (
            ProviderId::Anthropic,
            "/v1/messages",
            r#"{"model":"claude-sonnet-4-5","max_tokens":10,"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":5}],"messages":[]}"#,
        ),
        (
            ProviderId::Anthropic,
            "/v1/messages",
            r#"{"model":"claude-sonnet-4-5","max_tokens":10,"mcp_servers":[{"type":"url","url":"https://x","name":"x"}],"messages":[]}"#,
        ),
        (
            ProviderId::Gemini,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            r#"{"contents":[],"tools":[{"google_search":{}}]}"#,
        ),
        (
            ProviderId::Gemini,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            r#"{"contents":[{"parts":[{"inline_data":{"mime_type":"audio/mp3","data":"AAAA"}}]}]}"#,
        ),
        (
            ProviderId::Gemini,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            r#"{"contents":[],"generationConfig":{"responseModalities":["AUDIO"]}}"#,
        ),
    ];
    for (id, path, body) in cases {
        match try_quote(id, path, body, &[], None) {
            Err(PricingError::Unpriced { why }) => assert!(!why.is_empty()),
            other => panic!("{id} {body}: {other:?}"),
        }
    }
    // Plain function tools stay priced.
    let ok = r#"{"model":"gpt-4.1","tools":[{"type":"function","name":"f","parameters":{}}],"input":"hi"}"#;
    assert!(try_quote(ProviderId::OpenAi, "/v1/responses", ok, &[], None).is_ok());
}

#[test]
fn embeddings_bill_input_only() {
    let q = quote(
        ProviderId::OpenAi,
        "/v1/embeddings",
        OPENAI_EMBEDDINGS_REQUEST,
        &[],
        Some(100),
    );
    assert_eq!(q.worst_output_tokens, 0);
    assert!(
        q.body_rewrite.is_none(),
        "no output limit to write on embeddings"
    );
    let (out, usage) = run_tap(
        &q,
        200,
        "application/json",
        &[OPENAI_EMBEDDINGS_RESPONSE.as_bytes()],
    );
    assert_eq!(out, OPENAI_EMBEDDINGS_RESPONSE.as_bytes());
    assert_eq!(usage, Some(Usage::input_only(11)));
    assert!(q.worst_case >= q.price.cost(&usage.unwrap()));
    // 2,048 inputs may each fill the 8,191-token window: the bound is not one window.
    let many: Vec<String> = (0..2048).map(|_| "word ".repeat(100)).collect();
    let big = json!({"model": "text-embedding-3-large", "input": many}).to_string();
    let q = quote(ProviderId::OpenAi, "/v1/embeddings", &big, &[], None);
    assert!(q.worst_input_tokens > 8_191 * 100);
}

#[test]
fn responses_cap_is_max_output_tokens() {
    let q = quote(
        ProviderId::OpenAi,
        "/v1/responses",
        r#"{"model":"gpt-5","input":"hi"}"#,
        &[],
        Some(500),
    );
    assert_eq!(body_json(&q)["max_output_tokens"], 500);
    assert_eq!(q.worst_output_tokens, 500);
}

// ------------------------------------------------------------------------- Azure

#[test]
fn azure_old_api_versions_get_no_stream_options() {
    let q = quote(
        ProviderId::AzureOpenAi,
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-02-01",
        AZURE_CHAT_STREAM_REQUEST,
        &[],
        None,
    );
    assert!(q.body_rewrite.is_none());
    // Without usage in the stream the reservation stands.
    let no_usage = AZURE_CHAT_SSE.replacen(AZURE_CHAT_SSE_USAGE_CHUNK, "", 1);
    let (out, usage) = run_tap(&q, 200, "text/event-stream", &[no_usage.as_bytes()]);
    assert_eq!(out, no_usage.as_bytes());
    assert_eq!(usage, None);
}

#[test]
fn azure_v1_paths_take_the_model_from_the_body() {
    let mapped = r#"{"model":"prod-4o","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5}"#;
    assert_eq!(
        quote(
            ProviderId::AzureOpenAi,
            "/openai/v1/chat/completions",
            mapped,
            &[],
            None
        )
        .model,
        "gpt-4o"
    );
    let named = r#"{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5}"#;
    assert_eq!(
        quote(
            ProviderId::AzureOpenAi,
            "/openai/v1/chat/completions",
            named,
            &[],
            None
        )
        .model,
        "gpt-4.1-mini"
    );
    let resp = r#"{"model":"prod-4o","input":"hi","max_output_tokens":5}"#;
    let q = quote(
        ProviderId::AzureOpenAi,
        "/openai/v1/responses",
        resp,
        &[],
        None,
    );
    assert_eq!((q.model.as_str(), q.worst_output_tokens), ("gpt-4o", 5));
    let unknown = r#"{"model":"my-dep","messages":[]}"#;
    assert_eq!(
        try_quote(
            ProviderId::AzureOpenAi,
            "/openai/v1/chat/completions",
            unknown,
            &[],
            None
        )
        .unwrap_err(),
        PricingError::UnknownModel {
            model: "my-dep".into()
        }
    );
}

// ------------------------------------------------------------------------- Anthropic

#[test]
fn anthropic_output_only_delta_keeps_the_start_counts() {
    let q = quote(
        ProviderId::Anthropic,
        "/v1/messages",
        ANTHROPIC_STREAM_REQUEST,
        &[],
        None,
    );
    let (_, usage) = run_tap(
        &q,
        200,
        "text/event-stream",
        &[ANTHROPIC_SSE_OUTPUT_ONLY_DELTA.as_bytes()],
    );
    assert_eq!(
        usage,
        Some(Usage {
            input_uncached: 472,
            cache_write_5m: 1500,
            output: 1024,
            ..Usage::default()
        })
    );
}

#[test]
fn anthropic_stream_counts_are_never_summed() {
    let q = quote(
        ProviderId::Anthropic,
        "/v1/messages",
        ANTHROPIC_STREAM_REQUEST,
        &[],
        None,
    );
    let doubled = ANTHROPIC_SSE.replace("event: message_stop", "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop");
    let (_, usage) = run_tap(&q, 200, "text/event-stream", &[doubled.as_bytes()]);
    assert_eq!(usage.unwrap().output, 15);
}

#[test]
fn anthropic_cache_writes_raise_the_worst_rate() {
    let q = quote(
        ProviderId::Anthropic,
        "/v1/messages",
        ANTHROPIC_REQUEST,
        &[],
        Some(1000),
    );
    // The request asks for a 1-hour cache: input is priced at the 1-hour write rate ($6/Mtok).
    let at_1h = q
        .price
        .worst_case_cost(q.worst_input_tokens, 1000, Some(true));
    let plain = q.price.worst_case_cost(q.worst_input_tokens, 1000, None);
    assert_eq!(q.worst_case, at_1h);
    assert!(at_1h > plain);
    assert_eq!(body_json(&q)["max_tokens"], 1000);
}

#[test]
fn anthropic_long_context_beta_lifts_the_input_cap() {
    let big = json!({"model": "claude-sonnet-4", "max_tokens": 10, "messages": [{"role": "user", "content": "x".repeat(600_000)}]}).to_string();
    let plain = quote(ProviderId::Anthropic, "/v1/messages", &big, &[], None);
    assert!(
        plain.worst_input_tokens > 200_000,
        "claude-sonnet-4 has a 1M window in the table"
    );
    let h = quote(
        ProviderId::Anthropic,
        "/v1/messages",
        &big,
        &[("anthropic-beta", "context-1m-2025-08-07")],
        None,
    );
    assert!(h.worst_input_tokens >= 600_000);
    // Above 200k input the whole request is priced at the long-context tier.
    let tier = h.price.long_context.clone().unwrap();
    let expected = (u128::from(h.worst_input_tokens) * u128::from(tier.input_per_mtok.0)
        + 10 * u128::from(tier.output_per_mtok.0))
    .div_ceil(1_000_000);
    assert_eq!(u128::from(h.worst_case.0), expected);
}

#[test]
fn anthropic_long_context_beta_on_a_200k_model_prices_the_long_tier() {
    let big = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x".repeat(300_000)}]}).to_string();
    let plain = quote(ProviderId::Anthropic, "/v1/messages", &big, &[], None);
    assert_eq!(plain.worst_input_tokens, 200_000);
    let h = quote(
        ProviderId::Anthropic,
        "/v1/messages",
        &big,
        &[(
            "anthropic-beta",
            "prompt-caching-2024-07-31,context-1m-2025-08-07",
        )],
        None,
    );
    assert!(h.worst_input_tokens > 300_000);
    let tier = h
        .price
        .long_context
        .clone()
        .expect("a long-context tier for the beta");
    assert_eq!(
        (tier.input_per_mtok, tier.output_per_mtok),
        (MicroUsd::from_usd(6), MicroUsd(22_500_000))
    );
    // Settlement with the quote's price bills a long request at the tier.
    let long = Usage {
        input_uncached: 250_000,
        output: 1000,
        ..Usage::default()
    };
    assert_eq!(h.price.cost(&long), MicroUsd(1_500_000 + 22_500));
}

// ------------------------------------------------------------------------- Gemini

#[test]
fn gemini_json_array_stream_without_alt_sse() {
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        GEMINI_STREAM_REQUEST,
        &[],
        None,
    );
    assert!(q.stream);
    let body = GEMINI_JSON_ARRAY_STREAM.as_bytes();
    for cut in [0, 1, body.len() / 2, body.len()] {
        let (out, usage) = run_tap(
            &q,
            200,
            "application/json; charset=UTF-8",
            &[&body[..cut], &body[cut..]],
        );
        assert_eq!(out, body);
        assert_eq!(
            usage,
            Some(Usage {
                input_uncached: 8,
                output: 1009,
                reasoning: 1000,
                ..Usage::default()
            })
        );
    }
    // Cut before the final element: no usage.
    let cut = GEMINI_JSON_ARRAY_STREAM.find("finishReason").unwrap();
    assert_eq!(
        run_tap(&q, 200, "application/json", &[&body[..cut]]).1,
        None
    );
}

#[test]
fn gemini_without_content_type_follows_alt_sse() {
    let sse = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        GEMINI_STREAM_REQUEST,
        &[],
        None,
    );
    let mut tap = sse.response_tap(200, None);
    tap.on_chunk(GEMINI_SSE.as_bytes());
    assert_eq!(tap.finish().1.map(|u| u.output), Some(1009));
    let array = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        GEMINI_STREAM_REQUEST,
        &[],
        None,
    );
    let mut tap = array.response_tap(200, None);
    tap.on_chunk(GEMINI_JSON_ARRAY_STREAM.as_bytes());
    assert_eq!(tap.finish().1.map(|u| u.output), Some(1009));
}

#[test]
fn gemini_reads_both_spellings_and_multiplies_candidates() {
    let snake = r#"{"contents":[{"parts":[{"text":"hi"}]}],"generation_config":{"max_output_tokens":300,"candidate_count":3}}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        snake,
        &[],
        None,
    );
    assert_eq!(q.worst_output_tokens, 900);
    let camel = r#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":300,"candidateCount":2}}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1/models/gemini-2.5-flash:generateContent",
        camel,
        &[],
        None,
    );
    assert_eq!(q.worst_output_tokens, 600);
    // The cap goes into the snake_case object when that is the one the client used.
    let no_limit =
        r#"{"contents":[{"parts":[{"text":"hi"}]}],"generation_config":{"temperature":1}}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        no_limit,
        &[],
        Some(77),
    );
    assert_eq!(
        body_json(&q)["generation_config"],
        json!({"maxOutputTokens": 77, "temperature": 1})
    );
    // No generationConfig at all: one is added.
    let bare = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        bare,
        &[],
        Some(77),
    );
    assert_eq!(
        body_json(&q)["generationConfig"],
        json!({"maxOutputTokens": 77})
    );
}

#[test]
fn gemini_cached_content_and_video_make_the_input_the_window() {
    let cached = r#"{"cachedContent":"cachedContents/abc","contents":[{"parts":[{"text":"q"}]}],"generationConfig":{"maxOutputTokens":10}}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-pro:generateContent",
        cached,
        &[],
        None,
    );
    assert_eq!(q.worst_input_tokens, q.price.context_window);
    // Past 200k input, Gemini 2.5 Pro bills the long-context tier.
    let lc = q.price.long_context.clone().unwrap();
    assert_eq!(
        q.worst_case,
        q.price.worst_case_cost(q.worst_input_tokens, 10, None)
    );
    assert!(q.worst_case.0 >= q.worst_input_tokens * lc.input_per_mtok.0 / 1_000_000);
    let video = r#"{"contents":[{"parts":[{"file_data":{"mime_type":"video/mp4","file_uri":"https://generativelanguage.googleapis.com/v1beta/files/x"}}]}]}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        video,
        &[],
        None,
    );
    assert_eq!(q.worst_input_tokens, q.price.context_window);
}

#[test]
fn gemini_openai_compatible_endpoint() {
    let req = r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#;
    let q = quote(
        ProviderId::Gemini,
        "/v1beta/openai/chat/completions",
        req,
        &[],
        None,
    );
    assert_eq!(
        (q.model.as_str(), q.worst_output_tokens),
        ("gemini-2.5-flash", 50)
    );
}

// ------------------------------------------------------------------------- compatible providers

#[test]
fn openrouter_prices_the_dearest_fallback_and_variants() {
    let q = quote(
        ProviderId::OpenRouter,
        "/api/v1/chat/completions",
        OPENROUTER_REQUEST,
        &[],
        None,
    );
    assert_eq!(q.model, "claude-sonnet-4-5");
    let cheap_first = r#"{"model":"openai/gpt-4o-mini","models":["openai/gpt-4o"],"messages":[],"max_tokens":10}"#;
    assert_eq!(
        quote(
            ProviderId::OpenRouter,
            "/api/v1/chat/completions",
            cheap_first,
            &[],
            None
        )
        .model,
        "gpt-4o"
    );
    let free = r#"{"model":"openai/gpt-4o:free","messages":[],"max_tokens":10}"#;
    assert_eq!(
        quote(
            ProviderId::OpenRouter,
            "/api/v1/chat/completions",
            free,
            &[],
            None
        )
        .model,
        "gpt-4o"
    );
    let unknown_fallback = r#"{"model":"openai/gpt-4o","models":["nobody/nothing"],"messages":[]}"#;
    assert!(matches!(
        try_quote(
            ProviderId::OpenRouter,
            "/api/v1/chat/completions",
            unknown_fallback,
            &[],
            None
        ),
        Err(PricingError::UnknownModel { .. })
    ));
}

#[test]
fn xai_reasoning_is_outside_the_limit() {
    let q = quote(
        ProviderId::Xai,
        "/v1/chat/completions",
        XAI_STREAM_REQUEST,
        &[],
        None,
    );
    assert_eq!(q.worst_output_tokens, q.price.max_output_tokens);
    let (_, usage) = run_tap(&q, 200, "application/json", &[XAI_RESPONSE.as_bytes()]);
    assert_eq!(usage.unwrap().output, 131, "completion 1 + reasoning 130");
}

#[test]
fn together_prices_its_own_gpt_oss() {
    let body = r#"{"model":"openai/gpt-oss-20b","messages":[],"max_tokens":10}"#;
    let t = quote(
        ProviderId::Together,
        "/v1/chat/completions",
        body,
        &[],
        None,
    );
    let g = quote(
        ProviderId::Groq,
        "/openai/v1/chat/completions",
        body,
        &[],
        None,
    );
    assert_eq!(t.model, "together/openai/gpt-oss-20b");
    assert_eq!(g.model, "openai/gpt-oss-20b");
    assert_ne!(t.price, g.price);
}

// ------------------------------------------------------------------------- taps and errors

#[test]
fn oversized_json_bodies_report_no_usage_but_pass_through() {
    let q = quote(
        ProviderId::OpenAi,
        "/v1/chat/completions",
        OPENAI_CHAT_REQUEST,
        &[],
        None,
    );
    let mut tap = q.response_tap(200, Some("application/json"));
    let chunk = vec![b' '; 1 << 20];
    let mut forwarded = 0;
    for _ in 0..33 {
        forwarded += tap.on_chunk(&chunk).len();
    }
    forwarded += tap.on_chunk(OPENAI_CHAT_RESPONSE.as_bytes()).len();
    assert_eq!(forwarded, 33 * (1 << 20) + OPENAI_CHAT_RESPONSE.len());
    assert_eq!(tap.finish().1, None);
}

#[test]
fn missing_content_type_follows_the_request() {
    let q = quote(
        ProviderId::Anthropic,
        "/v1/messages",
        ANTHROPIC_STREAM_REQUEST,
        &[],
        None,
    );
    let mut tap = q.response_tap(200, None);
    tap.on_chunk(ANTHROPIC_SSE.as_bytes());
    assert_eq!(tap.finish().1.unwrap().output, 15);
}

#[test]
fn error_messages_never_echo_the_body() {
    let secret = "sk-live-SECRET-in-body";
    for body in [
        format!(r#"{{"model":"gpt-4o","messages":"{secret}","max_tokens":-3}}"#),
        format!(r#"{{"model":"gpt-4o","messages":[{{"content":"{secret}"}}], bad json"#),
        format!(r#"{{"model":"gpt-4o","n":"{secret}","messages":[]}}"#),
    ] {
        let e =
            try_quote(ProviderId::OpenAi, "/v1/chat/completions", &body, &[], None).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{e:?}").contains(secret));
    }
}

#[test]
fn worst_case_is_integer_money() {
    let q = quote(
        ProviderId::OpenAi,
        "/v1/chat/completions",
        OPENAI_CHAT_STREAM_REQUEST,
        &[],
        None,
    );
    // gpt-4o-mini: $0.15/Mtok input, $0.60/Mtok output, 256 output tokens.
    let want = (u128::from(q.worst_input_tokens) * 150_000 + 256 * 600_000).div_ceil(1_000_000);
    assert_eq!(u128::from(q.worst_case.0), want);
    assert!(q.worst_case > MicroUsd::ZERO);
}

// ------------------------------------------------------------------------- fuzz

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn quotes() -> Vec<spendguard_pricing::Quote> {
        vec![
            quote(
                ProviderId::OpenAi,
                "/v1/chat/completions",
                OPENAI_CHAT_STREAM_REQUEST,
                &[],
                None,
            ),
            quote(
                ProviderId::OpenAi,
                "/v1/chat/completions",
                OPENAI_CHAT_REQUEST,
                &[],
                None,
            ),
            quote(
                ProviderId::OpenAi,
                "/v1/responses",
                OPENAI_RESPONSES_REQUEST,
                &[],
                None,
            ),
            quote(
                ProviderId::OpenAi,
                "/v1/embeddings",
                OPENAI_EMBEDDINGS_REQUEST,
                &[],
                None,
            ),
            quote(
                ProviderId::Anthropic,
                "/v1/messages",
                ANTHROPIC_STREAM_REQUEST,
                &[],
                None,
            ),
            quote(
                ProviderId::Gemini,
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                GEMINI_STREAM_REQUEST,
                &[],
                None,
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn taps_never_panic_and_pass_through_when_not_filtering(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let cut = cut.min(body.len());
            for q in quotes() {
                for ct in ["text/event-stream", "application/json"] {
                    let (out, _) = run_tap(&q, 200, ct, &[&body[..cut], &body[cut..]]);
                    prop_assert_eq!(out.len() <= body.len(), true);
                    if ct == "application/json" {
                        prop_assert_eq!(&out, &body);
                    }
                }
            }
        }

        #[test]
        fn quotes_never_panic_on_any_body(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&body);
            for (id, path) in [
                (ProviderId::OpenAi, "/v1/chat/completions"),
                (ProviderId::OpenAi, "/v1/responses"),
                (ProviderId::AzureOpenAi, "/openai/deployments/prod-4o/chat/completions"),
                (ProviderId::Anthropic, "/v1/messages"),
                (ProviderId::Gemini, "/v1beta/models/gemini-2.5-flash:generateContent"),
                (ProviderId::OpenRouter, "/api/v1/chat/completions"),
            ] {
                let _ = try_quote(id, path, &text, &[], Some(100));
            }
        }

        #[test]
        fn quotes_of_valid_requests_survive_random_fields(
            max in proptest::option::of(0u64..1_000_000),
            n in proptest::option::of(1u64..8),
            text in "[a-zA-Z0-9 é\\n\"\\\\]{0,200}",
        ) {
            let mut req = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "stream": true});
            if let Some(m) = max { req["max_completion_tokens"] = json!(m); }
            if let Some(n) = n { req["n"] = json!(n); }
            let body = req.to_string();
            let q = quote(ProviderId::OpenAi, "/v1/chat/completions", &body, &[], Some(4096));
            let per_choice = max.unwrap_or(4096).min(16_384);
            prop_assert_eq!(q.worst_output_tokens, per_choice * n.unwrap_or(1));
            prop_assert!(q.worst_input_tokens >= body.len() as u64);
            let new: Value = serde_json::from_slice(q.body_rewrite.as_ref().unwrap()).unwrap();
            prop_assert_eq!(&new["messages"], &req["messages"]);
            prop_assert_eq!(&new["stream_options"]["include_usage"], &json!(true));
        }
    }
}

// ------------------------------------------------- Cohere, Fireworks, Cerebras, HF, self-hosted

/// A Cohere stream sent without an event-stream content type (bare JSON lines, as curl shows
/// them, or `data:` lines) still yields the `message-end` usage; one cut before it yields none,
/// and the reservation is charged.
#[test]
fn cohere_stream_read_as_lines_and_cut_stream_has_no_usage() {
    let q = quote(
        ProviderId::Cohere,
        "/v2/chat",
        COHERE_STREAM_REQUEST,
        &[],
        None,
    );
    assert!(
        q.body_rewrite.is_none(),
        "Cohere sends usage unasked: nothing to inject"
    );
    let bare: String = COHERE_SSE
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|l| format!("{l}\n"))
        .collect();
    for (ct, body) in [
        ("application/stream+json", bare.as_str()),
        ("application/json", COHERE_SSE),
    ] {
        let (out, usage) = run_tap(&q, 200, ct, &[body.as_bytes()]);
        assert_eq!(out, body.as_bytes(), "forwarded unchanged");
        let u = usage.unwrap_or_else(|| panic!("{ct}: no usage"));
        assert_eq!((u.input_uncached, u.output), (3, 9), "{ct}");
    }
    let cut = &COHERE_SSE[..COHERE_SSE.find("event: message-end").unwrap_or(0)];
    let (_, usage) = run_tap(&q, 200, "text/event-stream", &[cut.as_bytes()]);
    assert_eq!(usage, None, "no message-end: the reservation stands");
}

/// `max_tokens` unset: Cohere generates up to the model's maximum, so that is the worst case;
/// `thinking` adds its budget on top (reasoning is not assumed to be inside `max_tokens`).
#[test]
fn cohere_output_bound_and_thinking_budget() {
    let q = quote(ProviderId::Cohere, "/v2/chat", COHERE_REQUEST, &[], None);
    assert_eq!(
        q.worst_output_tokens, 8000,
        "command-a-03-2025's maximum output"
    );
    let with_budget = r#"{"model":"command-a-03-2025","max_tokens":100,"thinking":{"type":"enabled","token_budget":2000},"messages":[{"role":"user","content":"hi"}]}"#;
    let q = quote(ProviderId::Cohere, "/v2/chat", with_budget, &[], None);
    assert_eq!(q.worst_output_tokens, 2100);
    let disabled = r#"{"model":"command-a-03-2025","max_tokens":100,"thinking":{"type":"disabled"},"messages":[{"role":"user","content":"hi"}]}"#;
    let q = quote(ProviderId::Cohere, "/v2/chat", disabled, &[], None);
    assert_eq!(q.worst_output_tokens, 100);
    let capped = quote(
        ProviderId::Cohere,
        "/v2/chat",
        COHERE_REQUEST,
        &[],
        Some(512),
    );
    assert_eq!(body_json(&capped)["max_tokens"], json!(512));
    assert!(matches!(
        try_quote(
            ProviderId::Cohere,
            "/v2/chat",
            r#"{"model":"command-a-03-2025"}"#,
            &[],
            None
        ),
        Err(PricingError::MalformedBody { .. })
    ));
}

/// Fireworks and Cerebras are not sent `stream_options` (not documented as accepted): a stream
/// that carries no usage at all reports none, and the reservation is the charge — as for every
/// OpenAI-shaped stream without usage.
#[test]
fn fireworks_and_cerebras_streams_without_usage_charge_the_reservation() {
    for (id, path, req, sse) in [
        (
            ProviderId::Fireworks,
            "/inference/v1/chat/completions",
            FIREWORKS_STREAM_REQUEST,
            FIREWORKS_SSE,
        ),
        (
            ProviderId::Cerebras,
            "/v1/chat/completions",
            CEREBRAS_STREAM_REQUEST,
            CEREBRAS_SSE,
        ),
    ] {
        let q = quote(id, path, req, &[], None);
        assert!(q.body_rewrite.is_none(), "{id}: nothing injected");
        let stripped: String = sse
            .split("\n\n")
            .filter(|ev| !ev.contains("\"usage\":{"))
            .map(|ev| format!("{ev}\n\n"))
            .collect();
        let (out, usage) = run_tap(&q, 200, "text/event-stream", &[stripped.as_bytes()]);
        assert_eq!(out, stripped.as_bytes());
        assert_eq!(usage, None, "{id}");
    }
}

fn table_with(model: &str) -> spendguard_pricing::PriceTable {
    let mut t = spendguard_pricing::PriceTable::bundled();
    t.set(
        model,
        spendguard_pricing::ModelPrice {
            input_per_mtok: MicroUsd(200_000),
            output_per_mtok: MicroUsd(800_000),
            max_output_tokens: 8192,
            context_window: 32_768,
            ..Default::default()
        },
    );
    t
}

/// The Hugging Face router and self-hosted servers (vLLM, Ollama ≥ 0.5.2, llama.cpp) accept
/// `stream_options.include_usage`: it is injected, the usage-only chunk (vLLM's recorded shape)
/// is read and hidden from the client; a server that ignores the option sends no usage, and
/// the reservation stands.
#[test]
fn hugging_face_and_self_hosted_get_include_usage_injected() {
    const VLLM_SSE: &str = concat!(
        "data: {\"id\":\"chatcmpl-8f3e\",\"object\":\"chat.completion.chunk\",\"created\":1765061000,\"model\":\"MODEL\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-8f3e\",\"object\":\"chat.completion.chunk\",\"created\":1765061000,\"model\":\"MODEL\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi!\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}],\"usage\":null}\n\n",
    );
    const USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-8f3e\",\"object\":\"chat.completion.chunk\",\"created\":1765061000,\"model\":\"MODEL\",\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"total_tokens\":29,\"completion_tokens\":4}}\n\n";
    for (id, path, model) in [
        (
            ProviderId::HuggingFace,
            "/v1/chat/completions",
            "openai/gpt-oss-120b:cerebras",
        ),
        (
            ProviderId::SelfHosted,
            "/v1/chat/completions",
            "Qwen/Qwen2.5-7B-Instruct",
        ),
        (ProviderId::SelfHosted, "/chat/completions", "llama3.2:3b"),
    ] {
        let table = table_with(model);
        let body = format!(
            r#"{{"model":"{model}","stream":true,"max_tokens":64,"messages":[{{"role":"user","content":"Hi"}}]}}"#
        );
        let q = spendguard_pricing::adapter_for(id)
            .quote(
                &http::Method::POST,
                path,
                &http::HeaderMap::new(),
                body.as_bytes(),
                &table,
                &spendguard_pricing::QuoteOptions::none(),
            )
            .unwrap_or_else(|e| panic!("{id} {model}: {e}"));
        assert_eq!(
            body_json(&q)["stream_options"],
            json!({"include_usage": true}),
            "{id}"
        );
        let sse = VLLM_SSE.replace("MODEL", model);
        let chunk = USAGE_CHUNK.replace("MODEL", model);
        let full = format!("{sse}{chunk}data: [DONE]\n\n");
        let (out, usage) = run_tap(&q, 200, "text/event-stream", &[full.as_bytes()]);
        assert_eq!(
            out,
            format!("{sse}data: [DONE]\n\n").into_bytes(),
            "{id}: usage chunk hidden"
        );
        let u = usage.unwrap_or_else(|| panic!("{id}: no usage"));
        assert_eq!((u.input_uncached, u.output), (25, 4));
        let (_, none) = run_tap(
            &q,
            200,
            "text/event-stream",
            &[format!("{sse}data: [DONE]\n\n").as_bytes()],
        );
        assert_eq!(none, None, "{id}: no usage chunk, the reservation stands");
    }
}

// ---------------------------------------------------------------------------------- Perplexity

/// The worst case is the tokens' worst case plus the request fee of the context size the
/// request asks for; without one, the dearest (`high`) fee.
#[test]
fn perplexity_worst_case_adds_the_asked_request_fee() {
    let sonar_pro = |opts: &str| {
        let body = format!(
            r#"{{"model":"sonar-pro","max_tokens":100,"messages":[{{"role":"user","content":"hi"}}]{opts}}}"#
        );
        quote(
            ProviderId::Perplexity,
            "/chat/completions",
            &body,
            &[],
            None,
        )
    };
    let tokens = |q: &spendguard_pricing::Quote| {
        q.price
            .worst_case_cost(q.worst_input_tokens, q.worst_output_tokens, None)
    };
    // $6 / $10 / $14 per 1,000 requests.
    for (opts, fee) in [
        (
            r#","web_search_options":{"search_context_size":"low"}"#,
            6_000,
        ),
        (
            r#","web_search_options":{"search_context_size":"medium","search_type":"fast"}"#,
            10_000,
        ),
        (
            r#","web_search_options":{"search_context_size":"high"}"#,
            14_000,
        ),
        (
            r#","web_search_options":{"user_location":{"country":"US"}}"#,
            14_000,
        ),
        ("", 14_000),
    ] {
        let q = sonar_pro(opts);
        assert_eq!(q.model, "perplexity/sonar-pro");
        assert_eq!(q.worst_output_tokens, 100);
        assert_eq!(q.worst_case.0, tokens(&q).0 + fee, "{opts}");
    }
    assert!(matches!(
        try_quote(
            ProviderId::Perplexity,
            "/chat/completions",
            r#"{"model":"sonar","messages":[],"web_search_options":{"search_context_size":"huge"}}"#,
            &[],
            None
        ),
        Err(PricingError::MalformedBody { .. })
    ));
}

/// The charge is the tokens plus the fee of the size the answer reports; an answer that reports
/// none is charged the quoted size's fee (never dropped).
#[test]
fn perplexity_charge_is_tokens_plus_the_reported_fee() {
    let q = quote(
        ProviderId::Perplexity,
        "/chat/completions",
        PERPLEXITY_REQUEST,
        &[],
        None,
    );
    let (_, usage) = run_tap(
        &q,
        200,
        "application/json",
        &[PERPLEXITY_RESPONSE.as_bytes()],
    );
    // sonar-pro: 14 × $3/M + 221 × $15/M = 42 + 3315 µ$, + the $0.006 low-context fee.
    assert_eq!(q.price.cost(&usage.unwrap()), MicroUsd(42 + 3315 + 6_000));
    let unreported = PERPLEXITY_RESPONSE.replace(r#""search_context_size":"low","#, "");
    let (_, usage) = run_tap(&q, 200, "application/json", &[unreported.as_bytes()]);
    let usage = usage.unwrap();
    assert_eq!(
        usage.search_context,
        Some(spendguard_pricing::SearchContext::Low),
        "the asked size"
    );
    assert_eq!(q.price.cost(&usage), MicroUsd(42 + 3315 + 6_000));
    // Asked nothing, reported nothing: the reserved high fee.
    let bare = quote(
        ProviderId::Perplexity,
        "/chat/completions",
        r#"{"model":"sonar-pro","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
        None,
    );
    let (_, usage) = run_tap(&bare, 200, "application/json", &[unreported.as_bytes()]);
    assert_eq!(
        bare.price.cost(&usage.unwrap()),
        MicroUsd(42 + 3315 + 14_000)
    );
    // Errors are not billed, fee included.
    let (_, usage) = run_tap(&q, 429, "application/json", &[b"{}"]);
    assert_eq!(q.price.cost(&usage.unwrap()), MicroUsd(0));
}

/// Usage rides on every chunk, cumulatively: the stream is charged its final counts once, not
/// their sum, and only once a final chunk was seen; chunks after it (a terminal cost or search
/// results chunk) keep it final.
#[test]
fn perplexity_cumulative_stream_usage_is_charged_once() {
    let q = quote(
        ProviderId::Perplexity,
        "/v1/chat/completions",
        PERPLEXITY_STREAM_REQUEST,
        &[],
        None,
    );
    assert!(q.body_rewrite.is_none(), "usage is sent unasked");
    let (out, usage) = run_tap(&q, 200, "text/event-stream", &[PERPLEXITY_SSE.as_bytes()]);
    assert_eq!(out, PERPLEXITY_SSE.as_bytes(), "forwarded unchanged");
    let usage = usage.unwrap();
    assert_eq!(
        (usage.input_uncached, usage.output),
        (8, 9),
        "the last chunk's counts"
    );
    // sonar: 17 tokens at $1/M, + the $0.005 low-context fee (reserved at high: $0.012).
    assert_eq!(q.price.cost(&usage), MicroUsd(17 + 5_000));
    assert!(q.worst_case.0 >= 12_000 + 256);
    let trailer = concat!(
        "data: {\"id\":\"b1c2\",\"model\":\"sonar\",\"object\":\"chat.completion.done\",\"type\":\"end_of_stream\",\"status\":\"COMPLETED\",",
        "\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":9,\"total_tokens\":17,\"search_context_size\":\"low\"},",
        "\"choices\":[{\"index\":0,\"finish_reason\":null,\"delta\":{}}]}\n\n"
    );
    let with_trailer = format!("{PERPLEXITY_SSE}{trailer}");
    let (_, usage) = run_tap(&q, 200, "text/event-stream", &[with_trailer.as_bytes()]);
    assert_eq!(usage.map(|u| u.output), Some(9));
    // Without a final chunk (cut after the interim ones) nothing is trusted: the reservation.
    let interim = &PERPLEXITY_SSE[..PERPLEXITY_SSE.find("\"finish_reason\":\"stop\"").unwrap()];
    let cut = &interim[..interim.rfind("data: ").unwrap()];
    assert_eq!(
        run_tap(&q, 200, "text/event-stream", &[cut.as_bytes()]).1,
        None
    );
    // A stream whose only terminal marker is `type: end_of_stream` is final too.
    let no_finish = PERPLEXITY_SSE.replace("\"finish_reason\":\"stop\"", "\"finish_reason\":null");
    let (_, usage) = run_tap(&q, 200, "text/event-stream", &[no_finish.as_bytes()]);
    assert_eq!(usage, None);
    let (_, usage) = run_tap(
        &q,
        200,
        "text/event-stream",
        &[format!("{no_finish}{trailer}").as_bytes()],
    );
    assert_eq!(usage.map(|u| u.output), Some(9));
}

/// What no request field bounds is refused before it reaches Perplexity: deep research (per
/// search query, citation and reasoning token), Pro Search (per search type), `best_of`, the
/// Agent API; and Perplexity's fee-bearing models are refused where the fee would be left out.
#[test]
fn perplexity_unbounded_requests_are_refused() {
    let unpriced =
        |id: ProviderId, path: &str, body: &str| match try_quote(id, path, body, &[], None) {
            Err(PricingError::Unpriced { why }) => why,
            Err(PricingError::NotPricedRoute { .. }) => "route".to_string(),
            other => panic!("{body}: {other:?}"),
        };
    let pplx = |body: &str| unpriced(ProviderId::Perplexity, "/chat/completions", body);
    let why = pplx(
        r#"{"model":"sonar-deep-research","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert!(why.contains("search query"), "{why}");
    for search_type in ["pro", "auto"] {
        let why = pplx(&format!(
            r#"{{"model":"sonar-pro","stream":true,"messages":[],"web_search_options":{{"search_type":"{search_type}"}}}}"#
        ));
        assert!(why.contains("Pro Search"), "{why}");
    }
    pplx(r#"{"model":"sonar","best_of":3,"messages":[]}"#);
    let why = pplx(r#"{"model":"gpt-4o","messages":[]}"#);
    assert!(why.contains("request_fee"), "{why}");
    assert_eq!(
        unpriced(
            ProviderId::Perplexity,
            "/v1/responses",
            r#"{"model":"sonar"}"#
        ),
        "route"
    );
    unpriced(
        ProviderId::Perplexity,
        "/v1/embeddings",
        r#"{"model":"sonar","input":"x"}"#,
    );
    let why = unpriced(
        ProviderId::OpenRouter,
        "/api/v1/chat/completions",
        r#"{"model":"perplexity/sonar","messages":[]}"#,
    );
    assert!(why.contains("Perplexity"), "{why}");
}
