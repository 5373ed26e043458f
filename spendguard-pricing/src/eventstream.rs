//! The `application/vnd.amazon.eventstream` binary framing (AWS Bedrock streaming answers), read
//! incrementally as the bytes arrive.
//!
//! One message on the wire (all integers big-endian):
//! ```text
//! total_len u32 | headers_len u32 | prelude_crc u32 (CRC-32 of the 8 bytes before it)
//! headers (headers_len bytes) | payload (total_len - headers_len - 16 bytes)
//! message_crc u32 (CRC-32 of everything before it)
//! ```
//! A header is `name_len u8 | name | type u8 | value`; value types: 0 true, 1 false, 2 byte,
//! 3 short, 4 int, 5 long, 6 bytes (u16 length), 7 string (u16 length), 8 timestamp (i64 ms),
//! 9 uuid (16 bytes).
//!
//! A well-kept crate exists for this (`aws-smithy-eventstream`), but it brings the AWS SDK's type
//! crates with it; this reader is ~150 lines, checks both CRCs, never allocates more than one
//! message (≤ [`MAX_MESSAGE`]), and has a fuzz target (`fuzz/fuzz_targets/eventstream.rs`).
//! After the first framing error the reader stops for good: the stream's usage is then unknown and
//! the reservation stands as the charge.

/// Largest message AWS sends (16 MiB); a prelude announcing more is an error.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Largest headers section (128 KiB).
pub const MAX_HEADERS: usize = 128 * 1024;
const PRELUDE: usize = 12;
/// Prelude plus the trailing message CRC.
const OVERHEAD: usize = PRELUDE + 4;

/// A header value (only the string-like ones are kept; the others are skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    String(String),
    Bytes(Vec<u8>),
    /// Any other type (bool, integers, timestamp, uuid): present, value not kept.
    Other,
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value (`:event-type`, `:message-type`, `:content-type`, …).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Why the framing was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event stream prelude CRC mismatch")]
    PreludeCrc,
    #[error("event stream message CRC mismatch")]
    MessageCrc,
    #[error("event stream message length {0} out of range")]
    Length(u32),
    #[error("event stream headers malformed")]
    Headers,
}

