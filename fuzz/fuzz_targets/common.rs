//! Shared by the fuzz targets: which provider and endpoint an input exercises.

use spendguard_pricing::providers::ProviderId;

pub const PROVIDERS: [ProviderId; 12] = [
    ProviderId::OpenAi,
    ProviderId::AzureOpenAi,
    ProviderId::Anthropic,
    ProviderId::Gemini,
    ProviderId::Mistral,
    ProviderId::Groq,
    ProviderId::DeepSeek,
    ProviderId::Together,
    ProviderId::OpenRouter,
    ProviderId::Xai,
    ProviderId::Bedrock,
    ProviderId::Vertex,
];

pub const PATHS: [&str; 14] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
    "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
    "/openai/v1/chat/completions",
    "/v1/chat/completions?x=1",
    "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
    "/model/amazon.nova-pro-v1%3A0/converse",
    "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
    "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
];

/// Splits the selector byte off the input.
pub fn pick(data: &[u8]) -> Option<(ProviderId, &'static str, &[u8])> {
    let (&sel, rest) = data.split_first()?;
    let provider = PROVIDERS[(sel as usize) % PROVIDERS.len()];
    let path = PATHS[((sel as usize) / PROVIDERS.len()) % PATHS.len()];
    Some((provider, path, rest))
}
