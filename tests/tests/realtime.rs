//! Issue 16, item 5: OpenAI Realtime sessions (WebSocket) are metered, end to end — the real
//! `openai` SDK's realtime client (websockets underneath) in a tagged cgroup, through the BPF
//! redirect and TLS interception, against the fake Realtime server (`fake_realtime.rs`).
//!
//! gpt-realtime's worst response is a full 32,000-token context at the audio input rate ($32/M)
//! plus 4,096 output tokens at the audio output rate ($64/M): $1.286144.

use spendguard_pricing::PriceTable;
use spendguard_tests::fake_realtime::SERVER_TURN_USAGE;
use spendguard_tests::metered::{usd_to_micro, Metered as Env, HOSTS};
use spendguard_tests::privileged;
use spendguard_tests::sdk::python;

const AGENT: &str = "acme.voice.bot";
const WORST: u64 = 1_286_144;

/// The cost of one response's tokens at gpt-realtime's bundled prices, computed from the table's
/// rates here (not through the agent's reader).
fn cost(n: [u64; 6]) -> u64 {
    let t = PriceTable::bundled();
    let (_, p) = t.lookup("gpt-realtime").expect("gpt-realtime priced");
    let a = p.audio.as_ref().expect("audio prices");
    let [it, ia, ct, ca, ot, oa] = n;
    let r = |m: spendguard_pricing::MicroUsd| u128::from(m.0);
    let sum = u128::from(it - ct) * r(p.input_per_mtok)
        + u128::from(ct) * r(p.cached_input_per_mtok.expect("cached"))
        + u128::from(ia - ca) * r(a.input_per_mtok)
        + u128::from(ca) * r(a.cached_input_per_mtok.expect("cached audio"))
        + u128::from(ot) * r(p.output_per_mtok)
        + u128::from(oa) * r(a.output_per_mtok);
    u64::try_from(sum.div_ceil(1_000_000)).expect("fits")
}

fn metadata(n: [u64; 6]) -> String {
    let k = [
        "input_text",
        "input_audio",
        "cached_text",
        "cached_audio",
        "output_text",
        "output_audio",
    ];
    let pairs: Vec<String> = k
        .iter()
        .zip(n)
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// A Python snippet: opens a session with the SDK, sends each step (`create:{metadata}` a
/// response.create, `commit` an input_audio_buffer.commit the server answers with a response
/// of its own), reads until each response.done (or an error / close), and emits what it saw.
fn session_script(steps: &[String]) -> String {
    let steps_py: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"
import asyncio, json
from openai import AsyncOpenAI
import websockets

STEPS = [{steps}]

async def main():
    client = AsyncOpenAI(api_key="sk-test", max_retries=0)
    out = {{"done": [], "errors": [], "close_code": None, "status": None, "headers": {{}}}}
    try:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            first = json.loads(await conn.recv_bytes())
            out["first"] = first["type"]
            for step in STEPS:
                if step == "commit":
                    await conn.send({{"type": "input_audio_buffer.commit"}})
                else:
                    await conn.send({{"type": "response.create", "response": {{"metadata": json.loads(step[len("create:"):])}}}})
                while True:
                    ev = json.loads(await conn.recv_bytes())
                    if ev["type"] == "response.done":
                        out["done"].append(ev["response"]["usage"]["total_tokens"])
                        break
                    if ev["type"] == "error":
                        out["errors"].append(ev["error"])
                        break
                if out["errors"]:
                    break
            if out["errors"]:
                # SpendGuard closes the session after its error event.
                await asyncio.wait_for(conn.recv_bytes(), 10)
    except websockets.exceptions.ConnectionClosed as e:
        out["close_code"] = e.rcvd.code if e.rcvd else None
        out["close_reason"] = e.rcvd.reason if e.rcvd else None
    except websockets.exceptions.InvalidStatus as e:
        out["status"] = e.response.status_code
        out["body"] = e.response.body.decode("utf-8", "replace")
    emit(out)

asyncio.run(main())
"#,
        steps = steps_py.join(", ")
    )
}

fn run(e: &Env, steps: &[String]) -> serde_json::Value {
    python(e.at(), HOSTS, &e.ca, &session_script(steps))
}

fn creates(e: &Env) -> usize {
    e.fake
        .realtime_events()
        .iter()
        .filter(|v| v["type"] == "response.create")
        .count()
}

