//! Request and response bodies in the providers' real wire formats (field names, nesting, event
//! names and framing as the APIs send them; ids shortened).

// ----------------------------------------------------------------------------- OpenAI

pub const OPENAI_CHAT_REQUEST: &str = r#"{
  "model": "gpt-4o",
  "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [
      {"type": "text", "text": "What is in this image? Answer in one sentence — précisément."},
      {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
    ]}
  ],
  "temperature": 0.7,
  "seed": 123456789012345678901234567890,
  "n": 2
}"#;

pub const OPENAI_CHAT_RESPONSE: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "A cat sleeping on a sofa.", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"},
    {"index": 1, "message": {"role": "assistant", "content": "A sleepy cat.", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;

pub const OPENAI_CHAT_STREAM_REQUEST: &str = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":256,"messages":[{"role":"user","content":"Say hello"}]}"#;

/// What OpenAI sends once `include_usage` is set (our injection).
pub const OPENAI_CHAT_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-B9MBs8Cjcv\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9MBs8Cjcv\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello! \"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9MBs8Cjcv\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"How can I help?\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9MBs8Cjcv\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9MBs8Cjcv\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9,\"total_tokens\":18,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

/// The usage-only chunk of [`OPENAI_CHAT_SSE`], as the client must never see it.
pub const OPENAI_CHAT_SSE_USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-B9MBs8Cjcv\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9,\"total_tokens\":18,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n";

pub const OPENAI_RESPONSES_REQUEST: &str = r#"{
  "model": "o4-mini",
  "instructions": "Answer tersely.",
  "input": [
    {"role": "user", "content": [
      {"type": "input_text", "text": "Prove that there are infinitely many primes."}
    ]}
  ],
  "reasoning": {"effort": "medium"},
  "tools": [{"type": "function", "name": "lookup", "description": "Look a fact up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}],
  "stream": true
}"#;

pub const OPENAI_RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_67ccd2bed1ec8190\",\"object\":\"response\",\"created_at\":1741476542,\"status\":\"in_progress\",\"model\":\"o4-mini-2025-04-16\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.in_progress\n",
    "data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_67ccd2bed1ec8190\",\"object\":\"response\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"item_id\":\"msg_67ccd2bf17f0\",\"output_index\":1,\"content_index\":0,\"delta\":\"Suppose finitely many; multiply them and add one.\",\"logprobs\":[]}\n\n",
    "event: response.output_text.done\n",
    "data: {\"type\":\"response.output_text.done\",\"sequence_number\":6,\"item_id\":\"msg_67ccd2bf17f0\",\"output_index\":1,\"content_index\":0,\"text\":\"Suppose finitely many; multiply them and add one.\",\"logprobs\":[]}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_67ccd2bed1ec8190\",\"object\":\"response\",\"created_at\":1741476542,\"status\":\"completed\",\"model\":\"o4-mini-2025-04-16\",\"output\":[],\"usage\":{\"input_tokens\":81,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":1035,\"output_tokens_details\":{\"reasoning_tokens\":832},\"total_tokens\":1116}}}\n\n",
);

/// A follow-up turn: the earlier turns are server-side (`previous_response_id`), so the input is
/// bounded only by the context window.
pub const OPENAI_RESPONSES_FOLLOWUP_REQUEST: &str = r#"{"model":"o4-mini","previous_response_id":"resp_67ccd2bed1ec8190","input":"And a second proof?","store":true}"#;

pub const OPENAI_RESPONSES_JSON: &str = r#"{
  "id": "resp_67ccd3a9da748190",
  "object": "response",
  "created_at": 1741476777,
  "status": "completed",
  "model": "o4-mini-2025-04-16",
  "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "Euclid.", "annotations": []}]}],
  "usage": {"input_tokens": 2081, "input_tokens_details": {"cached_tokens": 2048}, "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 256}, "total_tokens": 2381}
}"#;

pub const OPENAI_EMBEDDINGS_REQUEST: &str = r#"{"model":"text-embedding-3-small","input":["The food was delicious","and the waiter…"],"encoding_format":"float"}"#;

pub const OPENAI_EMBEDDINGS_RESPONSE: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292]},{"object":"embedding","index":1,"embedding":[0.01,-0.02]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":11,"total_tokens":11}}"#;

// ----------------------------------------------------------------------------- Azure

pub const AZURE_CHAT_REQUEST: &str =
    r#"{"messages":[{"role":"user","content":"Summarise the quarterly report."}],"temperature":0}"#;

pub const AZURE_CHAT_STREAM_REQUEST: &str =
    r#"{"messages":[{"role":"user","content":"Hi"}],"stream":true,"max_completion_tokens":100}"#;

pub const AZURE_CHAT_RESPONSE: &str = r#"{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Revenue grew 12%.","refusal":null,"role":"assistant"}}],"created":1741570283,"id":"chatcmpl-AzX1","model":"gpt-4o-2024-11-20","object":"chat.completion","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}],"system_fingerprint":"fp_ee1d74bde0","usage":{"completion_tokens":7,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":14,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":21}}"#;

/// Azure: a content-filter chunk with `choices: []` and no usage comes first; it must survive.
pub const AZURE_CHAT_SSE: &str = concat!(
    "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\r\n\r\n",
    "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"\",\"refusal\":null,\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0,\"logprobs\":null}],\"created\":1741570283,\"id\":\"chatcmpl-AzX2\",\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp_ee1d74bde0\",\"usage\":null}\r\n\r\n",
    "data: {\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}},\"delta\":{\"content\":\"Hello!\"},\"finish_reason\":null,\"index\":0,\"logprobs\":null}],\"created\":1741570283,\"id\":\"chatcmpl-AzX2\",\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp_ee1d74bde0\",\"usage\":null}\r\n\r\n",
    "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{},\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":null}],\"created\":1741570283,\"id\":\"chatcmpl-AzX2\",\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp_ee1d74bde0\",\"usage\":null}\r\n\r\n",
    "data: {\"choices\":[],\"created\":1741570283,\"id\":\"chatcmpl-AzX2\",\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp_ee1d74bde0\",\"usage\":{\"completion_tokens\":3,\"completion_tokens_details\":{\"accepted_prediction_tokens\":0,\"audio_tokens\":0,\"reasoning_tokens\":0,\"rejected_prediction_tokens\":0},\"prompt_tokens\":8,\"prompt_tokens_details\":{\"audio_tokens\":0,\"cached_tokens\":0},\"total_tokens\":11}}\r\n\r\n",
    "data: [DONE]\r\n\r\n",
);

