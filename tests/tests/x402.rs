//! Issue 17 item 2 end to end: x402 payments to a host in `x402_hosts` are priced at the payment,
//! reserved before they leave the node, settled by the server's receipt and released without one —
//! through the real transparent path (BPF redirect → TLS interception → ledger), with httpx as the
//! client (httpx2 where the SDKs ship that) and a fake x402 server speaking the reference wire format (v1 and v2).

use std::io::Write as _;

use spendguard_tests::fake_provider::TestCa;
use spendguard_tests::fake_x402::{FakeX402, PAY_TO, USDC_BASE_SEPOLIA, X402_HOST};
use spendguard_tests::metered::{Metered, HOSTS};
use spendguard_tests::sdk::python;
use spendguard_tests::{privileged, UPSTREAM_B};

/// A metered world whose agent meters x402 payments to [`X402_HOST`] (a fake x402 server on
/// `UPSTREAM_B:443` in the node namespace).
fn x402_world(agent: &str) -> (Metered, FakeX402) {
    let mut server = None;
    let e = Metered::with(agent, |w| {
        let ca = TestCa::new("fake x402 server CA");
        // Trusted upstream next to the fake provider's CA (the file Metered already wrote).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(w.state.path().join("upstream-ca.pem"))
            .expect("upstream CA file");
        f.write_all(ca.cert_pem().as_bytes()).expect("append CA");
        w.set_agent_config(&format!("x402_hosts = [\"{X402_HOST}\"]\n"));
        let l = w.node.enter(|| {
            std::net::TcpListener::bind(format!("{UPSTREAM_B}:443")).expect("bind fake x402")
        });
        server = Some(FakeX402::start(l, &ca));
    });
    (e, server.expect("fake x402 server started"))
}

fn names() -> Vec<(&'static str, &'static str)> {
    let mut n = HOSTS.to_vec();
    n.push((X402_HOST, UPSTREAM_B));
    n
}

const CLIENT: &str = r#"
import base64, json, os, ssl
try:
    import httpx
except ImportError:  # the SDK venv's openai depends on httpx's successor, httpx2
    import httpx2 as httpx
H = "https://tools.x402.test"
PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
c = httpx.Client(timeout=20, verify=ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]))
def b64(v): return base64.b64encode(json.dumps(v).encode()).decode()
def unb64(s): return json.loads(base64.b64decode(s))
def auth(to, value):
    return {"from": PAYER, "to": to, "value": value, "validAfter": "0",
            "validBefore": "9999999999", "nonce": "0x" + "22" * 32}
def v2(req, value):
    return b64({"x402Version": 2, "resource": {"url": H + "/v2/data"}, "accepted": req,
                "payload": {"signature": "0x" + "11" * 65, "authorization": auth(req["payTo"], value)}})
def v1(network, to, value):
    return b64({"x402Version": 1, "scheme": "exact", "network": network,
                "payload": {"signature": "0x" + "33" * 65, "authorization": auth(to, value)}})
def seen(r):
    try: body = r.json()
    except Exception: body = r.text
    return {"status": r.status_code, "json": body, "headers": {k.lower(): v for k, v in r.headers.items()}}
res = {}

# v2: the challenge round-trip, then the paid retry (a POST with a body).
r = c.get(H + "/v2/data")
res["v2_challenge"] = seen(r)
req = unb64(r.headers["payment-required"])["accepts"][0]
sig = v2(req, req["amount"])
r = c.post(H + "/v2/data", headers={"PAYMENT-SIGNATURE": sig}, json={"q": "paid"})
res["v2_paid"] = seen(r)
res["v2_paid"]["receipt"] = unb64(r.headers["payment-response"])
res["v2_sig"] = sig

# $0.06 against a $0.05 per-call limit.
r = c.get(H + "/v2/data", headers={"x-fake-x402-amount": "60000"})
req60 = unb64(r.headers["payment-required"])["accepts"][0]
r = c.get(H + "/v2/data", headers={"PAYMENT-SIGNATURE": v2(req60, "60000"), "x-fake-x402-amount": "60000"})
res["v2_over"] = seen(r)

# Not settled: a receipt with success=false, and no receipt at all.
r = c.get(H + "/v2/data", headers={"PAYMENT-SIGNATURE": v2(req, "20000"), "x-fake-x402-settle": "fail"})
res["v2_failed"] = seen(r)
res["v2_failed"]["receipt"] = unb64(r.headers["payment-response"])
r = c.get(H + "/v2/data", headers={"PAYMENT-SIGNATURE": v2(req, "20000"), "x-fake-x402-settle": "none"})
res["v2_none"] = seen(r)

