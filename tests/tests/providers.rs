//! Issue 16: providers beyond the first ten, end to end through the transparent path (BPF
//! redirect → TLS interception → pricing → ledger) against the fake provider.

use std::collections::HashMap;

use spendguard_pricing::{PriceTable, Usage};
use spendguard_tests::metered::{curl_host, Metered as Env, SELF_HOSTED};
use spendguard_tests::privileged;

const BEDROCK: &str = "bedrock-runtime.us-east-1.amazonaws.com";

fn cost(model: &str, u: Usage) -> u64 {
    PriceTable::bundled()
        .lookup(model)
        .unwrap_or_else(|| panic!("{model} not in the bundled table"))
        .1
        .cost(&u)
        .0
}

/// The request headers curl says it sent (`curl -v` lines `> name: value`), lowercase names.
fn sent_headers(stderr: &str) -> HashMap<String, String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// A SigV4-signed Bedrock call from the tagged cgroup (curl signs it with a test key).
fn bedrock_call(e: &Env, path: &str, body: &str, extra: &[&str]) -> (u16, String, String) {
    let mut args = vec![
        "-v",
        "--http1.1",
        "--aws-sigv4",
        "aws:amz:us-east-1:bedrock",
        "--user",
        "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    args.extend_from_slice(extra);
    curl_host(e.at(), &e.ca, BEDROCK, path, &args)
}

#[test]
fn bedrock_four_operations_are_metered_and_signed_requests_reach_the_provider_unchanged() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.bedrock.bot");
    let converse = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":200}}"#;
    let invoke = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":300,"messages":[{"role":"user","content":"hi"}]}"#;
    let nova = "bedrock/amazon.nova-pro-v1:0";
    let sonnet = "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0";
    let mut want = 0u64;

    // Converse (JSON): the signature, its headers and the body reach the provider untouched.
    let (status, _, out) = bedrock_call(
        &e,
        "/model/amazon.nova-pro-v1%3A0/converse",
        converse,
        &["-H", "x-fake-usage: prompt=1000,completion=50,cached=200"],
    );
    assert_eq!(status, 200, "{out}");
    let sent = sent_headers(&out);
    let auth = sent.get("authorization").expect("curl signed the request");
    assert!(auth.starts_with("AWS4-HMAC-SHA256 "), "{auth}");
    let reqs = e.fake.requests();
    let got = reqs.last().expect("the provider saw the request");
    assert_eq!(
        got.body,
        converse.as_bytes(),
        "the signed body must not change"
    );
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("SignedHeaders");
    for h in signed.split(';').filter(|h| *h != "host") {
        assert_eq!(
            got.header(h),
            sent.get(h).map(String::as_str),
            "signed header {h} changed on the way"
        );
    }
    assert_eq!(got.header("authorization"), Some(auth.as_str()));
    want += cost(
        nova,
        Usage {
            input_uncached: 1000,
            input_cached: 200,
            output: 50,
            ..Usage::default()
        },
    );
    assert_eq!(e.settled_spend("acme.bedrock.bot"), want, "converse");

    // ConverseStream: usage from the metadata event of the binary event stream.
    let (status, headers, out) = bedrock_call(
        &e,
        "/model/amazon.nova-pro-v1%3A0/converse-stream",
        converse,
        &[
            "-H",
            "x-fake-usage: prompt=400,completion=30",
            "-H",
            "x-fake-chunks: 5",
        ],
    );
    assert_eq!(status, 200, "{out}");
    assert!(
        headers.contains("application/vnd.amazon.eventstream"),
        "{headers}"
    );
    want += cost(
        nova,
        Usage {
            input_uncached: 400,
            output: 30,
            ..Usage::default()
        },
    );
    assert_eq!(e.settled_spend("acme.bedrock.bot"), want, "converse-stream");

    // InvokeModel through a cross-region profile: the token-count headers, else the body.
    let (status, _, out) = bedrock_call(
        &e,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        invoke,
        &["-H", "x-fake-usage: prompt=700,completion=90"],
    );
    assert_eq!(status, 200, "{out}");
    let (status, _, out) = bedrock_call(
        &e,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        invoke,
        &[
            "-H",
            "x-fake-usage: prompt=70,completion=9",
            "-H",
            "x-fake-bedrock-headers: off",
        ],
    );
    assert_eq!(status, 200, "{out}");
    for (p, c) in [(700, 90), (70, 9)] {
        want += cost(
            sonnet,
            Usage {
                input_uncached: p,
                output: c,
                ..Usage::default()
            },
        );
    }
    assert_eq!(e.settled_spend("acme.bedrock.bot"), want, "invoke");

    // InvokeModelWithResponseStream: amazon-bedrock-invocationMetrics of the last chunk.
    let (status, _, out) = bedrock_call(
        &e,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
        invoke,
        &["-H", "x-fake-usage: prompt=55,completion=44,cached=1000"],
    );
    assert_eq!(status, 200, "{out}");
    want += cost(
        sonnet,
        Usage {
            input_uncached: 55,
            input_cached: 1000,
            output: 44,
            ..Usage::default()
        },
    );
    assert_eq!(e.settled_spend("acme.bedrock.bot"), want, "invoke stream");
    let models: Vec<String> = e
        .audit("acme.bedrock.bot")
        .iter()
        .filter_map(|ev| ev["model"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        models,
        [nova, nova, sonnet, sonnet, sonnet],
        "audited under their table keys"
    );

    // Over budget: SpendGuard's 402 in the AWS error shape; the provider never sees it.
    e.cli_ok(&["limit", "set", "acme.bedrock", "--per-call", "0.001"]);
    let before = e.fake.request_count();
    let (status, headers, out) = bedrock_call(
        &e,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        invoke,
        &[],
    );
    assert_eq!(status, 402, "{out}");
    assert!(
        headers.contains("x-amzn-errortype: budget_exceeded"),
        "{headers}"
    );
    assert!(out.contains("\"message\":\"Request of"), "{out}");
    assert_eq!(
        e.fake.request_count(),
        before,
        "a blocked request was forwarded"
    );
    // An unknown model is blocked, not passed unpriced.
    e.cli_ok(&["limit", "set", "acme.bedrock", "--per-call", "none"]);
    let (status, _, out) = bedrock_call(&e, "/model/acme.secret-model-v1/converse", converse, &[]);
    assert_eq!(status, 402, "{out}");
    assert!(out.contains("unknown_model"), "{out}");
    assert_eq!(e.fake.request_count(), before);
}

#[test]
fn vertex_claude_and_gemini_are_metered() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.vertex.bot");
    let host = "us-east5-aiplatform.googleapis.com";
    let base = "/v1/projects/my-proj/locations/us-east5/publishers";
    let claude = r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let claude_stream = r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let call = |path: &str, body: &str, usage: &str| {
        let (status, _, out) = curl_host(
            e.at(),
            &e.ca,
            host,
            path,
            &[
                "-H",
                "authorization: Bearer ya29.test-token",
                "-H",
                "content-type: application/json",
                "-H",
                &format!("x-fake-usage: {usage}"),
                "--data-binary",
                body,
            ],
        );
        assert_eq!(status, 200, "{path}: {out}");
        out
    };
    let mut want = 0;
    call(
        &format!("{base}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
        claude,
        "prompt=500,completion=40",
    );
    let out = call(
        &format!("{base}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
        claude_stream,
        "prompt=300,completion=20",
    );
    assert!(out.contains("message_delta"), "{out}");
    for (p, c) in [(500, 40), (300, 20)] {
        want += cost(
            "claude-sonnet-4-5",
            Usage {
                input_uncached: p,
                output: c,
                ..Usage::default()
            },
        );
    }
    assert_eq!(e.settled_spend("acme.vertex.bot"), want, "claude on vertex");
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":64}}"#;
    call(
        &format!("{base}/google/models/gemini-2.5-flash:generateContent"),
        gemini,
        "prompt=80,completion=8",
    );
    call(
        &format!("{base}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        gemini,
        "prompt=60,completion=6",
    );
    for (p, c) in [(80, 8), (60, 6)] {
        want += cost(
            "gemini-2.5-flash",
            Usage {
                input_uncached: p,
                output: c,
                ..Usage::default()
            },
        );
    }
    assert_eq!(e.settled_spend("acme.vertex.bot"), want, "gemini on vertex");
    // A publisher that is not priced is refused, not passed unmetered.
    let before = e.fake.request_count();
    let (status, _, out) = curl_host(
        e.at(),
        &e.ca,
        host,
        &format!("{base}/meta/models/llama-4-maverick-17b-128e-instruct-maas:rawPredict"),
        &["--data-binary", "{}"],
    );
    assert_eq!(status, 402, "{out}");
    assert!(out.contains("unpriced_request"), "{out}");
    assert_eq!(e.fake.request_count(), before);
}

#[test]
fn cohere_v2_chat_is_charged_its_billed_units() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.cohere.bot");
    let call = |body: &str, usage: &str| {
        let (status, headers, out) = curl_host(
            e.at(),
            &e.ca,
            "api.cohere.com",
            "/v2/chat",
            &[
                "-H",
                "authorization: bearer co-test-key",
                "-H",
                "content-type: application/json",
                "-H",
                &format!("x-fake-usage: {usage}"),
                "--data-binary",
                body,
            ],
        );
        assert_eq!(status, 200, "{out}");
        (headers, out)
    };
    let json = r#"{"model":"command-r-08-2024","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = r#"{"model":"command-r-08-2024","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    call(json, "prompt=1000,completion=200");
    let (headers, out) = call(stream, "prompt=3000,completion=400");
    assert!(headers.contains("text/event-stream"), "{headers}");
    assert!(
        out.contains("message-end"),
        "the client sees the whole stream: {out}"
    );
    // The fake reports 50 more processed than billed input tokens: only billed units count.
    let want: u64 = [(1000, 200), (3000, 400)]
        .into_iter()
        .map(|(p, c)| {
            cost(
                "command-r-08-2024",
                Usage {
                    input_uncached: p,
                    output: c,
                    ..Usage::default()
                },
            )
        })
        .sum();
    assert_eq!(e.settled_spend("acme.cohere.bot"), want);
    // An unpriced Cohere model is refused before it reaches Cohere.
    let before = e.fake.request_count();
    let (status, _, out) = curl_host(
        e.at(),
        &e.ca,
        "api.cohere.com",
        "/v2/chat",
        &["--data-binary", r#"{"model":"command-z-99","messages":[]}"#],
    );
    assert_eq!(status, 402, "{out}");
    assert!(out.contains("unknown_model"), "{out}");
    assert_eq!(e.fake.request_count(), before);
}

/// A self-hosted OpenAI-compatible server named in `extra_provider_hosts` with a configured
/// price is metered (a stream's usage comes from the injected `include_usage`); its other
/// models are refused as unknown.
#[test]
fn self_hosted_server_on_extra_provider_hosts_is_metered_at_its_configured_price() {
    if !privileged() {
        return;
    }
    let e = Env::with("acme.local.bot", |w| {
        w.set_agent_config(&format!(
            "extra_provider_hosts = [\"{SELF_HOSTED}\"]\n[prices.\"Qwen/Qwen2.5-7B-Instruct\"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n"
        ));
    });
    let call = |body: &str, usage: &str| {
        curl_host(
            e.at(),
            &e.ca,
            SELF_HOSTED,
            "/v1/chat/completions",
            &[
                "-H",
                "content-type: application/json",
                "-H",
                &format!("x-fake-usage: {usage}"),
                "--data-binary",
                body,
            ],
        )
    };
    let json = r#"{"model":"Qwen/Qwen2.5-7B-Instruct","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = r#"{"model":"Qwen/Qwen2.5-7B-Instruct","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, out) = call(json, "prompt=100000,completion=10000");
    assert_eq!(status, 200, "{out}");
    let (status, _, out) = call(stream, "prompt=50000,completion=5000");
    assert_eq!(status, 200, "{out}");
    assert!(
        !out.contains("\"choices\":[]"),
        "the injected usage chunk is hidden: {out}"
    );
    let sent = e.fake.requests();
    let last = sent.last().expect("the server saw the stream");
    let body: serde_json::Value = serde_json::from_slice(&last.body).expect("json");
    assert_eq!(body["stream_options"]["include_usage"], true);
    // $2 and $8 per million: 0.2 + 0.08, then 0.1 + 0.04 dollars.
    assert_eq!(e.settled_spend("acme.local.bot"), 420_000);
    let before = e.fake.request_count();
    let (status, _, out) = call(
        r#"{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi"}]}"#,
        "",
    );
    assert_eq!(status, 402, "{out}");
    assert!(out.contains("unknown_model"), "{out}");
    assert_eq!(e.fake.request_count(), before);
}

/// Perplexity is charged its tokens plus the request fee of the search context size the answer
/// reports (from the token counts and the table, not Perplexity's float `cost`); a stream's
/// cumulative per-chunk usage is charged once. Deep research, whose searches nothing bounds, is
/// refused before it reaches Perplexity.
#[test]
fn perplexity_is_charged_tokens_plus_its_request_fee() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.pplx.bot");
    let call = |path: &str, body: &str, usage: &str| {
        curl_host(
            e.at(),
            &e.ca,
            "api.perplexity.ai",
            path,
            &[
                "-H",
                "authorization: Bearer pplx-test-key",
                "-H",
                "content-type: application/json",
                "-H",
                &format!("x-fake-usage: {usage}"),
                "-H",
                "x-fake-chunks: 4",
                "--data-binary",
                body,
            ],
        )
    };
    let json = r#"{"model":"sonar-pro","max_tokens":300,"messages":[{"role":"user","content":"hi"}],"web_search_options":{"search_context_size":"medium"}}"#;
    let stream = r#"{"model":"sonar","max_tokens":300,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, out) = call("/chat/completions", json, "prompt=1000,completion=200");
    assert_eq!(status, 200, "{out}");
    // Reserved: the tokens' worst case plus the medium fee ($0.010).
    let reserved = headers
        .lines()
        .find_map(|l| l.strip_prefix("x-spendguard-reserved-usd: "))
        .unwrap_or_else(|| panic!("no reservation header: {headers}"));
    let reserved: f64 = reserved
        .trim()
        .trim_start_matches('$')
        .parse()
        .expect("usd");
    assert!(reserved >= 0.010, "{reserved}");
    let (status, headers, out) = call("/chat/completions", stream, "prompt=3000,completion=400");
    assert_eq!(status, 200, "{out}");
    assert!(headers.contains("text/event-stream"), "{headers}");
    assert!(
        out.contains("\"finish_reason\":\"stop\""),
        "the client sees the whole stream: {out}"
    );
    let sized = |p, c, size| Usage {
        input_uncached: p,
        output: c,
        search_context: Some(size),
        ..Usage::default()
    };
    // sonar-pro at medium (asked), sonar at low (not asked; the answer reports low).
    let want = cost(
        "perplexity/sonar-pro",
        sized(1000, 200, spendguard_pricing::SearchContext::Medium),
    ) + cost(
        "perplexity/sonar",
        sized(3000, 400, spendguard_pricing::SearchContext::Low),
    );
    // $3/M in, $15/M out + $0.010; $1/M in and out + $0.005.
    assert_eq!(want, (3_000 + 3_000 + 10_000) + (3_000 + 400 + 5_000));
    assert_eq!(e.settled_spend("acme.pplx.bot"), want);
    let before = e.fake.request_count();
    let (status, _, out) = call(
        "/chat/completions",
        r#"{"model":"sonar-deep-research","messages":[{"role":"user","content":"research"}]}"#,
        "",
    );
    assert_eq!(status, 402, "{out}");
    assert!(out.contains("unpriced_request"), "{out}");
    assert_eq!(e.fake.request_count(), before);
}
