//! Answers the proxy itself gives, in the shape the provider's SDK understands, so the SDK shows our
//! message instead of a parse error: OpenAI-style `{"error": {…}}` for everyone but Anthropic, whose
//! shape is `{"type": "error", "error": {…}}`, and AWS (Bedrock), whose SDKs read a top-level
//! `message` and the error code from the `x-amzn-errortype` header.

use http::{header, Response, StatusCode};
use serde_json::{json, Value};

use super::body::{full, Body};

/// The provider's own error object for `host` (the `error` field of our JSON bodies).
pub fn provider_error_object(host: &str, kind: &str, message: &str) -> Value {
    if host.ends_with("anthropic.com") {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else if is_aws(host) {
        json!({"message": message, "error": {"message": message, "type": kind, "code": kind}})
    } else {
        json!({"error": {"message": message, "type": kind, "code": kind}})
    }
}

fn is_aws(host: &str) -> bool {
    host.trim_end_matches('.').ends_with(".amazonaws.com")
}

/// A JSON response with the provider-shaped error merged into `extra` (top-level fields win).
pub fn json_error(
    status: StatusCode,
    host: &str,
    kind: &str,
    message: &str,
    extra: Value,
) -> Response<Body> {
    let mut body = provider_error_object(host, kind, message);
    if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), extra) {
        for (k, v) in extra {
            obj.insert(k, v);
        }
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if is_aws(host) {
        if let Ok(v) = header::HeaderValue::from_str(kind) {
            resp.headers_mut().insert("x-amzn-errortype", v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_provider() {
        let o = provider_error_object("api.openai.com", "x", "m");
        assert_eq!(o["error"]["message"], "m");
        let a = provider_error_object("api.anthropic.com", "x", "m");
        assert_eq!(
            (a["type"].as_str(), a["error"]["type"].as_str()),
            (Some("error"), Some("x"))
        );
        let b = provider_error_object("bedrock-runtime.us-east-1.amazonaws.com", "x", "m");
        assert_eq!(b["message"], "m");
        let r = json_error(
            StatusCode::PAYMENT_REQUIRED,
            "bedrock-runtime.us-east-1.amazonaws.com",
            "budget_exceeded",
            "m",
            json!({}),
        );
        assert_eq!(r.headers()["x-amzn-errortype"], "budget_exceeded");
    }
}
