//! The control socket's request parsing (control::protocol::parse_request, what the server runs on
//! each line before dispatch): arbitrary lines never panic, every refusal is a typed error, a parsed
//! request survives serde unchanged, and the agent names dispatch validates first never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendguard_agent::control::protocol::{parse_request, ProtocolError, Request};
use spendguard_agent::control::MAX_REQUEST_BYTES;
use spendguard_agent::identity::AgentName;

/// A request's fields: each leaf's JSON value comes from the input.
enum Field {
    Value(&'static str),
    Object(&'static str, &'static [Field]),
}
use Field::{Object, Value};

const AGENT: Field = Value("agent");
const OPS: [(&str, &[Field]); 14] = [
    ("ping", &[]),
    ("recover_confirm", &[]),
    ("tag", &[Value("cgroup"), AGENT]),
    ("untag", &[Value("cgroup")]),
    ("agents", &[]),
    ("ca_export", &[]),
    (
        "limit_set",
        &[
            AGENT,
            Object(
                "patch",
                &[
                    Value("per_call"),
                    Value("daily"),
                    Value("weekly"),
                    Value("monthly"),
                    Value("total"),
                    Value("expires_at"),
                    Value("pause_on_exhaust"),
                    Value("webhook"),
                    Value("soft_threshold_pct"),
                ],
            ),
        ],
    ),
    ("limit_show", &[AGENT]),
    ("status", &[AGENT]),
    ("pause", &[AGENT]),
    ("resume", &[AGENT]),
    ("audit", &[AGENT, Value("since"), Value("limit")]),
    (
        "price_set",
        &[
            Value("model"),
            Object(
                "price",
                &[
                    Value("input_per_mtok"),
                    Value("output_per_mtok"),
                    Value("cached_input_per_mtok"),
                    Value("max_output_tokens"),
                    Value("context_window"),
                ],
            ),
        ],
    ),
    ("prices", &[]),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Even selector: the rest is the line as a client sent it. Odd: a request of a known op whose
    // field values are the rest's NUL-separated pieces (an empty piece leaves the field out), so the
    // fuzzer spends its time in the values rather than in finding the field names.
    let line = if sel & 1 == 0 {
        rest.to_vec()
    } else {
        let (op, fields) = OPS[(sel as usize >> 1) % OPS.len()];
        let mut line = format!(r#"{{"op":"{op}""#).into_bytes();
        let mut values = rest.split(|&b| b == 0);
        emit(&mut line, fields, &mut values, false);
        line.push(b'}');
        line
    };
    match parse_request(&line) {
        Err(ProtocolError::TooLarge { limit }) => assert!(line.len() > limit),
        Err(ProtocolError::Malformed(e)) => {
            assert!(line.len() <= MAX_REQUEST_BYTES);
            let _ = e.to_string();
        }
        Ok(req) => {
            let wire = serde_json::to_vec(&req).expect("a parsed request serializes");
            let again: Request = match serde_json::from_slice(&wire) {
                Ok(r) => r,
                Err(e) => panic!(
                    "{req:?} serialized as {} does not parse: {e}",
                    String::from_utf8_lossy(&wire)
                ),
            };
            assert_eq!(
                again,
                req,
                "serialized as {}",
                String::from_utf8_lossy(&wire)
            );
            for agent in agents(&req) {
                if let Ok(name) = agent.parse::<AgentName>() {
                    assert_eq!(name.as_str(), agent);
                    assert!(name.ancestors_and_self().iter().all(|a| name.is_within(a)));
                }
            }
        }
    }
});

/// Appends `"name":value` for each field with a non-empty value (objects always, possibly empty),
/// comma-separated after what `line` already holds unless `first`.
fn emit<'a>(
    line: &mut Vec<u8>,
    fields: &[Field],
    values: &mut impl Iterator<Item = &'a [u8]>,
    mut first: bool,
) {
    let mut key = |line: &mut Vec<u8>, name: &str| {
        if !std::mem::replace(&mut first, false) {
            line.push(b',');
        }
        line.extend_from_slice(format!(r#""{name}":"#).as_bytes());
    };
    for field in fields {
        match field {
            Value(name) => {
                if let Some(v) = values.next().filter(|v| !v.is_empty()) {
                    key(line, name);
                    line.extend_from_slice(v);
                }
            }
            Object(name, inner) => {
                key(line, name);
                line.push(b'{');
                emit(line, inner, values, true);
                line.push(b'}');
            }
        }
    }
}

/// The agent names a request carries (what dispatch parses before it touches the ledger).
fn agents(req: &Request) -> Vec<&str> {
    match req {
        Request::Tag { agent, .. }
        | Request::LimitSet { agent, .. }
        | Request::LimitShow { agent }
        | Request::Status { agent }
        | Request::Pause { agent }
        | Request::Resume { agent } => vec![agent],
        Request::Audit { agent, .. } => agent.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}
