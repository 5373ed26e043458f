//! Issue 5 end to end: every request pays, nothing overshoots, nothing is lost — through the real
//! transparent path (BPF redirect → TLS interception → ledger) with the real SDKs and curl.

use std::time::Duration;

use spendguard_pricing::{MicroUsd, Usage};
use spendguard_tests::metered::{
    chat_quote, curl_host, openai_usage, price, usd_to_micro, Metered as Env, HOSTS,
};
use spendguard_tests::privileged;
use spendguard_tests::sdk::python;

#[test]
fn sdk_requests_are_charged_exactly_json_and_streamed() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.research.bot");
    let out = python(
        e.at(),
        HOSTS,
        &e.ca,
        r#"
import openai, anthropic
oc = openai.OpenAI(api_key="sk-test", max_retries=0)
raw = oc.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
    max_tokens=50, extra_headers={"x-fake-usage": "prompt=1000,completion=200,cached=400"})
r = raw.parse()
chunks = list(oc.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50,
    stream=True, extra_headers={"x-fake-usage": "prompt=300,completion=40", "x-fake-chunks": "5"}))
ac = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0)
with ac.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-usage": "prompt=500,completion=60,cached=1000,cache_write=200"}) as s:
    final = s.get_final_message()
am = ac.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
    extra_headers={"x-fake-usage": "prompt=70,completion=8"})
emit({
  "json_usage": r.usage.prompt_tokens,
  "agent_header": raw.headers.get("x-spendguard-agent"),
  "remaining_header": raw.headers.get("x-spendguard-remaining-usd"),
  "stream_chunks": len(chunks),
  "stream_usage_chunks": sum(1 for c in chunks if getattr(c, "usage", None) is not None),
  "stream_text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
  "anthropic_stream_out": final.usage.output_tokens,
  "anthropic_json_out": am.usage.output_tokens,
})
"#,
    );
    assert_eq!(out["json_usage"], 1000, "{out}");
    assert_eq!(out["agent_header"], "acme.research.bot", "{out}");
    assert_eq!(out["remaining_header"], "unlimited", "{out}");
    // The proxy asked for usage in the stream, but the client did not: it must never see that chunk.
    assert_eq!(
        out["stream_usage_chunks"], 0,
        "the injected usage chunk reached the client: {out}"
    );
    assert!(
        out["stream_text"].as_str().unwrap_or("").contains("tok0"),
        "{out}"
    );
    assert_eq!(out["anthropic_stream_out"], 60);
    assert_eq!(out["anthropic_json_out"], 8);
    let stream_req = e
        .fake
        .requests()
        .into_iter()
        .find(|r| r.body_json().map(|b| b["stream"] == true).unwrap_or(false))
        .expect("stream request");
    assert_eq!(
        stream_req.body_json().expect("json")["stream_options"]["include_usage"],
        true,
        "include_usage was not added upstream"
    );

    let gpt = price("gpt-4o-mini");
    let claude = price("claude-sonnet-4-5");
    let expected = gpt.cost(&openai_usage(1000, 200, 400)).0
        + gpt.cost(&openai_usage(300, 40, 0)).0
        // Anthropic: input_tokens excludes cache reads and writes.
        + claude.cost(&Usage { input_uncached: 500, input_cached: 1000, cache_write_5m: 200, output: 60, ..Usage::default() }).0
        + claude.cost(&Usage { input_uncached: 70, output: 8, ..Usage::default() }).0;
    let spent = e.settled_spend("acme.research.bot");
    assert_eq!(
        spent, expected,
        "charged {spent} µUSD, expected exactly {expected} µUSD"
    );
    // Ancestors pay too.
    assert_eq!(e.spent_total("acme"), expected);
    assert_eq!(e.spent_total("acme.research"), expected);

    // The audit log has one allowed event per request, each with its final cost.
    let audit = e.cli_json(&["audit", "--agent", "acme"]);
    let events = audit.as_array().expect("audit array");
    assert_eq!(events.len(), 4, "{audit}");
    assert!(
        events
            .iter()
            .all(|ev| ev["decision"] == "allowed" && ev["cost_usd"].is_number()),
        "{audit}"
    );
}

