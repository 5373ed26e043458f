//! The WebSocket frame tap (`spendguard_agent::proxy::websocket`) and the Realtime event readers
//! over what it yields: never panic, whatever the bytes, for either sender and either limit;
//! the reader gives the same events at the same stream offsets however the stream is split, and
//! fails or not alike; frames the encoder wrote (masked or not, fragmented at an
//! input-chosen point) decode to what was encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendguard_agent::proxy::websocket::{encode, Event, FrameReader, Limit, Opcode, Sender};
use spendguard_pricing::realtime::{classify_client, classify_server};

/// Events with their offsets made stream-absolute, and whether the stream failed.
fn read_all(sender: Sender, limit: Limit, chunks: &[&[u8]]) -> (Vec<Event>, bool) {
    let mut r = FrameReader::new(sender, limit);
    let mut out = Vec::new();
    let mut base = 0;
    for c in chunks {
        match r.feed(c) {
            Ok(evs) => out.extend(evs.into_iter().map(|e| match e {
                Event::Message { text, payload, end } => Event::Message {
                    text,
                    payload,
                    end: base + end,
                },
                Event::Control {
                    kind,
                    payload,
                    inside_message,
                    end,
                } => Event::Control {
                    kind,
                    payload,
                    inside_message,
                    end: base + end,
                },
            })),
            Err(_) => return (out, true),
        }
        base += c.len();
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let step = 1 + (sel as usize % 61);
    let sender = if sel & 0x80 != 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let limit = if sel & 0x40 != 0 {
        Limit::Refuse(256)
    } else {
        Limit::Skip(256)
    };

    let (whole, whole_failed) = read_all(sender, limit, &[rest]);
    let chunks: Vec<&[u8]> = rest.chunks(step).collect();
    let (split, split_failed) = read_all(sender, limit, &chunks);
    assert_eq!(
        whole_failed, split_failed,
        "the split changed whether the stream fails"
    );
    // A failing feed returns no events of its own call, so only clean streams compare whole.
    if !whole_failed {
        assert_eq!(whole, split, "the split changed the events");
    }
    for e in &whole {
        assert!(e.end() <= rest.len());
        if let Event::Message {
            text: true,
            payload: Some(p),
            ..
        } = e
        {
            let _ = classify_client(p);
            let _ = classify_server(p);
        }
    }

    // Round trip: the input as a text message, in two fragments cut at an input-chosen point.
    let cut = (sel as usize).min(rest.len());
    let mask = (sender == Sender::Client).then(|| {
        let m = rest.get(..4).unwrap_or(&[1, 2, 3, 4]);
        [
            m.first().copied().unwrap_or(1),
            m.get(1).copied().unwrap_or(2),
            m.get(2).copied().unwrap_or(3),
            m.get(3).copied().unwrap_or(4),
        ]
    });
    let mut first = encode(Opcode::Text, &rest[..cut], mask);
    first[0] &= 0x7F; // not final
    let mut second = encode(Opcode::Text, &rest[cut..], mask);
    second[0] = 0x80; // final continuation
    let wire = [first, second].concat();
    let (events, failed) = read_all(
        sender,
        Limit::Skip(1 << 20),
        &wire.chunks(step).collect::<Vec<_>>(),
    );
    assert!(!failed, "an encoded message was refused");
    assert_eq!(
        events,
        vec![Event::Message {
            text: true,
            payload: Some(rest.to_vec()),
            end: wire.len()
        }]
    );
});
