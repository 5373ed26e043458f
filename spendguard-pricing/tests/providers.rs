//! The shared suite, stamped onto every provider with `provider_suite!`.

mod common;

use common::fixtures::*;
use common::*;
use proptest::prelude::*;
use spendguard_pricing::{ProviderId, SearchContext, Usage};

macro_rules! provider_suite {
    ($($name:ident => $case:expr;)+) => {$(
        mod $name {
            use super::*;

            fn case() -> Case {
                $case
            }

            #[test]
            fn routes_priced_free_unpriced() {
                check_routes(&case());
            }

            #[test]
            fn json_body_gives_exact_usage_and_passes_unchanged() {
                check_json_usage(&case());
            }

            #[test]
            fn worst_case_bounds_the_real_cost() {
                check_worst_case_bounds_real_cost(&case());
            }

            #[test]
            fn sse_usage_is_the_same_at_every_split() {
                check_sse_every_split(&case());
            }

            #[test]
            fn truncated_streams_and_bodies_report_no_usage() {
                check_truncated_streams(&case());
            }

            #[test]
            fn malformed_bodies_never_panic() {
                check_malformed_bodies(&case());
            }

            #[test]
            fn error_responses_are_not_billed() {
                check_errors_are_not_billed(&case());
            }

            #[test]
            fn unknown_model_is_refused() {
                check_unknown_model(&case());
            }

            #[test]
            fn output_cap_is_written_and_nothing_else_changes() {
                check_output_cap_rewrite(&case());
            }

            #[test]
            fn stream_rewrite_only_where_usage_is_injected() {
                check_stream_rewrite(&case());
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                #[test]
                fn random_chunking_gives_the_same_bytes_and_usage(cuts in proptest::collection::vec(0usize..100_000, 0..24)) {
                    check_random_splits(&case(), &cuts);
                }
            }
        }
    )+};
}

fn usage(input_uncached: u64, input_cached: u64, output: u64, reasoning: u64) -> Usage {
    Usage {
        input_uncached,
        input_cached,
        output,
        reasoning,
        ..Usage::default()
    }
}

