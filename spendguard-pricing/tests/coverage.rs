//! Every adapter's models have prices: one priced request per provider (and per Bedrock model
//! family) must quote, so no provider on the list can only ever answer `unknown_model`. The
//! agent's own test (`proxy::route`) checks that every bundled provider host has an adapter.

use http::{HeaderMap, Method};
use spendguard_pricing::{adapter_for, PriceTable, ProviderId, QuoteOptions, Route};

const CHAT: &str =
    r#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;

/// (provider, path, body with MODEL replaced, models that must be priced).
fn cases() -> Vec<(ProviderId, &'static str, &'static str, Vec<&'static str>)> {
    let converse = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":5}}"#;
    vec![
        (
            ProviderId::OpenAi,
            "/v1/chat/completions",
            CHAT,
            vec!["gpt-4o-mini", "gpt-4o"],
        ),
        (
            ProviderId::Anthropic,
            "/v1/messages",
            CHAT,
            vec!["claude-sonnet-4-5", "claude-haiku-4-5"],
        ),
        (
            ProviderId::Mistral,
            "/v1/chat/completions",
            CHAT,
            vec!["mistral-large-latest"],
        ),
        (
            ProviderId::Groq,
            "/openai/v1/chat/completions",
            CHAT,
            vec!["llama-3.3-70b-versatile"],
        ),
        (
            ProviderId::DeepSeek,
            "/chat/completions",
            CHAT,
            vec!["deepseek-chat"],
        ),
        (
            ProviderId::Together,
            "/v1/chat/completions",
            CHAT,
            vec!["meta-llama/Llama-3.3-70B-Instruct-Turbo"],
        ),
        (
            ProviderId::OpenRouter,
            "/api/v1/chat/completions",
            CHAT,
            vec!["openai/gpt-4o-mini"],
        ),
        (
            ProviderId::Xai,
            "/v1/chat/completions",
            CHAT,
            vec!["grok-4"],
        ),
        (
            ProviderId::Bedrock,
            "/model/MODEL/converse",
            converse,
            vec![
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                "meta.llama3-3-70b-instruct-v1:0",
                "us.meta.llama4-maverick-17b-instruct-v1:0",
                "mistral.mistral-large-2407-v1:0",
                "amazon.nova-pro-v1:0",
                "eu.amazon.nova-lite-v1:0",
                "cohere.command-text-v14",
            ],
        ),
        (
            ProviderId::Vertex,
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/MODEL:rawPredict",
            r#"{"anthropic_version":"vertex-2023-10-16","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            vec![
                "claude-sonnet-4-5@20250929",
                "claude-haiku-4-5@20251001",
                "claude-opus-4-6@default",
            ],
        ),
        (
            ProviderId::Vertex,
            "/v1/projects/p/locations/us-central1/publishers/google/models/MODEL:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            vec!["gemini-2.5-flash", "gemini-2.5-pro"],
        ),
        (
            ProviderId::Cohere,
            "/v2/chat",
            CHAT,
            vec![
                "command-a-03-2025",
                "command-r-08-2024",
                "command-r7b-12-2024",
            ],
        ),
        (
            ProviderId::Fireworks,
            "/inference/v1/chat/completions",
            CHAT,
            vec![
                "accounts/fireworks/models/llama-v3p1-8b-instruct",
                "accounts/fireworks/models/gpt-oss-120b",
            ],
        ),
        (
            ProviderId::Cerebras,
            "/v1/chat/completions",
            CHAT,
            vec!["gpt-oss-120b", "llama3.1-8b", "qwen-3-32b"],
        ),
        (
            ProviderId::Perplexity,
            "/chat/completions",
            CHAT,
            vec![
                "sonar",
                "sonar-pro",
                "sonar-reasoning",
                "sonar-reasoning-pro",
            ],
        ),
    ]
}