pub const AZURE_CHAT_SSE_USAGE_CHUNK: &str = "data: {\"choices\":[],\"created\":1741570283,\"id\":\"chatcmpl-AzX2\",\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp_ee1d74bde0\",\"usage\":{\"completion_tokens\":3,\"completion_tokens_details\":{\"accepted_prediction_tokens\":0,\"audio_tokens\":0,\"reasoning_tokens\":0,\"rejected_prediction_tokens\":0},\"prompt_tokens\":8,\"prompt_tokens_details\":{\"audio_tokens\":0,\"cached_tokens\":0},\"total_tokens\":11}}\r\n\r\n";

// ----------------------------------------------------------------------------- Anthropic

pub const ANTHROPIC_REQUEST: &str = r#"{
  "model": "claude-sonnet-4-5-20250929",
  "system": [
    {"type": "text", "text": "You are a contract lawyer."},
    {"type": "text", "text": "<the whole contract text would be here>", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
  ],
  "messages": [
    {"role": "user", "content": [
      {"type": "image", "source": {"type": "url", "url": "https://example.com/signature.png"}},
      {"type": "text", "text": "Is this signature page complete?"}
    ]}
  ],
  "tools": [{"name": "get_clause", "description": "Fetch a clause", "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}}}]
}"#;

pub const ANTHROPIC_RESPONSE: &str = r#"{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [{"type": "text", "text": "Yes: both parties signed and dated it."}],
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 4096,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 4096},
    "output_tokens": 503,
    "service_tier": "standard",
    "server_tool_use": null
  }
}"#;

pub const ANTHROPIC_STREAM_REQUEST: &str = r#"{"model":"claude-haiku-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"Hello"}]}"#;