provider_suite! {
    openai_chat => Case {
        provider: ProviderId::OpenAi,
        path: "/v1/chat/completions",
        request: OPENAI_CHAT_REQUEST,
        headers: &[],
        json_response: OPENAI_CHAT_RESPONSE,
        json_usage: usage(93, 1024, 46, 0),
        stream_path: "/v1/chat/completions",
        stream_request: OPENAI_CHAT_STREAM_REQUEST,
        sse: OPENAI_CHAT_SSE,
        sse_usage: usage(9, 0, 9, 0),
        sse_final_marker: "\"choices\":[],\"usage\"",
        injected_chunk: Some(OPENAI_CHAT_SSE_USAGE_CHUNK),
        limit_pointer: "/max_completion_tokens",
        choices: 2,
        cap_bounds_output: true,
        unknown_model: ("/v1/chat/completions", r#"{"model":"gpt-9-ultra","messages":[]}"#, "gpt-9-ultra"),
        unpriced: &[("POST", "/v1/batches"), ("POST", "/v1/files"), ("GET", "/v1/realtime?model=gpt-realtime"),
            ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/images/generations"), ("POST", "/v1/uploads")],
        free: &[("GET", "/v1/models"), ("POST", "/v1/responses/input_tokens"), ("DELETE", "/v1/responses/resp_1")],
    };
    openai_responses => Case {
        provider: ProviderId::OpenAi,
        path: "/v1/responses",
        request: OPENAI_RESPONSES_FOLLOWUP_REQUEST,
        headers: &[],
        json_response: OPENAI_RESPONSES_JSON,
        json_usage: usage(33, 2048, 300, 256),
        stream_path: "/v1/responses",
        stream_request: OPENAI_RESPONSES_REQUEST,
        sse: OPENAI_RESPONSES_SSE,
        sse_usage: usage(81, 0, 1035, 832),
        sse_final_marker: "\"type\":\"response.completed\"",
        injected_chunk: None,
        limit_pointer: "/max_output_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v1/responses", r#"{"model":"o9-mini","input":"hi"}"#, "o9-mini"),
        unpriced: &[("POST", "/v1/batches"), ("POST", "/v1/fine_tuning/jobs")],
        free: &[("GET", "/v1/responses/resp_1"), ("POST", "/v1/responses/resp_1/cancel")],
    };
    azure => Case {
        provider: ProviderId::AzureOpenAi,
        path: "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
        request: AZURE_CHAT_REQUEST,
        headers: &[("api-key", "test")],
        json_response: AZURE_CHAT_RESPONSE,
        json_usage: usage(14, 0, 7, 0),
        stream_path: "/openai/deployments/prod-4o/chat/completions?api-version=2025-04-01-preview",
        stream_request: AZURE_CHAT_STREAM_REQUEST,
        sse: AZURE_CHAT_SSE,
        sse_usage: usage(8, 0, 3, 0),
        sse_final_marker: "\"choices\":[],\"created\":1741570283",
        injected_chunk: Some(AZURE_CHAT_SSE_USAGE_CHUNK),
        limit_pointer: "/max_completion_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/openai/deployments/unmapped-dep/chat/completions?api-version=2024-10-21", AZURE_CHAT_REQUEST, "unmapped-dep"),
        unpriced: &[("POST", "/openai/deployments/prod-4o/audio/transcriptions?api-version=2024-10-21"),
            ("POST", "/openai/v1/batches"), ("POST", "/openai/files?api-version=2024-10-21"), ("GET", "/openai/realtime")],
        free: &[("GET", "/openai/deployments?api-version=2024-10-21"), ("GET", "/openai/v1/models")],
    };
    anthropic => Case {
        provider: ProviderId::Anthropic,
        path: "/v1/messages",
        request: ANTHROPIC_REQUEST,
        headers: &[("anthropic-version", "2023-06-01")],
        json_response: ANTHROPIC_RESPONSE,
        json_usage: Usage { input_uncached: 2095, cache_write_1h: 4096, output: 503, ..Usage::default() },
        stream_path: "/v1/messages",
        stream_request: ANTHROPIC_STREAM_REQUEST,
        sse: ANTHROPIC_SSE,
        sse_usage: usage(9, 0, 15, 0),
        sse_final_marker: "event: message_delta",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v1/messages", r#"{"model":"claude-imaginary-9","max_tokens":5,"messages":[]}"#, "claude-imaginary-9"),
        unpriced: &[("POST", "/v1/messages/batches"), ("POST", "/v1/files"), ("POST", "/v1/complete")],
        free: &[("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models"), ("GET", "/v1/messages/batches/b1")],
    };
    gemini => Case {
        provider: ProviderId::Gemini,
        path: "/v1beta/models/gemini-2.5-flash:generateContent?key=AIza-test",
        request: GEMINI_REQUEST,
        headers: &[],
        json_response: GEMINI_RESPONSE,
        json_usage: usage(265, 1024, 499, 485),
        stream_path: "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        stream_request: GEMINI_STREAM_REQUEST,
        sse: GEMINI_SSE,
        sse_usage: usage(8, 0, 1009, 1000),
        sse_final_marker: "\"finishReason\": \"STOP\"",
        injected_chunk: None,
        limit_pointer: "/generationConfig/maxOutputTokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v1beta/models/gemini-0.1-imaginary:generateContent", r#"{"contents":[]}"#, "gemini-0.1-imaginary"),
        unpriced: &[("POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent"), ("POST", "/v1beta/cachedContents"),
            ("POST", "/upload/v1beta/files?uploadType=resumable"), ("POST", "/v1beta/models/imagen-4.0-generate-001:predict")],
        free: &[("POST", "/v1beta/models/gemini-2.5-flash:countTokens"), ("GET", "/v1beta/models")],
    };
    mistral => Case {
        provider: ProviderId::Mistral,
        path: "/v1/chat/completions",
        request: MISTRAL_REQUEST,
        headers: &[],
        json_response: MISTRAL_RESPONSE,
        json_usage: usage(16, 0, 34, 0),
        stream_path: "/v1/chat/completions",
        stream_request: MISTRAL_STREAM_REQUEST,
        sse: MISTRAL_SSE,
        sse_usage: usage(10, 0, 4, 0),
        sse_final_marker: "\"finish_reason\":\"stop\"",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v1/chat/completions", r#"{"model":"mistral-imaginary","messages":[]}"#, "mistral-imaginary"),
        unpriced: &[("POST", "/v1/batch/jobs"), ("POST", "/v1/files"), ("POST", "/v1/ocr"), ("POST", "/v1/agents/completions")],
        free: &[("GET", "/v1/models")],
    };
    groq => Case {
        provider: ProviderId::Groq,
        path: "/openai/v1/chat/completions",
        request: GROQ_REQUEST,
        headers: &[],
        json_response: GROQ_RESPONSE,
        json_usage: usage(18, 0, 556, 0),
        stream_path: "/openai/v1/chat/completions",
        stream_request: GROQ_STREAM_REQUEST,
        sse: GROQ_SSE,
        sse_usage: usage(36, 0, 10, 0),
        sse_final_marker: "\"x_groq\":{\"id\":\"req_01jbd6g2qdfw\",\"usage\"",
        injected_chunk: None,
        limit_pointer: "/max_completion_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/openai/v1/chat/completions", r#"{"model":"llama-9-1t","messages":[]}"#, "llama-9-1t"),
        unpriced: &[("POST", "/openai/v1/batches"), ("POST", "/openai/v1/audio/transcriptions"), ("POST", "/openai/v1/files")],
        free: &[("GET", "/openai/v1/models")],
    };
    deepseek => Case {
        provider: ProviderId::DeepSeek,
        path: "/chat/completions",
        request: DEEPSEEK_REQUEST,
        headers: &[],
        json_response: DEEPSEEK_RESPONSE,
        json_usage: usage(16, 0, 10, 0),
        stream_path: "/v1/chat/completions",
        stream_request: DEEPSEEK_STREAM_REQUEST,
        sse: DEEPSEEK_SSE,
        sse_usage: usage(17, 0, 321, 300),
        sse_final_marker: "\"choices\":[],\"usage\"",
        injected_chunk: Some(DEEPSEEK_SSE_USAGE_CHUNK),
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/chat/completions", r#"{"model":"deepseek-v9","messages":[]}"#, "deepseek-v9"),
        unpriced: &[("POST", "/v1/files"), ("POST", "/v1/new-endpoint")],
        free: &[("GET", "/models"), ("GET", "/user/balance")],
    };
    together => Case {
        provider: ProviderId::Together,
        path: "/v1/chat/completions",
        request: TOGETHER_REQUEST,
        headers: &[],
        json_response: TOGETHER_RESPONSE,
        json_usage: usage(48, 0, 6, 0),
        stream_path: "/v1/chat/completions",
        stream_request: TOGETHER_STREAM_REQUEST,
        sse: TOGETHER_SSE,
        sse_usage: usage(36, 0, 2, 0),
        sse_final_marker: "\"finish_reason\":\"eos\"",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v1/chat/completions", r#"{"model":"acme/Imaginary-9B","messages":[]}"#, "acme/Imaginary-9B"),
        unpriced: &[("POST", "/v1/images/generations"), ("POST", "/v1/audio/speech"), ("POST", "/v1/rerank"), ("POST", "/v1/fine-tunes")],
        free: &[("GET", "/v1/models")],
    };
    openrouter => Case {
        provider: ProviderId::OpenRouter,
        path: "/api/v1/chat/completions",
        request: OPENROUTER_REQUEST,
        headers: &[],
        json_response: OPENROUTER_RESPONSE,
        json_usage: Usage { input_uncached: 44, input_cached: 64, cache_write_5m: 32, output: 71, ..Usage::default() },
        stream_path: "/api/v1/chat/completions",
        stream_request: OPENROUTER_STREAM_REQUEST,
        sse: OPENROUTER_SSE,
        sse_usage: usage(8, 0, 3, 0),
        sse_final_marker: "\"usage\":{\"prompt_tokens\":8",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/api/v1/chat/completions", r#"{"model":"meta-llama/llama-9-400b","messages":[]}"#, "meta-llama/llama-9-400b"),
        unpriced: &[("POST", "/api/v1/images/generations"), ("POST", "/api/v1/credits/coinbase")],
        free: &[("GET", "/api/v1/models"), ("GET", "/api/v1/generation?id=gen-1")],
    };
    xai => Case {
        provider: ProviderId::Xai,
        path: "/v1/chat/completions",
        request: XAI_REQUEST,
        headers: &[],
        json_response: XAI_RESPONSE,
        json_usage: usage(26, 6, 131, 130),
        stream_path: "/v1/chat/completions",
        stream_request: XAI_STREAM_REQUEST,
        sse: XAI_SSE,
        sse_usage: usage(15, 5, 123, 119),
        sse_final_marker: "\"finish_reason\":\"stop\"",
        injected_chunk: None,
        limit_pointer: "/max_completion_tokens",
        choices: 1,
        cap_bounds_output: false,
        unknown_model: ("/v1/chat/completions", r#"{"model":"grok-99","messages":[]}"#, "grok-99"),
        unpriced: &[("POST", "/v1/images/generations"), ("GET", "/v1/realtime")],
        free: &[("GET", "/v1/models"), ("GET", "/v1/api-key")],
    };
    cohere => Case {
        provider: ProviderId::Cohere,
        path: "/v2/chat",
        request: COHERE_REQUEST,
        headers: &[],
        json_response: COHERE_RESPONSE,
        json_usage: usage(21, 0, 105, 0),
        stream_path: "/v2/chat",
        stream_request: COHERE_STREAM_REQUEST,
        sse: COHERE_SSE,
        sse_usage: usage(3, 0, 9, 0),
        sse_final_marker: "\"type\":\"message-end\"",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v2/chat", r#"{"model":"command-z-99","messages":[]}"#, "command-z-99"),
        unpriced: &[("POST", "/v1/chat"), ("POST", "/v2/rerank"), ("POST", "/v1/datasets")],
        free: &[("GET", "/v1/models"), ("POST", "/v1/tokenize"), ("POST", "/v1/detokenize")],
    };
    fireworks => Case {
        provider: ProviderId::Fireworks,
        path: "/inference/v1/chat/completions",
        request: FIREWORKS_REQUEST,
        headers: &[],
        json_response: FIREWORKS_RESPONSE,
        json_usage: usage(17, 0, 6, 0),
        stream_path: "/inference/v1/chat/completions",
        stream_request: FIREWORKS_STREAM_REQUEST,
        sse: FIREWORKS_SSE,
        sse_usage: usage(70, 0, 21, 0),
        sse_final_marker: "\"finish_reason\":\"stop\"",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/inference/v1/chat/completions", r#"{"model":"accounts/acme/models/imaginary-9b","messages":[]}"#, "accounts/acme/models/imaginary-9b"),
        unpriced: &[("POST", "/inference/v1/images/generations"), ("POST", "/inference/v1/audio/transcriptions"), ("POST", "/v1/chat/completions")],
        free: &[("GET", "/inference/v1/models")],
    };
    cerebras => Case {
        provider: ProviderId::Cerebras,
        path: "/v1/chat/completions",
        request: CEREBRAS_REQUEST,
        headers: &[],
        json_response: CEREBRAS_RESPONSE,
        json_usage: usage(12, 0, 10, 0),
        stream_path: "/v1/chat/completions",
        stream_request: CEREBRAS_STREAM_REQUEST,
        sse: CEREBRAS_SSE,
        sse_usage: usage(16, 64, 40, 0),
        sse_final_marker: "\"finish_reason\":\"stop\"",
        injected_chunk: None,
        limit_pointer: "/max_completion_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/v1/chat/completions", r#"{"model":"llama-99-9000b","messages":[]}"#, "llama-99-9000b"),
        unpriced: &[("POST", "/v1/batches"), ("POST", "/v1/files")],
        free: &[("GET", "/v1/models")],
    };
    perplexity => Case {
        provider: ProviderId::Perplexity,
        path: "/chat/completions",
        request: PERPLEXITY_REQUEST,
        headers: &[],
        json_response: PERPLEXITY_RESPONSE,
        json_usage: Usage { search_context: Some(SearchContext::Low), ..usage(14, 0, 221, 0) },
        stream_path: "/v1/chat/completions",
        stream_request: PERPLEXITY_STREAM_REQUEST,
        sse: PERPLEXITY_SSE,
        sse_usage: Usage { search_context: Some(SearchContext::Low), ..usage(8, 0, 9, 0) },
        sse_final_marker: "\"finish_reason\":\"stop\"",
        injected_chunk: None,
        limit_pointer: "/max_tokens",
        choices: 1,
        cap_bounds_output: true,
        unknown_model: ("/chat/completions", r#"{"model":"sonar-ultra-9","messages":[]}"#, "sonar-ultra-9"),
        unpriced: &[("POST", "/v1/responses"), ("POST", "/async/chat/completions"), ("POST", "/search"), ("POST", "/v1/batches")],
        free: &[("GET", "/v1/models"), ("GET", "/async/chat/completions/req-1")],
    };
}
