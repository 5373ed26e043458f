//! A fake x402 resource server, in the reference wire format (coinbase/x402 v1 and v2), serving
//! TLS on its own thread. It checks no signature (there is no chain): it decodes the payment,
//! refuses one that is not base64 JSON, and answers with a settlement receipt.
//!
//! - `/v2/…` without `PAYMENT-SIGNATURE`: 402 with base64 `PAYMENT-REQUIRED`
//!   `{x402Version:2, error, resource, accepts:[{scheme, network: eip155:84532, amount, asset,
//!   payTo, maxTimeoutSeconds, extra}]}`; with it: 200 and base64 `PAYMENT-RESPONSE`
//!   `{success, transaction, network, payer}`.
//! - `/v1/…` without `X-PAYMENT`: 402 with the JSON body `{x402Version:1, error, accepts:[{scheme,
//!   network: base-sepolia, maxAmountRequired, resource, description, mimeType, payTo,
//!   maxTimeoutSeconds, asset, extra}]}`; with it: 200 and `X-PAYMENT-RESPONSE`.
//!
//! Controls (request headers): `x-fake-x402-amount: N` the price asked (default 10000 = $0.01
//! USDC); `x-fake-x402-settle: fail` answers 402 with a receipt `success: false`,
//! `x-fake-x402-settle: none` answers 500 without a receipt.
//!
//! Network safety: it listens where the test bound it (inside the test's node namespace).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio_rustls::rustls;

use crate::fake_provider::TestCa;

/// The x402 host the tests pay (pinned to an address in the node namespace).
pub const X402_HOST: &str = "tools.x402.test";
/// Where the fake server asks to be paid.
pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
/// Circle's USDC on Base Sepolia (what the reference examples ask for).
pub const USDC_BASE_SEPOLIA: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// One request as the fake x402 server received it.
#[derive(Debug, Clone)]
pub struct X402Request {
    pub method: String,
    pub path: String,
    /// Names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl X402Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Stops on drop.
pub struct FakeX402 {
    requests: Arc<Mutex<Vec<X402Request>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeX402 {
    /// Serves TLS for [`X402_HOST`] on `listener` (already bound), certificate signed by `ca`.
    pub fn start(listener: std::net::TcpListener, ca: &TestCa) -> FakeX402 {
        listener.set_nonblocking(true).expect("nonblocking");
        let (chain, key) = ca.leaf(&[X402_HOST]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let recorded = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let tcp = tokio::select! {
                        _ = &mut rx => return,
                        a = listener.accept() => match a {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
                    tokio::spawn(async move {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                .await
                        else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let recorded = recorded.clone();
                            async move { Ok::<_, Infallible>(handle(req, recorded).await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        FakeX402 {
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<X402Request> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for FakeX402 {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64_json(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

fn reply(status: u16, headers: &[(&str, String)], body: Value) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    req: Request<Incoming>,
    recorded: Arc<Mutex<Vec<X402Request>>>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let amount = get("x-fake-x402-amount").unwrap_or_else(|| "10000".into());
    let settle = get("x-fake-x402-settle").unwrap_or_else(|| "ok".into());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    recorded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(X402Request {
            method,
            path: path.clone(),
            headers: headers.clone(),
            body,
        });
    let resource = format!("https://{X402_HOST}{path}");
    let v2 = path.starts_with("/v2/");
    let (payment_header, receipt_header, network) = if v2 {
        ("payment-signature", "payment-response", "eip155:84532")
    } else {
        ("x-payment", "x-payment-response", "base-sepolia")
    };
    let Some(payment) = get(payment_header) else {
        if v2 {
            let required = json!({
                "x402Version": 2,
                "error": "PAYMENT-SIGNATURE header is required",
                "resource": {"url": resource, "description": "fake data", "mimeType": "application/json"},
                "accepts": [{
                    "scheme": "exact", "network": network, "amount": amount,
                    "asset": USDC_BASE_SEPOLIA, "payTo": PAY_TO, "maxTimeoutSeconds": 60,
                    "extra": {"name": "USDC", "version": "2"},
                }],
            });
            return reply(402, &[("payment-required", b64_json(&required))], json!({}));
        }
        let body = json!({
            "x402Version": 1,
            "error": "X-PAYMENT header is required",
            "accepts": [{
                "scheme": "exact", "network": network, "maxAmountRequired": amount,
                "resource": resource, "description": "fake data", "mimeType": "application/json",
                "payTo": PAY_TO, "maxTimeoutSeconds": 60, "asset": USDC_BASE_SEPOLIA,
                "extra": {"name": "USDC", "version": "2"},
            }],
        });
        return reply(402, &[], body);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(payment.trim())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(decoded) = decoded else {
        return reply(400, &[], json!({"error": "invalid_payload"}));
    };
    let payer = decoded["payload"]["authorization"]["from"]
        .as_str()
        .unwrap_or("")
        .to_string();
    match settle.as_str() {
        "none" => reply(
            500,
            &[],
            json!({"error": "the resource failed before settling"}),
        ),
        "fail" => {
            let receipt = json!({"success": false, "errorReason": "insufficient_funds",
                "transaction": "", "network": network, "payer": payer});
            reply(
                402,
                &[(receipt_header, b64_json(&receipt))],
                json!({"error": "insufficient_funds"}),
            )
        }
        _ => {
            let receipt = json!({"success": true, "network": network, "payer": payer,
                "transaction": "0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"});
            reply(
                200,
                &[(receipt_header, b64_json(&receipt))],
                json!({"data": "paid content", "path": path}),
            )
        }
    }
}