pub const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-haiku-4-5-20251001\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! How can I help?\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// Older API versions: `message_delta.usage` has only the output count.
pub const ANTHROPIC_SSE_OUTPUT_ONLY_DELTA: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-haiku-4-5-20251001\",\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":1500,\"cache_read_input_tokens\":0,\"output_tokens\":2}}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":1024}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

// ----------------------------------------------------------------------------- Gemini

pub const GEMINI_REQUEST: &str = r#"{
  "contents": [
    {"role": "user", "parts": [
      {"text": "Describe this picture and explain why the sky is blue."},
      {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHR8eHR0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/"}}
    ]}
  ],
  "systemInstruction": {"parts": [{"text": "Be concise."}]},
  "generationConfig": {"temperature": 0.2, "thinkingConfig": {"thinkingBudget": 1024}}
}"#;

pub const GEMINI_RESPONSE: &str = r#"{
  "candidates": [
    {
      "content": {"parts": [{"text": "A red barn. Rayleigh scattering favours blue light."}], "role": "model"},
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 1289,
    "candidatesTokenCount": 14,
    "totalTokenCount": 1788,
    "cachedContentTokenCount": 1024,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1031}, {"modality": "IMAGE", "tokenCount": 258}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}],
    "thoughtsTokenCount": 485
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "Q5d8aN7aL9b1nvgP7L3X4Q8"
}"#;

pub const GEMINI_STREAM_REQUEST: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Why is the sky blue?"}]}],"generation_config":{"max_output_tokens":2048,"candidate_count":1}}"#;

/// Google frames SSE with CRLF.
pub const GEMINI_SSE: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}]},\"modelVersion\": \"gemini-2.5-pro\",\"responseId\": \"xZd8aP\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky scatters blue light most.\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 5,\"totalTokenCount\": 1013,\"thoughtsTokenCount\": 1000},\"modelVersion\": \"gemini-2.5-pro\",\"responseId\": \"xZd8aP\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 9,\"totalTokenCount\": 1017,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}],\"thoughtsTokenCount\": 1000},\"modelVersion\": \"gemini-2.5-pro\",\"responseId\": \"xZd8aP\"}\r\n\r\n",
);