#[test]
fn each_response_done_is_charged_and_the_slice_is_topped_up_before_a_create_it_cannot_cover() {
    if !privileged() {
        return;
    }
    // A slice of one cent: the session opens with one response's worst case, so every
    // response.create after the first needs a top-up.
    let e = Env::with(AGENT, |w| w.set_agent_config("realtime_slice_usd = 0.01\n"));
    e.cli_ok(&["limit", "set", AGENT, "--total", "20"]);
    let usages = [
        [100, 1000, 0, 200, 50, 400],
        [300, 2000, 100, 500, 80, 900],
        [10, 0, 0, 0, 5, 0],
    ];
    let mut steps: Vec<String> = usages
        .iter()
        .map(|n| format!("create:{}", metadata(*n)))
        .collect();
    steps.push("commit".into());
    let out = run(&e, &steps);
    assert_eq!(out["first"], "session.created", "{out}");
    assert_eq!(out["done"].as_array().map(Vec::len), Some(4), "{out}");
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");

    let want: u64 = usages.iter().map(|n| cost(*n)).sum::<u64>() + cost(SERVER_TURN_USAGE);
    assert_eq!(e.settled_spend(AGENT), want);
    assert_eq!(creates(&e), 3);
    // The opening slice and a top-up before each later create and the server's own turn.
    let audit: Vec<_> = e
        .audit(AGENT)
        .into_iter()
        .filter(|a| a["model"] == "gpt-realtime")
        .collect();
    assert_eq!(audit.len(), 4, "{audit:?}");
    assert!(
        audit.iter().all(|a| a["decision"] == "allowed"),
        "{audit:?}"
    );
    assert_eq!(usd_to_micro(&audit[0]["reserved"]), WORST);
    let charged: u64 = audit.iter().map(|a| usd_to_micro(&a["cost_usd"])).sum();
    assert_eq!(charged, want);
    // per-message-deflate was offered by the client and negotiated away.
    let upgrade = e
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/v1/realtime"))
        .expect("the upgrade reached the provider");
    assert!(
        !upgrade
            .headers
            .iter()
            .any(|(k, _)| k == "sec-websocket-extensions"),
        "{:?}",
        upgrade.headers
    );
    let m = e.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("spendguard_spend_usd_total") && l.contains("gpt-realtime")),
        "no spend metric for gpt-realtime"
    );
}

#[test]
fn an_exhausted_budget_closes_the_session_with_an_error_event_and_a_later_open_gets_402() {
    if !privileged() {
        return;
    }
    let e = Env::new(AGENT);
    e.cli_ok(&["limit", "set", AGENT, "--total", "2"]);
    // Each response costs $0.576; the third would need $1.152 + a worst case of $1.286 > $2.
    let big = [0, 10_000, 0, 0, 0, 4_000];
    let step = format!("create:{}", metadata(big));
    let out = run(&e, &[step.clone(), step.clone(), step]);
    assert_eq!(out["done"].as_array().map(Vec::len), Some(2), "{out}");
    let err = &out["errors"][0];
    assert_eq!(err["code"], "budget_exceeded", "{out}");
    assert_eq!(err["spendguard"]["agent"], AGENT, "{out}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("Realtime")),
        "{out}"
    );
    assert_eq!(out["close_code"], 1008, "{out}");
    // The provider never saw the refused response.create.
    assert_eq!(creates(&e), 2);
    assert_eq!(e.settled_spend(AGENT), 2 * cost(big));
    let blocked = e
        .audit(AGENT)
        .into_iter()
        .filter(|a| a["decision"] == "blocked")
        .count();
    assert_eq!(blocked, 1);

    // $0.848 left, less than one response's worst case: the next session is refused at open.
    let upgrades_before = e
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/realtime"))
        .count();
    let out = run(&e, &[]);
    assert_eq!(out["status"], 402, "{out}");
    assert!(
        out["body"]
            .as_str()
            .is_some_and(|b| b.contains("BUDGET_EXCEEDED")),
        "{out}"
    );
    let upgrades_after = e
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/realtime"))
        .count();
    assert_eq!(upgrades_after, upgrades_before);
    assert_eq!(e.settled_spend(AGENT), 2 * cost(big));
}

#[test]
fn an_agent_killed_mid_session_charges_the_sessions_slice() {
    if !privileged() {
        return;
    }
    // Exact reservations: after the crash the charge is exactly what the session held.
    let e = Env::with(AGENT, |w| w.set_agent_env("SPENDGUARD_LEASE_USD", "0"));
    e.cli_ok(&["limit", "set", AGENT, "--total", "10"]);
    let n = [100, 1000, 0, 0, 50, 400];
    let code = format!(
        r#"
import asyncio, json
from openai import AsyncOpenAI
import websockets

async def main():
    client = AsyncOpenAI(api_key="sk-test", max_retries=0)
    out = {{"done": 0}}
    try:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.recv_bytes()
            await conn.send({{"type": "response.create", "response": {{"metadata": json.loads({meta:?})}}}})
            while json.loads(await conn.recv_bytes())["type"] != "response.done":
                pass
            out["done"] = 1
            # Hold the session open until the agent dies under it.
            await asyncio.wait_for(conn.recv_bytes(), 30)
    except (websockets.exceptions.ConnectionClosed, asyncio.TimeoutError) as ex:
        out["ended"] = type(ex).__name__
    emit(out)

asyncio.run(main())
"#,
        meta = metadata(n)
    );
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| python(e.at(), HOSTS, &e.ca, &code));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while creates(&e) < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the session never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Let the response.done pass the tap, then crash under the open session.
        std::thread::sleep(std::time::Duration::from_millis(500));
        e.w.kill_agent();
        client.join().expect("client thread")
    });
    assert_eq!(out["done"], 1, "{out}");
    e.w.start_agent();
    let status = e.cli_json(&["status", AGENT]);
    let spent = usd_to_micro(&status["spent"]["total"]);
    assert!(spent >= cost(n), "a charge was lost: {status}");
    assert_eq!(
        spent, 2_000_000,
        "the session's slice ($2) is the charge: {status}"
    );
    assert_eq!(usd_to_micro(&status["reserved"]), 0, "{status}");
    let audit = e.audit(AGENT);
    assert!(audit.iter().any(|a| a["recovered"] == true), "{audit:?}");
}