/// Incremental reader: feed bytes in any split, get whole messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// The error that stopped the reader, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.failed.as_ref()
    }

    /// Bytes received but not yet part of a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `bytes`; appends every message completed by them to `out`. After an error, nothing
    /// more is decoded (and the error is returned again).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            match decode_one(&self.buf[at..]) {
                Ok(Some((msg, used))) => {
                    out.push(msg);
                    at += used;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..at);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        result
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One message from the start of `buf`: `None` if it is not complete yet.
fn decode_one(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    if buf.len() < PRELUDE {
        return Ok(None);
    }
    let total = be32(&buf[0..4]);
    let headers_len = be32(&buf[4..8]);
    if crc32fast::hash(&buf[0..8]) != be32(&buf[8..12]) {
        return Err(FrameError::PreludeCrc);
    }
    let total_usize = total as usize;
    if !(OVERHEAD..=MAX_MESSAGE).contains(&total_usize) {
        return Err(FrameError::Length(total));
    }
    let headers_usize = headers_len as usize;
    if headers_usize > MAX_HEADERS || headers_usize > total_usize - OVERHEAD {
        return Err(FrameError::Length(total));
    }
    if buf.len() < total_usize {
        return Ok(None);
    }
    let body_end = total_usize - 4;
    if crc32fast::hash(&buf[..body_end]) != be32(&buf[body_end..total_usize]) {
        return Err(FrameError::MessageCrc);
    }
    let headers = parse_headers(&buf[PRELUDE..PRELUDE + headers_usize])?;
    let payload = buf[PRELUDE + headers_usize..body_end].to_vec();
    Ok(Some((Message { headers, payload }, total_usize)))
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, FrameError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if b.len() < n {
            return Err(FrameError::Headers);
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let name_len = take(&mut b, 1)?[0] as usize;
        let name = std::str::from_utf8(take(&mut b, name_len)?)
            .map_err(|_| FrameError::Headers)?
            .to_string();
        let kind = take(&mut b, 1)?[0];
        let value = match kind {
            0 | 1 => HeaderValue::Other,
            2 => take(&mut b, 1).map(|_| HeaderValue::Other)?,
            3 => take(&mut b, 2).map(|_| HeaderValue::Other)?,
            4 => take(&mut b, 4).map(|_| HeaderValue::Other)?,
            5 | 8 => take(&mut b, 8).map(|_| HeaderValue::Other)?,
            9 => take(&mut b, 16).map(|_| HeaderValue::Other)?,
            6 | 7 => {
                let len = take(&mut b, 2)?;
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                let v = take(&mut b, len)?;
                if kind == 7 {
                    HeaderValue::String(
                        std::str::from_utf8(v)
                            .map_err(|_| FrameError::Headers)?
                            .to_string(),
                    )
                } else {
                    HeaderValue::Bytes(v.to_vec())
                }
            }
            _ => return Err(FrameError::Headers),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Encodes one message with string headers (tests, fake servers, the fuzz target's oracle);
/// names longer than 255 bytes and values longer than 65,535 bytes are cut at a character.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    fn clip(s: &str, max: usize) -> &[u8] {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s.as_bytes()[..end]
    }
    for (name, value) in headers {
        let name = clip(name, 255);
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        h.push(7);
        let value = clip(value, u16::MAX as usize);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value);
    }
    let total = (OVERHEAD + h.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        encode(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    #[test]
    fn decodes_messages_in_any_split() {
        let mut wire = event("messageStart", r#"{"role":"assistant"}"#);
        wire.extend(event("metadata", r#"{"usage":{"inputTokens":3}}"#));
        for at in 0..=wire.len() {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            d.feed(&wire[..at], &mut out).unwrap();
            d.feed(&wire[at..], &mut out).unwrap();
            assert_eq!(out.len(), 2, "split at {at}");
            assert_eq!(out[1].header(":event-type"), Some("metadata"));
            assert_eq!(out[1].payload, br#"{"usage":{"inputTokens":3}}"#);
            assert_eq!(d.pending(), 0);
        }
    }

    /// The test vectors of AWS's reference implementation (aws-c-event-stream): an empty
    /// message, and one without headers whose payload is `{'foo':'bar'}`.
    #[test]
    fn decodes_the_reference_vectors() {
        let empty = [
            0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98,
            0xc8, 0xff,
        ];
        let no_headers = [
            0x00, 0x00, 0x00, 0x1D, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x52, 0x8c, 0x5a, 0x7b, 0x27,
            0x66, 0x6f, 0x6f, 0x27, 0x3a, 0x27, 0x62, 0x61, 0x72, 0x27, 0x7d, 0xc3, 0x65, 0x39,
            0x36,
        ];
        let mut out = Vec::new();
        Decoder::new().feed(&empty, &mut out).unwrap();
        Decoder::new().feed(&no_headers, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[0].headers.is_empty() && out[0].payload.is_empty());
        assert_eq!(out[1].payload, b"{'foo':'bar'}");
        // The encoder produces exactly these bytes.
        assert_eq!(encode(&[], b""), empty);
        assert_eq!(encode(&[], b"{'foo':'bar'}"), no_headers);
    }

    #[test]
    fn corrupt_frames_stop_the_reader() {
        let good = event("metadata", "{}");
        let mut bad = good.clone();
        bad[2] ^= 1;
        let mut out = Vec::new();
        let mut d = Decoder::new();
        assert_eq!(d.feed(&bad, &mut out), Err(FrameError::PreludeCrc));
        assert_eq!(
            d.feed(&good, &mut out),
            Err(FrameError::PreludeCrc),
            "stays failed"
        );
        assert!(out.is_empty());

        let mut bad = good.clone();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        assert_eq!(
            Decoder::new().feed(&bad, &mut out),
            Err(FrameError::MessageCrc)
        );
        // A prelude announcing more than 16 MiB, with a valid prelude CRC.
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&huge);
        huge.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            Decoder::new().feed(&huge, &mut out),
            Err(FrameError::Length(_))
        ));
        // Headers longer than the message.
        let mut h = Vec::new();
        h.extend_from_slice(&16u32.to_be_bytes());
        h.extend_from_slice(&8u32.to_be_bytes());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            Decoder::new().feed(&h, &mut out),
            Err(FrameError::Length(_))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn other_header_types_are_skipped() {
        // name "n", type 4 (int), value; then ":event-type" string.
        let mut h = vec![1, b'n', 4, 0, 0, 0, 7];
        h.extend_from_slice(&[11]);
        h.extend_from_slice(b":event-type");
        h.push(7);
        h.extend_from_slice(&5u16.to_be_bytes());
        h.extend_from_slice(b"chunk");
        let total = (16 + h.len()) as u32;
        let mut wire = total.to_be_bytes().to_vec();
        wire.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&wire);
        wire.extend_from_slice(&crc.to_be_bytes());
        wire.extend_from_slice(&h);
        let crc = crc32fast::hash(&wire);
        wire.extend_from_slice(&crc.to_be_bytes());
        let mut out = Vec::new();
        Decoder::new().feed(&wire, &mut out).unwrap();
        assert_eq!(out[0].headers[0], ("n".to_string(), HeaderValue::Other));
        assert_eq!(out[0].header(":event-type"), Some("chunk"));
        assert!(out[0].payload.is_empty());
    }
}