/// `:streamGenerateContent` without `alt=sse`: one JSON array, streamed.
pub const GEMINI_JSON_ARRAY_STREAM: &str = r#"[{
  "candidates": [{"content": {"parts": [{"text": "The"}], "role": "model"}, "index": 0}],
  "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
  "modelVersion": "gemini-2.5-pro"
}
,
{
  "candidates": [{"content": {"parts": [{"text": " sky is blue."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 9, "totalTokenCount": 1017, "thoughtsTokenCount": 1000},
  "modelVersion": "gemini-2.5-pro"
}
]"#;

// ----------------------------------------------------------------------------- OpenAI-compatible

pub const MISTRAL_REQUEST: &str = r#"{"model":"mistral-small-latest","messages":[{"role":"user","content":"What is the best French cheese?"}],"random_seed":42}"#;

pub const MISTRAL_STREAM_REQUEST: &str = r#"{"model":"mistral-small-latest","messages":[{"role":"user","content":"Cheese?"}],"stream":true,"max_tokens":64}"#;

pub const MISTRAL_RESPONSE: &str = r#"{"id":"cmpl-e5cc70bb28c444948073e77776eb30ef","object":"chat.completion","model":"mistral-small-latest","usage":{"prompt_tokens":16,"completion_tokens":34,"total_tokens":50},"created":1702256327,"choices":[{"index":0,"message":{"content":"Comté, arguably.","tool_calls":null,"prefix":false,"role":"assistant"},"finish_reason":"stop"}]}"#;

/// Mistral sends usage unasked, on the chunk that carries `finish_reason`.
pub const MISTRAL_SSE: &str = concat!(
    "data: {\"id\":\"0d2a8f1b\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"0d2a8f1b\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Comté\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"0d2a8f1b\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\".\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,\"total_tokens\":14,\"completion_tokens\":4}}\n\n",
    "data: [DONE]\n\n",
);

pub const GROQ_REQUEST: &str = r#"{"model":"llama-3.3-70b-versatile","messages":[{"role":"user","content":"Explain fast inference"}]}"#;

pub const GROQ_STREAM_REQUEST: &str = r#"{"model":"llama-3.3-70b-versatile","messages":[{"role":"user","content":"Hi"}],"stream":true,"max_completion_tokens":512}"#;

pub const GROQ_RESPONSE: &str = r#"{"id":"chatcmpl-f51b2cd2-bef7-417e-964e-a08f0b513c22","object":"chat.completion","created":1730241104,"model":"llama-3.3-70b-versatile","choices":[{"index":0,"message":{"role":"assistant","content":"Groq uses LPUs."},"logprobs":null,"finish_reason":"stop"}],"usage":{"queue_time":0.037493756,"prompt_tokens":18,"prompt_time":0.000680594,"completion_tokens":556,"completion_time":0.463333333,"total_tokens":574,"total_time":0.464013927},"system_fingerprint":"fp_179b0f92c9","x_groq":{"id":"req_01jbd6g2qdfw2adyrt2az8hz4w"}}"#;

/// Groq sends usage unasked in `x_groq.usage` of the last chunk.
pub const GROQ_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-7c3e\",\"object\":\"chat.completion.chunk\",\"created\":1730241104,\"model\":\"llama-3.3-70b-versatile\",\"system_fingerprint\":\"fp_179b0f92c9\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"x_groq\":{\"id\":\"req_01jbd6g2qdfw\"}}\n\n",
    "data: {\"id\":\"chatcmpl-7c3e\",\"object\":\"chat.completion.chunk\",\"created\":1730241104,\"model\":\"llama-3.3-70b-versatile\",\"system_fingerprint\":\"fp_179b0f92c9\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello!\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-7c3e\",\"object\":\"chat.completion.chunk\",\"created\":1730241104,\"model\":\"llama-3.3-70b-versatile\",\"system_fingerprint\":\"fp_179b0f92c9\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_01jbd6g2qdfw\",\"usage\":{\"queue_time\":0.019,\"prompt_tokens\":36,\"prompt_time\":0.002,\"completion_tokens\":10,\"completion_time\":0.008,\"total_tokens\":46,\"total_time\":0.01}}}\n\n",
    "data: [DONE]\n\n",
);

pub const DEEPSEEK_REQUEST: &str = r#"{"model":"deepseek-chat","messages":[{"role":"system","content":"You are helpful"},{"role":"user","content":"Hello"}]}"#;

pub const DEEPSEEK_STREAM_REQUEST: &str = r#"{"model":"deepseek-reasoner","messages":[{"role":"user","content":"9.11 or 9.8?"}],"stream":true,"max_tokens":4096}"#;

pub const DEEPSEEK_RESPONSE: &str = r#"{"id":"930c60df-bf64-41c9-a88e-3ec75f81e00e","object":"chat.completion","created":1705651092,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":10,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16},"system_fingerprint":"fp_8802369eaa_prod0623_fp8_kvcache"}"#;

/// DeepSeek with `include_usage` (injected): usage-only chunk with `choices: []`.
pub const DEEPSEEK_SSE: &str = concat!(
    "data: {\"id\":\"4ad7\",\"object\":\"chat.completion.chunk\",\"created\":1738000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    ": keep-alive\n\n",
    "data: {\"id\":\"4ad7\",\"object\":\"chat.completion.chunk\",\"created\":1738000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"Compare decimals.\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"4ad7\",\"object\":\"chat.completion.chunk\",\"created\":1738000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"9.8\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"4ad7\",\"object\":\"chat.completion.chunk\",\"created\":1738000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[],\"usage\":{\"prompt_tokens\":17,\"completion_tokens\":321,\"total_tokens\":338,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":300},\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":17}}\n\n",
    "data: [DONE]\n\n",
);

pub const DEEPSEEK_SSE_USAGE_CHUNK: &str = "data: {\"id\":\"4ad7\",\"object\":\"chat.completion.chunk\",\"created\":1738000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[],\"usage\":{\"prompt_tokens\":17,\"completion_tokens\":321,\"total_tokens\":338,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":300},\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":17}}\n\n";

pub const TOGETHER_REQUEST: &str = r#"{"model":"meta-llama/Llama-3.3-70B-Instruct-Turbo","messages":[{"role":"user","content":"What are some fun things to do in New York?"}]}"#;