#[test]
fn over_budget_unknown_and_unpriced_requests_get_402_and_never_reach_the_provider() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.capped");
    e.cli_ok(&["limit", "set", "acme.capped", "--daily", "0.001"]);
    let before = e.fake.request_count();
    let out = python(
        e.at(),
        HOSTS,
        &e.ca,
        r#"
import openai, anthropic
oc = openai.OpenAI(api_key="sk-test", max_retries=0)
res = {}
try:
    oc.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4000)
    res["openai"] = "allowed?!"
except openai.APIStatusError as e:
    res["openai"] = {"status": e.status_code, "body": e.body, "message": str(e)}
try:
    oc.chat.completions.create(model="no-such-model-x", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
except openai.APIStatusError as e:
    res["unknown"] = {"status": e.status_code, "reason": (e.response.json() or {}).get("reason")}
ac = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0)
try:
    ac.messages.create(model="claude-sonnet-4-5", max_tokens=4000, messages=[{"role": "user", "content": "hi"}])
except anthropic.APIStatusError as e:
    res["anthropic"] = {"status": e.status_code, "message": e.message, "json": e.response.json()}
emit(res)
"#,
    );
    let o = &out["openai"];
    assert_eq!(o["status"], 402, "{out}");
    let body = &o["body"];
    // openai-python hands `e.body` = the `error` object; the full JSON is checked with curl below.
    assert!(
        o["message"].as_str().unwrap_or("").contains("acme.capped"),
        "the SDK must show our message: {out}"
    );
    assert!(body.is_object(), "{out}");
    assert_eq!(out["unknown"]["status"], 402);
    assert_eq!(out["unknown"]["reason"], "unknown_model");
    let a = &out["anthropic"];
    assert_eq!(a["status"], 402);
    assert_eq!(a["json"]["type"], "error", "Anthropic error shape: {a}");
    assert!(
        a["message"].as_str().unwrap_or("").contains("Daily budget"),
        "{a}"
    );

    // The full 402 body, as curl sees it.
    let req = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":4000}"#;
    let (code, headers, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", req],
    );
    assert_eq!(code, 402, "{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{headers}"
    );
    assert!(
        !headers.to_ascii_lowercase().contains("payment-required"),
        "never an x402 header: {headers}"
    );
    let j: serde_json::Value = serde_json::from_str(&body).expect("402 JSON");
    assert_eq!(j["code"], "BUDGET_EXCEEDED");
    assert_eq!(j["reason"], "daily_budget_exhausted");
    assert_eq!(j["agent"], "acme.capped");
    assert!(j["requested"].as_f64().unwrap_or(0.0) > 0.001, "{j}");
    assert!(
        j["remaining"].is_number() && j["remaining_by_period"]["daily"].is_number(),
        "{j}"
    );
    assert!(
        j["message"].as_str().unwrap_or("").contains("resets"),
        "{j}"
    );
    assert!(
        j["error"]["message"].is_string(),
        "OpenAI-shaped error: {j}"
    );

    // Endpoints that cannot be priced are blocked as unpriced_request.
    let (code, _, body) = e.curl("/v1/batches", &["-H", "content-type: application/json", "-d", r#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#]);
    assert_eq!(code, 402, "{body}");
    assert!(body.contains("unpriced_request"), "{body}");
    // Malformed JSON cannot be priced either.
    let (code, _, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", "{not json"],
    );
    assert_eq!(code, 402, "{body}");

    assert_eq!(
        e.fake.request_count(),
        before,
        "a blocked request reached the provider"
    );
    let audit = e.cli_json(&["audit", "--agent", "acme.capped"]);
    assert!(
        audit
            .as_array()
            .expect("events")
            .iter()
            .all(|ev| ev["decision"] == "blocked"),
        "{audit}"
    );

    // Pause / resume.
    e.cli_ok(&["limit", "set", "acme.capped", "--daily", "none"]);
    e.cli_ok(&["pause", "acme"]);
    let small =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    let (code, _, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", small],
    );
    assert_eq!(code, 402, "{body}");
    assert!(body.contains("agent_paused"), "{body}");
    e.cli_ok(&["resume", "acme"]);
    let (code, headers, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", small],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        headers.contains("x-spendguard-agent: acme.capped"),
        "{headers}"
    );

    // An unknown model becomes billable once an operator prices it.
    let custom =
        r#"{"model":"no-such-model-x","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    let (code, _, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", custom],
    );
    assert_eq!(code, 402, "{body}");
    e.cli_ok(&[
        "price",
        "set",
        "no-such-model-x",
        "--input-per-mtok",
        "1.5",
        "--output-per-mtok",
        "6",
        "--max-output-tokens",
        "1000",
        "--context-window",
        "8000",
    ]);
    let prices = e.cli_json(&["prices"]);
    let row = prices["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["model"] == "no-such-model-x")
        .cloned()
        .expect("priced");
    assert_eq!(
        (
            row["input_per_mtok"].as_f64(),
            row["output_per_mtok"].as_f64()
        ),
        (Some(1.5), Some(6.0)),
        "{row}"
    );
    let (code, _, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", custom],
    );
    assert_eq!(code, 200, "{body}");
    let bad = e.w.cli(&[
        "price",
        "set",
        "m",
        "--input-per-mtok",
        "-1",
        "--output-per-mtok",
        "1",
    ]);
    assert!(!bad.status.success(), "a negative price must be refused");

    // The budget endpoint answers from inside the workload and is never forwarded.
    let n = e.fake.request_count();
    let (code, _, body) = e.curl("/.well-known/spendguard/budget", &[]);
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(
        (s["agent"].as_str(), s["status"].as_str()),
        (Some("acme.capped"), Some("active")),
        "{s}"
    );
    assert_eq!(e.fake.request_count(), n);
}

#[test]
fn two_hundred_concurrent_requests_against_a_budget_for_ten() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.burst");
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"count to three"}],"max_tokens":100}"#;
    // The worst case the proxy will reserve for exactly this body, and a provider that bills exactly it:
    // then the budget holds exactly ten, however the requests interleave.
    let quote = chat_quote(body);
    let worst = quote.worst_case;
    let limit = MicroUsd(worst.0 * 10);
    e.cli_ok(&["limit", "set", "acme.burst", "--daily", &limit.to_string()]);

    // 200 requests at once from one process in the tagged cgroup (200 threads, one connection each).
    let code = format!(
        r#"
import http.client, ssl, json, threading
from concurrent.futures import ThreadPoolExecutor
ctx = ssl.create_default_context()
body = {body:?}
barrier = threading.Barrier(200)
def one(i):
    c = http.client.HTTPSConnection("api.openai.com", 443, context=ctx, timeout=60)
    c.connect()
    barrier.wait()
    c.request("POST", "/v1/chat/completions", body=body, headers={{"content-type": "application/json", "x-fake-usage": "prompt={p},completion={o}"}})
    r = c.getresponse(); r.read(); c.close()
    return r.status
with ThreadPoolExecutor(200) as ex:
    codes = list(ex.map(one, range(200)))
emit(codes)
"#,
        p = quote.worst_input_tokens,
        o = quote.worst_output_tokens,
    );
    let out = python(e.at(), HOSTS, &e.ca, &code);
    let codes: Vec<u16> = out
        .as_array()
        .expect("codes")
        .iter()
        .filter_map(|c| c.as_u64())
        .map(|c| c as u16)
        .collect();
    assert_eq!(codes.len(), 200, "{out}");
    let ok = codes.iter().filter(|c| **c == 200).count();
    let blocked = codes.iter().filter(|c| **c == 402).count();
    assert_eq!((ok, blocked), (10, 190), "status codes: {codes:?}");
    assert_eq!(
        e.fake.request_count(),
        10,
        "the provider must see exactly the allowed requests"
    );
    let spent = e.settled_spend("acme.burst");
    assert!(
        spent <= limit.0,
        "overshoot: spent {spent} > limit {}",
        limit.0
    );
    assert_eq!(
        spent, limit.0,
        "each allowed request billed exactly its worst case"
    );
}

