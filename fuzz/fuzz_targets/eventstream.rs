//! The Bedrock event-stream reader (`spendguard_pricing::eventstream`) and the Bedrock stream
//! usage taps: never panic, whatever the bytes and however they are split; the decoder gives the
//! same messages in any split; a frame the encoder wrote decodes to what was encoded; the taps
//! forward every byte unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendguard_pricing::eventstream::{encode, Decoder};
use spendguard_pricing::providers::{adapter_for, ProviderId, QuoteOptions};
use spendguard_pricing::PriceTable;

fn decode_all(chunks: &[&[u8]]) -> (Vec<spendguard_pricing::eventstream::Message>, bool) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut failed = false;
    for c in chunks {
        failed |= d.feed(c, &mut out).is_err();
    }
    (out, failed)
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static PRICES: PriceTable = PriceTable::bundled());
    let Some((&sel, rest)) = data.split_first() else { return };
    let step = 1 + (sel as usize % 97);

    // Raw bytes: same answer whole or split.
    let (whole, whole_failed) = decode_all(&[rest]);
    let chunks: Vec<&[u8]> = rest.chunks(step).collect();
    let (split, split_failed) = decode_all(&chunks);
    assert_eq!(whole_failed, split_failed, "the split changed whether the stream fails");
    assert_eq!(whole, split, "the split changed the messages");

    // Round trip: the input cut into a header value and a payload.
    let cut = (sel as usize).min(rest.len());
    let (value, payload) = rest.split_at(cut);
    let value = String::from_utf8_lossy(value);
    let wire = encode(&[(":event-type", &value)], payload);
    let (msgs, failed) = decode_all(&wire.chunks(step).collect::<Vec<_>>());
    assert!(!failed, "an encoded frame was refused");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].payload, payload);
    assert_eq!(msgs[0].header(":event-type"), Some(value.as_ref()));

    // The Bedrock stream taps forward every byte unchanged.
    let adapter = adapter_for(ProviderId::Bedrock);
    let (path, body): (&str, &[u8]) = if sel % 2 == 0 {
        (
            "/model/amazon.nova-lite-v1%3A0/converse-stream",
            br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":5}}"#,
        )
    } else {
        (
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
            br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        )
    };
    let headers = http::HeaderMap::new();
    let Ok(quote) = PRICES.with(|p| {
        adapter.quote(&http::Method::POST, path, &headers, body, p, &QuoteOptions::none())
    }) else {
        panic!("the fixed Bedrock bodies must be priced");
    };
    for input in [rest, wire.as_slice()] {
        let mut tap = quote.response_tap(200, Some("application/vnd.amazon.eventstream"));
        let mut out = Vec::new();
        for c in input.chunks(step) {
            out.extend_from_slice(&tap.on_chunk(c));
        }
        let (tail, _usage) = tap.finish();
        out.extend_from_slice(&tail);
        assert_eq!(out, input, "a Bedrock tap altered the body");
    }
});