pub const TOGETHER_STREAM_REQUEST: &str = r#"{"model":"meta-llama/Llama-3.3-70B-Instruct-Turbo","messages":[{"role":"user","content":"Hi"}],"stream":true,"max_tokens":200}"#;

pub const TOGETHER_RESPONSE: &str = r#"{"id":"8e1a8bd8bd1c2bd9-SJC","object":"chat.completion","created":1733182468,"model":"meta-llama/Llama-3.3-70B-Instruct-Turbo","prompt":[],"choices":[{"finish_reason":"eos","seed":12037226412405537000,"logprobs":null,"index":0,"message":{"role":"assistant","content":"Visit Central Park.","tool_calls":[]}}],"usage":{"prompt_tokens":48,"completion_tokens":6,"total_tokens":54}}"#;

/// Together sends usage unasked on the last chunk (and `"usage": null` before).
pub const TOGETHER_SSE: &str = concat!(
    "data: {\"id\":\"8e1a9c3e\",\"object\":\"chat.completion.chunk\",\"created\":1733182600,\"choices\":[{\"index\":0,\"text\":\"Hello\",\"logprobs\":null,\"finish_reason\":null,\"delta\":{\"token_id\":9906,\"role\":\"assistant\",\"content\":\"Hello\",\"tool_calls\":null}}],\"model\":\"meta-llama/Llama-3.3-70B-Instruct-Turbo\",\"usage\":null}\n\n",
    "data: {\"id\":\"8e1a9c3e\",\"object\":\"chat.completion.chunk\",\"created\":1733182600,\"choices\":[{\"index\":0,\"text\":\"!\",\"logprobs\":null,\"finish_reason\":\"eos\",\"seed\":4960294358893617000,\"delta\":{\"token_id\":128009,\"role\":\"assistant\",\"content\":\"!\",\"tool_calls\":null}}],\"model\":\"meta-llama/Llama-3.3-70B-Instruct-Turbo\",\"usage\":{\"prompt_tokens\":36,\"completion_tokens\":2,\"total_tokens\":38}}\n\n",
    "data: [DONE]\n\n",
);

pub const OPENROUTER_REQUEST: &str = r#"{"model":"anthropic/claude-sonnet-4.5","models":["openai/gpt-4o"],"messages":[{"role":"user","content":"What is the meaning of life?"}]}"#;

pub const OPENROUTER_STREAM_REQUEST: &str = r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true,"max_tokens":300}"#;

pub const OPENROUTER_RESPONSE: &str = r#"{"id":"gen-1745353045-WmqCAmQM8Ch2FwKpdDvk","provider":"Anthropic","model":"anthropic/claude-sonnet-4.5","object":"chat.completion","created":1745353045,"choices":[{"logprobs":null,"finish_reason":"stop","native_finish_reason":"end_turn","index":0,"message":{"role":"assistant","content":"42.","refusal":null,"reasoning":null}}],"usage":{"prompt_tokens":140,"completion_tokens":71,"total_tokens":211,"cost":0.0014658,"is_byok":false,"prompt_tokens_details":{"cached_tokens":64,"cache_write_tokens":32},"completion_tokens_details":{"reasoning_tokens":0}}}"#;