#[test]
fn every_adapter_prices_its_models() {
    let table = PriceTable::bundled();
    for (id, path, body, models) in cases() {
        let adapter = adapter_for(id);
        assert_eq!(adapter.id(), id);
        for m in models {
            let path = path.replace("MODEL", &m.replace(':', "%3A"));
            let body = body.replace("MODEL", m);
            assert_eq!(
                adapter.route(&Method::POST, &path),
                Route::Priced,
                "{id} {path}"
            );
            let q = adapter.quote(
                &Method::POST,
                &path,
                &HeaderMap::new(),
                body.as_bytes(),
                &table,
                &QuoteOptions::none(),
            );
            let q = q.unwrap_or_else(|e| panic!("{id} {m}: {e}"));
            assert!(q.worst_case.0 > 0, "{id} {m}: a zero worst case");
        }
    }
    // Every provider is covered (Azure names deployments, mapped to the models above; Gemini's
    // model is in the path and is covered by the provider suite; the Hugging Face router and
    // self-hosted servers bill what their operator or backend sets, so their prices are
    // configured, not bundled: `configured_prices_cover_the_unbundled_providers`).
    let covered: Vec<ProviderId> = cases().iter().map(|c| c.0).collect();
    for id in ProviderId::ALL {
        assert!(
            covered.contains(&id)
                || matches!(
                    id,
                    ProviderId::AzureOpenAi
                        | ProviderId::Gemini
                        | ProviderId::HuggingFace
                        | ProviderId::SelfHosted
                ),
            "{id} has no coverage case"
        );
    }
}

/// The providers without bundled prices quote once their model is priced in the config (the
/// same `PriceTable::set` a `[prices."NAME"]` entry or `spendguard price set` makes), and are
/// refused as `unknown_model` before that.
#[test]
fn configured_prices_cover_the_unbundled_providers() {
    for (id, path, model) in [
        (
            ProviderId::HuggingFace,
            "/v1/chat/completions",
            "meta-llama/Llama-3.1-8B-Instruct:cerebras",
        ),
        (
            ProviderId::SelfHosted,
            "/v1/chat/completions",
            "Qwen/Qwen2.5-7B-Instruct",
        ),
        (ProviderId::SelfHosted, "/chat/completions", "llama3.2:3b"),
    ] {
        let body = CHAT.replace("MODEL", model);
        let quote = |table: &PriceTable| {
            adapter_for(id).quote(
                &Method::POST,
                path,
                &HeaderMap::new(),
                body.as_bytes(),
                table,
                &QuoteOptions::none(),
            )
        };
        let mut table = PriceTable::bundled();
        assert!(
            matches!(
                quote(&table),
                Err(spendguard_pricing::PricingError::UnknownModel { .. })
            ),
            "{id} {model} must be refused unpriced"
        );
        table.set(
            model,
            spendguard_pricing::ModelPrice {
                input_per_mtok: spendguard_pricing::MicroUsd(1_000_000),
                output_per_mtok: spendguard_pricing::MicroUsd(2_000_000),
                max_output_tokens: 4096,
                context_window: 32_768,
                ..Default::default()
            },
        );
        let q = quote(&table).unwrap_or_else(|e| panic!("{id} {model}: {e}"));
        assert_eq!(q.model, model);
        assert!(q.worst_case.0 > 0, "{id} {model}");
    }
}

/// Perplexity's deep research is refused (its searches, citation and reasoning tokens are not
/// bounded by any request field: see `providers::perplexity`), though its prices are bundled;
/// reads stay free.
#[test]
fn perplexity_deep_research_is_refused_not_undercharged() {
    let a = adapter_for(ProviderId::Perplexity);
    let table = PriceTable::bundled();
    assert!(table.lookup("perplexity/sonar-deep-research").is_some());
    let body = CHAT.replace("MODEL", "sonar-deep-research");
    let q = a.quote(
        &Method::POST,
        "/chat/completions",
        &HeaderMap::new(),
        body.as_bytes(),
        &table,
        &QuoteOptions::none(),
    );
    assert!(
        matches!(q, Err(spendguard_pricing::PricingError::Unpriced { .. })),
        "{q:?}"
    );
    assert!(matches!(
        a.route(&Method::POST, "/v1/responses"),
        Route::Unpriced { .. }
    ));
    assert_eq!(a.route(&Method::GET, "/v1/models"), Route::Free);
}