# An asset without a rate, and payments that cannot be read.
weth = dict(req, asset="0x4200000000000000000000000000000000000006")
res["unpriced_asset"] = seen(c.get(H + "/v2/data", headers={"PAYMENT-SIGNATURE": v2(weth, "1"), "x-probe": "weth"}))
res["malformed"] = seen(c.get(H + "/v2/data", headers={"PAYMENT-SIGNATURE": "not base64!", "x-probe": "malformed"}))
res["truncated"] = seen(c.get(H + "/v2/data", headers={"PAYMENT-SIGNATURE": sig[: len(sig) // 2], "x-probe": "truncated"}))

# v1: the challenge names the asset in its body; the payment does not.
r = c.get(H + "/v1/data")
res["v1_challenge"] = seen(r)
acc = r.json()["accepts"][0]
r = c.get(H + "/v1/data", headers={"X-PAYMENT": v1(acc["network"], acc["payTo"], "30000")})
res["v1_paid"] = seen(r)
res["v1_paid"]["receipt"] = unb64(r.headers["x-payment-response"])
dead = "0x000000000000000000000000000000000000dEaD"
res["v1_unchallenged"] = seen(c.get(H + "/v1/data", headers={"X-PAYMENT": v1(acc["network"], dead, "1"), "x-probe": "dead"}))
emit(res)
"#;

#[test]
fn x402_payments_are_priced_reserved_and_settled_by_the_receipt() {
    if !privileged() {
        return;
    }
    let (e, server) = x402_world("acme.payer");
    // The seed's perCallMaxUsd: 0.05.
    e.cli_ok(&["limit", "set", "acme.payer", "--per-call", "0.05"]);
    let out = python(e.at(), &names(), &e.ca, CLIENT);

    // The server's own 402 challenge passes through untouched (the agent needs it to pay).
    assert_eq!(out["v2_challenge"]["status"], 402, "{out}");
    assert_eq!(out["v1_challenge"]["status"], 402, "{out}");
    assert_eq!(
        out["v1_challenge"]["json"]["accepts"][0]["asset"],
        USDC_BASE_SEPOLIA
    );

    let paid = &out["v2_paid"];
    assert_eq!(paid["status"], 200, "{out}");
    assert_eq!(paid["receipt"]["success"], true, "{out}");
    assert_eq!(paid["headers"]["x-spendguard-agent"], "acme.payer", "{out}");
    assert_eq!(
        paid["headers"]["x-spendguard-reserved-usd"], "0.01",
        "reserved at the payment: {out}"
    );
    // The payment reached the server exactly as signed, body and all.
    let sig = out["v2_sig"].as_str().expect("sig");
    let got = server.requests();
    let at_server = got
        .iter()
        .find(|r| r.method == "POST")
        .expect("the paid POST reached the server");
    assert_eq!(at_server.header("payment-signature"), Some(sig));
    assert_eq!(at_server.body, br#"{"q":"paid"}"#.to_vec());

    // Over the per-call limit: SpendGuard's 402, never an x402 challenge, never forwarded.
    let over = &out["v2_over"];
    assert_eq!(over["status"], 402, "{out}");
    assert_eq!(over["json"]["code"], "BUDGET_EXCEEDED", "{out}");
    assert_eq!(over["json"]["reason"], "per_call_limit_exceeded", "{out}");
    assert!(
        over["headers"].get("payment-required").is_none(),
        "SpendGuard's 402 must not invite a payment: {out}"
    );
    assert!(
        !got.iter().any(|r| r.header("payment-signature").is_some()
            && r.header("x-fake-x402-amount") == Some("60000")),
        "the server saw the payment over the limit"
    );

    // Not settled → released.
    assert_eq!(out["v2_failed"]["status"], 402, "{out}");
    assert_eq!(out["v2_failed"]["receipt"]["success"], false, "{out}");
    assert_eq!(out["v2_none"]["status"], 500, "{out}");

    // Unpriceable payments: refused, with the reason, never forwarded.
    for (case, probe) in [
        ("unpriced_asset", "weth"),
        ("malformed", "malformed"),
        ("truncated", "truncated"),
        ("v1_unchallenged", "dead"),
    ] {
        let r = &out[case];
        assert_eq!(r["status"], 402, "{case}: {out}");
        assert_eq!(r["json"]["reason"], "unpriced_request", "{case}: {out}");
        assert!(r["headers"].get("payment-required").is_none(), "{case}");
        assert!(
            !got.iter().any(|q| q.header("x-probe") == Some(probe)),
            "{case} reached the server"
        );
    }
    assert!(
        out["unpriced_asset"]["json"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("x402_assets"),
        "the message says how to price it: {out}"
    );

    // v1, priced from the challenge's asset.
    assert_eq!(out["v1_paid"]["status"], 200, "{out}");
    assert_eq!(out["v1_paid"]["receipt"]["success"], true, "{out}");

    // Charged: $0.01 (v2) + $0.03 (v1); the unsettled ones were released.
    assert_eq!(e.settled_spend("acme.payer"), 40_000);
    assert_eq!(e.spent_total("acme"), 40_000, "ancestors pay too");
    assert_eq!(e.reserved("acme.payer"), 0);

    // The audit names network, asset, pay-to and amount.
    let audit = e.audit("acme.payer");
    let find = |amount: &str, network: &str| {
        audit
            .iter()
            .find(|ev| ev["payment"]["amount"] == amount && ev["payment"]["network"] == network)
            .unwrap_or_else(|| panic!("no audit event for {amount} on {network}: {audit:?}"))
    };
    let v2ev = find("10000", "eip155:84532");
    assert_eq!(v2ev["decision"], "allowed");
    assert_eq!(v2ev["payment"]["asset"], USDC_BASE_SEPOLIA);
    assert_eq!(v2ev["payment"]["pay_to"], PAY_TO);
    assert_eq!(v2ev["cost_usd"], 0.01);
    assert_eq!(v2ev["host"], X402_HOST);
    let v1ev = find("30000", "base-sepolia");
    assert_eq!(
        v1ev["payment"]["asset"], USDC_BASE_SEPOLIA,
        "learned from the challenge"
    );
    assert_eq!(v1ev["cost_usd"], 0.03);
    let over = find("60000", "eip155:84532");
    assert_eq!(over["decision"], "blocked");
    assert_eq!(over["reason"], "per_call_limit_exceeded");
    let released: Vec<_> = audit
        .iter()
        .filter(|ev| ev["payment"]["amount"] == "20000")
        .collect();
    assert_eq!(released.len(), 2, "{audit:?}");
    assert!(
        released.iter().all(|ev| ev["cost_usd"] == 0.0),
        "unsettled payments are released: {released:?}"
    );
}