/// OpenRouter: processing comments, then a final chunk with usage followed by `[DONE]`.
pub const OPENROUTER_SSE: &str = concat!(
    ": OPENROUTER PROCESSING\n\n",
    ": OPENROUTER PROCESSING\n\n",
    "data: {\"id\":\"gen-1745353100-abc\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o-mini\",\"object\":\"chat.completion.chunk\",\"created\":1745353100,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello there!\"},\"finish_reason\":null,\"native_finish_reason\":null,\"logprobs\":null}]}\n\n",
    "data: {\"id\":\"gen-1745353100-abc\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o-mini\",\"object\":\"chat.completion.chunk\",\"created\":1745353100,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\",\"native_finish_reason\":\"stop\",\"logprobs\":null}]}\n\n",
    "data: {\"id\":\"gen-1745353100-abc\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o-mini\",\"object\":\"chat.completion.chunk\",\"created\":1745353100,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null,\"native_finish_reason\":null,\"logprobs\":null}],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3,\"total_tokens\":11,\"cost\":0.0000030,\"is_byok\":false,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

pub const XAI_REQUEST: &str = r#"{"model":"grok-4","messages":[{"role":"system","content":"You are Grok."},{"role":"user","content":"What is 101*3?"}]}"#;

pub const XAI_STREAM_REQUEST: &str = r#"{"model":"grok-4-0709","messages":[{"role":"user","content":"Hi"}],"stream":true,"max_completion_tokens":1000}"#;

pub const XAI_RESPONSE: &str = r#"{"id":"a3d1008e-4544-40d4-d075-11527e794e4a","object":"chat.completion","created":1752854522,"model":"grok-4-0709","choices":[{"index":0,"message":{"role":"assistant","content":"303","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":32,"completion_tokens":1,"total_tokens":163,"prompt_tokens_details":{"text_tokens":32,"audio_tokens":0,"image_tokens":0,"cached_tokens":6},"completion_tokens_details":{"reasoning_tokens":130,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0},"num_sources_used":0},"system_fingerprint":"fp_3a7881249c"}"#;

/// xAI sends a cumulative usage object on chunks; only the finished chunk's is final.
pub const XAI_SSE: &str = concat!(
    "data: {\"id\":\"7a1b\",\"object\":\"chat.completion.chunk\",\"created\":1752854600,\"model\":\"grok-4-0709\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\",\"role\":\"assistant\"}}],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":1,\"total_tokens\":140,\"prompt_tokens_details\":{\"text_tokens\":20,\"audio_tokens\":0,\"image_tokens\":0,\"cached_tokens\":5},\"completion_tokens_details\":{\"reasoning_tokens\":119,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0},\"num_sources_used\":0},\"system_fingerprint\":\"fp_3a7881249c\"}\n\n",
    "data: {\"id\":\"7a1b\",\"object\":\"chat.completion.chunk\",\"created\":1752854600,\"model\":\"grok-4-0709\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there!\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":4,\"total_tokens\":143,\"prompt_tokens_details\":{\"text_tokens\":20,\"audio_tokens\":0,\"image_tokens\":0,\"cached_tokens\":5},\"completion_tokens_details\":{\"reasoning_tokens\":119,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0},\"num_sources_used\":0},\"system_fingerprint\":\"fp_3a7881249c\"}\n\n",
    "data: [DONE]\n\n",
);

// Cohere v2 chat (https://docs.cohere.com/reference/chat): `usage.billed_units` is what is billed
// (here 21 of the 186 input tokens processed: the hidden preamble is not billed); a stream's
// usage is in `message-end`'s `delta.usage`.
pub const COHERE_REQUEST: &str = r#"{"model":"command-a-03-2025","messages":[{"role":"system","content":"You are an assistant for the company Coca Cola"},{"role":"user","content":"what is Coca Cola?"}],"temperature":0.7}"#;

pub const COHERE_STREAM_REQUEST: &str = r#"{"stream":true,"model":"command-r-08-2024","max_tokens":300,"messages":[{"role":"user","content":"Hello world!"}]}"#;

pub const COHERE_RESPONSE: &str = r#"{"id":"146f3a92-6b5d-46df-b369-59001cca307d","message":{"role":"assistant","content":[{"type":"text","text":"Coca-Cola is a carbonated soft drink."}]},"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":21,"output_tokens":105},"tokens":{"input_tokens":186,"output_tokens":105}}}"#;

pub const COHERE_SSE: &str = concat!(
    "event: message-start\ndata: {\"id\":\"a8fc192e-4bb8-4e15-ae1f-a174e8b02ae8\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\",\"content\":[],\"tool_plan\":\"\",\"tool_calls\":[],\"citations\":[]}}}\n\n",
    "event: content-start\ndata: {\"type\":\"content-start\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"type\":\"text\",\"text\":\"\"}}}}\n\n",
    "event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hello\"}}}}\n\n",
    "event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\" there, usage is billed\"}}}}\n\n",
    "event: content-end\ndata: {\"type\":\"content-end\",\"index\":0}\n\n",
    "event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":9},\"tokens\":{\"input_tokens\":68,\"output_tokens\":9}}}}\n\n",
);