#[test]
fn agent_killed_mid_stream_keeps_the_charge_and_serves_again() {
    if !privileged() {
        return;
    }
    // Exact reservations: the charge after a crash is exactly the in-flight worst case. (With
    // budget leases it is that plus the unused slice: faults.rs checks that bound.)
    let e = Env::with("acme.crash", |w| {
        w.set_agent_env("SPENDGUARD_LEASE_USD", "0")
    });
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"long story"}],"max_tokens":500}"#;
    let quote = chat_quote(body);

    // A slow stream, in the background.
    let mut client = e.spawn_slow_stream(body, 200, 50);
    e.wait_provider_requests(1);
    std::thread::sleep(Duration::from_millis(200));
    e.w.kill_agent();
    let _ = client.kill();
    let _ = client.wait();

    e.w.start_agent();
    let status = e.cli_json(&["status", "acme.crash"]);
    assert_eq!(
        usd_to_micro(&status["spent"]["total"]),
        quote.worst_case.0,
        "the in-flight reservation must become the charge: {status}"
    );
    assert_eq!(usd_to_micro(&status["reserved"]), 0, "{status}");
    let audit = e.cli_json(&["audit", "--agent", "acme.crash"]);
    assert_eq!(audit[0]["recovered"], true, "{audit}");

    let small =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    let (code, _, b) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", small],
    );
    assert_eq!(code, 200, "the restarted agent must serve again: {b}");
}

