//! A fake OpenAI Realtime server, served by [`crate::fake_provider::FakeProvider`] on its own
//! connections: `GET /v1/realtime?model=M` with `Upgrade: websocket` switches protocols (RFC 6455
//! through tokio-tungstenite, no extension ever accepted) and speaks the Realtime events:
//!
//! - on open: `session.created` (`session.model` = M);
//! - client `response.create`: `response.created`, two `response.output_audio.delta`, then
//!   `response.done` whose `response.usage` comes from the create's `response.metadata`
//!   (strings, as Realtime metadata must be): `input_text`, `input_audio`, `cached_text`,
//!   `cached_audio`, `output_text`, `output_audio` (defaults 10, 0, 0, 0, 5, 0);
//! - client `input_audio_buffer.commit`: a response the server starts by itself (as turn
//!   detection does), usage [`SERVER_TURN_USAGE`];
//! - anything else: recorded, unanswered.
//!
//! Every client event is recorded ([`crate::fake_provider::FakeProvider::realtime_events`]).

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// (input_text, input_audio, cached_text, cached_audio, output_text, output_audio) of a response
/// the server starts by itself.
pub const SERVER_TURN_USAGE: [u64; 6] = [20, 500, 0, 0, 10, 300];

pub type Events = Arc<Mutex<Vec<Value>>>;

/// Whether the request is a Realtime WebSocket upgrade.
pub fn is_realtime_upgrade(req: &Request<Incoming>) -> bool {
    req.uri().path() == "/v1/realtime"
        && req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers the upgrade (101) and runs the session in its own task.
pub fn accept(mut req: Request<Incoming>, events: Events) -> Response<()> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let model = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("model=")))
        .unwrap_or("")
        .to_string();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        session(ws, model, events).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(hyper::header::UPGRADE, "websocket".parse().expect("header"));
    h.insert(
        hyper::header::CONNECTION,
        "Upgrade".parse().expect("header"),
    );
    h.insert("sec-websocket-accept", accept.parse().expect("header"));
    r
}

fn usage(n: [u64; 6]) -> Value {
    let [it, ia, ct, ca, ot, oa] = n;
    json!({
        "total_tokens": it + ia + ot + oa,
        "input_tokens": it + ia,
        "output_tokens": ot + oa,
        "input_token_details": {
            "text_tokens": it, "audio_tokens": ia, "image_tokens": 0,
            "cached_tokens": ct + ca,
            "cached_tokens_details": {"text_tokens": ct, "audio_tokens": ca, "image_tokens": 0}
        },
        "output_token_details": {"text_tokens": ot, "audio_tokens": oa}
    })
}

fn usage_from_metadata(meta: Option<&Value>) -> [u64; 6] {
    let get = |k: &str, d: u64| {
        meta.and_then(|m| m.get(k))
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| v.as_u64())
            })
            .unwrap_or(d)
    };
    [
        get("input_text", 10),
        get("input_audio", 0),
        get("cached_text", 0),
        get("cached_audio", 0),
        get("output_text", 5),
        get("output_audio", 0),
    ]
}

async fn session<S>(mut ws: WebSocketStream<S>, model: String, events: Events)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seq = 0u64;
    let mut send = |v: Value| {
        seq += 1;
        let mut v = v;
        v["event_id"] = json!(format!("event_{seq}"));
        Message::text(v.to_string())
    };
    if ws
        .send(send(
            json!({"type": "session.created", "session": {"type": "realtime", "model": model}}),
        ))
        .await
        .is_err()
    {
        return;
    }
    let mut responses = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(ev) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ev.clone());
        let n = match ev["type"].as_str() {
            Some("response.create") => usage_from_metadata(ev["response"].get("metadata")),
            Some("input_audio_buffer.commit") => SERVER_TURN_USAGE,
            _ => continue,
        };
        responses += 1;
        let id = format!("resp_{responses}");
        let out = [
            json!({"type": "response.created", "response": {"id": id, "object": "realtime.response", "status": "in_progress"}}),
            json!({"type": "response.output_audio.delta", "response_id": id, "delta": "AAAA"}),
            json!({"type": "response.output_audio.delta", "response_id": id, "delta": "BBBB"}),
            json!({"type": "response.done", "response": {
                "id": id, "object": "realtime.response", "status": "completed",
                "output": [], "usage": usage(n)}}),
        ];
        for v in out {
            if ws.send(send(v)).await.is_err() {
                return;
            }
        }
    }
}