// Fireworks (https://docs.fireworks.ai/api-reference/post-chatcompletions): OpenAI's shape; the
// last streamed chunk carries `finish_reason` and `usage`.
pub const FIREWORKS_REQUEST: &str = r#"{"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[{"role":"user","content":"Say this is a test"}]}"#;

pub const FIREWORKS_STREAM_REQUEST: &str = r#"{"model":"accounts/fireworks/models/gpt-oss-120b","messages":[{"role":"user","content":"Hi"}],"stream":true,"max_tokens":128}"#;

pub const FIREWORKS_RESPONSE: &str = r#"{"id":"e2a1b7c0-3f2a-4c8e-9a57-5b1f0c2d9e11","object":"chat.completion","created":1765060000,"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"This is a test."},"finish_reason":"stop"}],"usage":{"prompt_tokens":17,"total_tokens":23,"completion_tokens":6}}"#;

pub const FIREWORKS_SSE: &str = concat!(
    "data: {\"id\":\"7c9d2f4e\",\"object\":\"chat.completion.chunk\",\"created\":1765060001,\"model\":\"accounts/fireworks/models/gpt-oss-120b\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"7c9d2f4e\",\"object\":\"chat.completion.chunk\",\"created\":1765060001,\"model\":\"accounts/fireworks/models/gpt-oss-120b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello!\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"7c9d2f4e\",\"object\":\"chat.completion.chunk\",\"created\":1765060001,\"model\":\"accounts/fireworks/models/gpt-oss-120b\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":70,\"total_tokens\":91,\"completion_tokens\":21}}\n\n",
    "data: [DONE]\n\n",
);

// Cerebras (https://inference-docs.cerebras.ai/api-reference/chat-completions): OpenAI's `usage`
// (with `prompt_tokens_details.cached_tokens`) and `time_info`.
pub const CEREBRAS_REQUEST: &str =
    r#"{"model":"llama3.1-8b","messages":[{"role":"user","content":"Hello!"}]}"#;

pub const CEREBRAS_STREAM_REQUEST: &str = r#"{"model":"gpt-oss-120b","messages":[{"role":"user","content":"Why is fast inference important?"}],"stream":true,"max_completion_tokens":512}"#;

pub const CEREBRAS_RESPONSE: &str = r#"{"id":"chatcmpl-292e278f-514e-4186-9010-91ce6a14168b","choices":[{"finish_reason":"stop","index":0,"message":{"content":"Hello! How can I assist you today?","role":"assistant"}}],"created":1723733419,"model":"llama3.1-8b","system_fingerprint":"fp_70185065a4","object":"chat.completion","usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":0}},"time_info":{"queue_time":0.000073161,"prompt_time":0.0010744798888888889,"completion_time":0.005658071111111111,"total_time":0.022224903106689453,"created":1723733419}}"#;

pub const CEREBRAS_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-5d1c0b9a\",\"choices\":[{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"index\":0}],\"created\":1765060100,\"model\":\"gpt-oss-120b\",\"system_fingerprint\":\"fp_1a2b3c\",\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"id\":\"chatcmpl-5d1c0b9a\",\"choices\":[{\"delta\":{\"content\":\"Speed matters.\"},\"index\":0}],\"created\":1765060100,\"model\":\"gpt-oss-120b\",\"system_fingerprint\":\"fp_1a2b3c\",\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"id\":\"chatcmpl-5d1c0b9a\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"created\":1765060100,\"model\":\"gpt-oss-120b\",\"system_fingerprint\":\"fp_1a2b3c\",\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":80,\"completion_tokens\":40,\"total_tokens\":120,\"prompt_tokens_details\":{\"cached_tokens\":64}},\"time_info\":{\"queue_time\":0.0001,\"prompt_time\":0.001,\"completion_time\":0.02,\"total_time\":0.03,\"created\":1765060100}}\n\n",
    "data: [DONE]\n\n",
);