#[test]
fn responses_api_and_gemini_are_charged_exactly_json_and_streamed() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.formats");
    let out = python(
        e.at(),
        HOSTS,
        &e.ca,
        r#"
import openai
oc = openai.OpenAI(api_key="sk-test", max_retries=0)
r = oc.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=50,
    extra_headers={"x-fake-usage": "prompt=800,completion=90,cached=300"})
with oc.responses.stream(model="gpt-4o-mini", input="hi", max_output_tokens=50,
        extra_headers={"x-fake-usage": "prompt=120,completion=33"}) as s:
    final = s.get_final_response()
emit({"json_in": r.usage.input_tokens, "stream_out": final.usage.output_tokens})
"#,
    );
    assert_eq!(
        (out["json_in"].as_u64(), out["stream_out"].as_u64()),
        (Some(800), Some(33)),
        "{out}"
    );

    let g = "generativelanguage.googleapis.com";
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":64}}"#;
    let json = [
        "-H",
        "content-type: application/json",
        "-H",
        "x-goog-api-key: k",
        "-H",
        "x-fake-usage: prompt=400,completion=30,reasoning=20",
        "-d",
        body,
    ];
    let (code, _, resp) = curl_host(
        e.at(),
        &e.ca,
        g,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &json,
    );
    assert_eq!(code, 200, "{resp}");
    let sse = [
        "-H",
        "content-type: application/json",
        "-H",
        "x-goog-api-key: k",
        "-H",
        "x-fake-usage: prompt=50,completion=12",
        "-d",
        body,
    ];
    let (code, _, resp) = curl_host(
        e.at(),
        &e.ca,
        g,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        &sse,
    );
    assert_eq!(code, 200, "{resp}");
    assert!(
        resp.contains("usageMetadata"),
        "the client sees Gemini's own usage: {resp}"
    );

    let gpt = price("gpt-4o-mini");
    let gem = price("gemini-2.5-flash");
    let expected = gpt.cost(&openai_usage(800, 90, 300)).0
        + gpt.cost(&openai_usage(120, 33, 0)).0
        // Gemini bills thinking tokens as output.
        + gem.cost(&Usage { input_uncached: 400, output: 50, reasoning: 20, ..Usage::default() }).0
        + gem.cost(&Usage { input_uncached: 50, output: 12, ..Usage::default() }).0;
    let spent = e.settled_spend("acme.formats");
    assert_eq!(
        spent, expected,
        "charged {spent} µUSD, expected exactly {expected} µUSD"
    );
}