// Perplexity (https://docs.perplexity.ai/api-reference/chat-completions-post, perplexity-py's
// `StreamChunk` / `UsageInfo`): usage with `search_context_size` and a `cost` breakdown; streams
// carry the cumulative usage on every chunk (interim ones with a zero cost skeleton, the
// terminal one with `request_cost`), plus `citations` and `search_results`.
pub const PERPLEXITY_REQUEST: &str = r#"{"model":"sonar-pro","messages":[{"role":"system","content":"Be precise and concise."},{"role":"user","content":"How many stars are there in our galaxy?"}],"web_search_options":{"search_context_size":"low"}}"#;

pub const PERPLEXITY_STREAM_REQUEST: &str = r#"{"model":"sonar","messages":[{"role":"user","content":"What is the capital of France?"}],"stream":true,"max_tokens":256}"#;

pub const PERPLEXITY_RESPONSE: &str = r#"{"id":"3c90c3cc-0d44-4b50-8888-8dd25736052a","model":"sonar-pro","created":1765100000,"usage":{"prompt_tokens":14,"completion_tokens":221,"total_tokens":235,"search_context_size":"low","cost":{"input_tokens_cost":0.000042,"output_tokens_cost":0.003315,"request_cost":0.006,"total_cost":0.009357}},"citations":["https://en.wikipedia.org/wiki/Milky_Way","https://science.nasa.gov/milky-way/"],"search_results":[{"title":"Milky Way - Wikipedia","url":"https://en.wikipedia.org/wiki/Milky_Way","date":"2025-11-30"}],"object":"chat.completion","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"The Milky Way holds an estimated 100 to 400 billion stars [1][2]."},"delta":{"role":"assistant","content":""}}]}"#;

pub const PERPLEXITY_SSE: &str = concat!(
    "data: {\"id\":\"b1c2d3e4-5f60-4718-9a2b-3c4d5e6f7a8b\",\"model\":\"sonar\",\"created\":1765100100,\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":1,\"total_tokens\":9,\"search_context_size\":\"low\",\"cost\":{\"input_tokens_cost\":0.0,\"output_tokens_cost\":0.0,\"total_cost\":0.0}},\"citations\":[\"https://en.wikipedia.org/wiki/Paris\"],\"search_results\":[{\"title\":\"Paris - Wikipedia\",\"url\":\"https://en.wikipedia.org/wiki/Paris\",\"date\":null}],\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"finish_reason\":null,\"message\":{\"role\":\"assistant\",\"content\":\"The\"},\"delta\":{\"role\":\"assistant\",\"content\":\"The\"}}]}\r\n\r\n",
    "data: {\"id\":\"b1c2d3e4-5f60-4718-9a2b-3c4d5e6f7a8b\",\"model\":\"sonar\",\"created\":1765100100,\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":6,\"total_tokens\":14,\"search_context_size\":\"low\",\"cost\":{\"input_tokens_cost\":0.0,\"output_tokens_cost\":0.0,\"total_cost\":0.0}},\"citations\":[\"https://en.wikipedia.org/wiki/Paris\"],\"search_results\":[{\"title\":\"Paris - Wikipedia\",\"url\":\"https://en.wikipedia.org/wiki/Paris\",\"date\":null}],\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"finish_reason\":null,\"message\":{\"role\":\"assistant\",\"content\":\"The capital of France is\"},\"delta\":{\"role\":\"assistant\",\"content\":\" capital of France is\"}}]}\r\n\r\n",
    "data: {\"id\":\"b1c2d3e4-5f60-4718-9a2b-3c4d5e6f7a8b\",\"model\":\"sonar\",\"created\":1765100100,\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":9,\"total_tokens\":17,\"search_context_size\":\"low\",\"cost\":{\"input_tokens_cost\":0.000008,\"output_tokens_cost\":0.000009,\"request_cost\":0.005,\"total_cost\":0.005017}},\"citations\":[\"https://en.wikipedia.org/wiki/Paris\"],\"search_results\":[{\"title\":\"Paris - Wikipedia\",\"url\":\"https://en.wikipedia.org/wiki/Paris\",\"date\":null}],\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"message\":{\"role\":\"assistant\",\"content\":\"The capital of France is Paris [1].\"},\"delta\":{\"role\":\"assistant\",\"content\":\" Paris [1].\"}}]}\r\n\r\n",
);
