//! WebSocket frames (RFC 6455) read beside a relayed stream: the tap of a WebSocket session.
//!
//! [`FrameReader`] is fed the bytes of one direction as they arrive, in reads of any size, and
//! reports each complete data message (reassembled from its fragments, unmasked) and each control
//! frame, with the offset in the fed chunk where it ended — so the relay can forward bytes exactly
//! up to a message boundary. It never holds the stream: bytes are the caller's to forward; the
//! reader only copies message payloads up to its limit.
//!
//! Extensions: none are understood. The relay strips `Sec-WebSocket-Extensions` from the client's
//! handshake, so per-message-deflate is never negotiated and the payload is the plain JSON the
//! meter reads; a frame with a reserved bit set (what a compressed frame carries) is an error.

/// Who sends the frames a reader sees: RFC 6455 requires client frames to be masked and server
/// frames not to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// What a reader does with a data message longer than its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Refuse it ([`FrameError::TooLarge`]) as soon as a frame header announces it.
    Refuse(usize),
    /// Let it pass unread: its [`Event::Message`] carries no payload.
    Skip(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Close,
    Ping,
    Pong,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete data message, ending at byte `end` of the chunk just fed. `payload` is `None`
    /// when it was longer than a [`Limit::Skip`].
    Message {
        text: bool,
        payload: Option<Vec<u8>>,
        end: usize,
    },
    /// A control frame ending at byte `end`; `inside_message` when it came between the fragments
    /// of a data message (so the stream is not at a message boundary there).
    Control {
        kind: Control,
        payload: Vec<u8>,
        inside_message: bool,
        end: usize,
    },
}

impl Event {
    pub fn end(&self) -> usize {
        match self {
            Event::Message { end, .. } | Event::Control { end, .. } => *end,
        }
    }

    /// Whether the stream is at a message boundary right after this event.
    pub fn at_boundary(&self) -> bool {
        !matches!(
            self,
            Event::Control {
                inside_message: true,
                ..
            }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame has reserved bits set ({0:#04x}): no WebSocket extension was negotiated (SpendGuard strips per-message-deflate from the handshake)")]
    Reserved(u8),
    #[error("unknown WebSocket opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame is fragmented or longer than 125 bytes ({0} bytes)")]
    BadControl(u64),
    #[error("a frame announces a length of {0} bytes, with the most significant bit set")]
    Length(u64),
    #[error("a continuation frame came with no message to continue")]
    Continuation,
    #[error("a new data frame came in the middle of a fragmented message")]
    Interleaved,
    #[error("a {0:?} frame is {1}masked, against RFC 6455")]
    Masking(Sender, &'static str),
    #[error("a message of more than {0} bytes cannot be metered")]
    TooLarge(usize),
    #[error("the stream already failed: {0}")]
    Failed(Box<FrameError>),
}

/// The frame being read, after its header.
struct Frame {
    fin: bool,
    opcode: u8,
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes read so far (the mask index).
    pos: u64,
    /// A control frame's payload.
    control: Vec<u8>,
}

/// The data message whose fragments are being read.
struct Message {
    text: bool,
    len: u64,
    /// `None` once it outgrew a [`Limit::Skip`].
    payload: Option<Vec<u8>>,
}

pub struct FrameReader {
    sender: Sender,
    limit: Limit,
    /// The header being read: at most 2 + 8 + 4 bytes.
    header: [u8; 14],
    header_len: usize,
    frame: Option<Frame>,
    message: Option<Message>,
    failed: Option<FrameError>,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// RFC 6455 5.5: control frames carry at most 125 bytes.
const MAX_CONTROL: u64 = 125;

impl FrameReader {
    pub fn new(sender: Sender, limit: Limit) -> FrameReader {
        FrameReader {
            sender,
            limit,
            header: [0; 14],
            header_len: 0,
            frame: None,
            message: None,
            failed: None,
        }
    }

    /// Whether the stream is between messages (no frame or fragmented message half read).
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message.is_none()
    }

    /// Reads `input`, the next bytes of the stream. After an error every later call fails too:
    /// the stream's framing is lost.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<Event>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(FrameError::Failed(Box::new(e.clone())));
        }
        let mut events = Vec::new();
        match self.feed_inner(input, &mut events) {
            Ok(()) => Ok(events),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn feed_inner(&mut self, input: &[u8], events: &mut Vec<Event>) -> Result<(), FrameError> {
        let mut i = 0;
        while i < input.len() {
            if self.frame.is_none() {
                // Header bytes, one at a time: a header may be split across any reads.
                self.header[self.header_len] = input[i];
                self.header_len += 1;
                i += 1;
                if self.header_len >= 2 && self.header_len == self.header_needed() {
                    self.start_frame()?;
                    if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
                        self.end_frame(i, events);
                    }
                }
                continue;
            }
            let Some(f) = self.frame.as_mut() else {
                continue;
            };
            let take = usize::try_from(f.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len() - i);
            let chunk = &input[i..i + take];
            let control = f.opcode >= OP_CLOSE;
            let keep = control || self.message.as_ref().is_some_and(|m| m.payload.is_some());
            if keep {
                let mut bytes = chunk.to_vec();
                if let Some(mask) = f.mask {
                    for (k, b) in bytes.iter_mut().enumerate() {
                        // The mask index is the payload offset mod 4; `pos` is within the frame.
                        *b ^= mask[((f.pos + k as u64) % 4) as usize];
                    }
                }
                if control {
                    f.control.extend_from_slice(&bytes);
                } else if let Some(p) = self.message.as_mut().and_then(|m| m.payload.as_mut()) {
                    p.extend_from_slice(&bytes);
                }
            }
            f.pos += take as u64;
            f.remaining -= take as u64;
            i += take;
            if f.remaining == 0 {
                self.end_frame(i, events);
            }
        }
        Ok(())
    }

    /// The header length its first two bytes announce.
    fn header_needed(&self) -> usize {
        let len7 = self.header[1] & 0x7F;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn start_frame(&mut self) -> Result<(), FrameError> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        if rsv != 0 {
            return Err(FrameError::Reserved(rsv));
        }
        let (len, at) = match b1 & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(FrameError::Length(len));
        }
        match (self.sender, masked) {
            (Sender::Client, false) => return Err(FrameError::Masking(Sender::Client, "not ")),
            (Sender::Server, true) => return Err(FrameError::Masking(Sender::Server, "")),
            _ => {}
        }
        let mask = masked.then(|| {
            let mut m = [0u8; 4];
            m.copy_from_slice(&self.header[at..at + 4]);
            m
        });
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL {
                    return Err(FrameError::BadControl(len));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(FrameError::Interleaved);
                }
                self.message = Some(Message {
                    text: opcode == OP_TEXT,
                    len: 0,
                    payload: Some(Vec::new()),
                });
            }
            OP_CONTINUATION => {
                if self.message.is_none() {
                    return Err(FrameError::Continuation);
                }
            }
            other => return Err(FrameError::Opcode(other)),
        }
        if opcode < OP_CLOSE {
            if let Some(m) = self.message.as_mut() {
                m.len = m.len.saturating_add(len);
                match self.limit {
                    Limit::Refuse(max) if m.len > max as u64 => {
                        return Err(FrameError::TooLarge(max))
                    }
                    Limit::Skip(max) if m.len > max as u64 => m.payload = None,
                    _ => {}
                }
                // Reserve what the frame announces, up to the limit (never a length a peer
                // claims beyond it).
                if let Some(p) = m.payload.as_mut() {
                    p.reserve(usize::try_from(len).unwrap_or(0));
                }
            }
        }
        self.header_len = 0;
        self.frame = Some(Frame {
            fin,
            opcode,
            remaining: len,
            mask,
            pos: 0,
            control: Vec::new(),
        });
        Ok(())
    }

    fn end_frame(&mut self, end: usize, events: &mut Vec<Event>) {
        let Some(f) = self.frame.take() else { return };
        let kind = match f.opcode {
            OP_CLOSE => Some(Control::Close),
            OP_PING => Some(Control::Ping),
            OP_PONG => Some(Control::Pong),
            _ => None,
        };
        if let Some(kind) = kind {
            events.push(Event::Control {
                kind,
                payload: f.control,
                inside_message: self.message.is_some(),
                end,
            });
            return;
        }
        if f.fin {
            if let Some(m) = self.message.take() {
                events.push(Event::Message {
                    text: m.text,
                    payload: m.payload,
                    end,
                });
            }
        }
    }
}

/// One unfragmented frame: server frames go unmasked (`mask: None`), client frames masked.
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode as u8);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The opcodes SpendGuard writes itself.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum Opcode {
    Text = OP_TEXT,
    Close = OP_CLOSE,
}

/// A close frame's payload: the status code, then a reason (cut to fit the 125-byte limit).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame with every field chosen by the test (fin, opcode, mask).
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = encode(Opcode::Text, payload, mask);
        f[0] = (if fin { 0x80 } else { 0 }) | opcode;
        f
    }

    fn messages(events: &[Event]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message { payload, .. } => payload.clone(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn client_frames_are_unmasked() {
        let bytes = frame(true, OP_TEXT, b"Hello", Some(KEY));
        // RFC 6455 5.7's masked "Hello" example.
        assert_eq!(&bytes[..6], &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(&bytes[6..], &[0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        let mut r = FrameReader::new(Sender::Client, Limit::Refuse(1 << 20));
        let ev = r.feed(&bytes).unwrap();
        assert_eq!(
            ev,
            vec![Event::Message {
                text: true,
                payload: Some(b"Hello".to_vec()),
                end: bytes.len()
            }]
        );
        assert!(r.at_boundary());
    }

    #[test]
    fn fragments_are_reassembled_with_a_ping_between_them() {
        let mut s = frame(false, OP_TEXT, b"{\"type\":", Some(KEY));
        let first = s.len();
        s.extend(frame(true, OP_PING, b"hi", Some(KEY)));
        let ping_end = s.len();
        s.extend(frame(
            false,
            OP_CONTINUATION,
            b"\"response",
            Some([1, 2, 3, 4]),
        ));
        s.extend(frame(
            true,
            OP_CONTINUATION,
            b".create\"}",
            Some([9, 9, 9, 9]),
        ));
        let mut r = FrameReader::new(Sender::Client, Limit::Refuse(1 << 20));
        let ev = r.feed(&s).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            Event::Control {
                kind: Control::Ping,
                payload: b"hi".to_vec(),
                inside_message: true,
                end: ping_end
            }
        );
        assert!(!ev[0].at_boundary());
        assert_eq!(
            messages(&ev),
            vec![b"{\"type\":\"response.create\"}".to_vec()]
        );
        assert_eq!(ev[1].end(), s.len());
        assert!(first < ping_end);
    }

    #[test]
    fn a_stream_split_at_every_byte_reads_the_same() {
        let mut s = Vec::new();
        let big = vec![b'x'; 70_000]; // a 64-bit length
        let mid = vec![b'y'; 300]; // a 16-bit length
        s.extend(frame(true, OP_TEXT, &big, None));
        s.extend(frame(true, OP_PONG, b"", None));
        s.extend(frame(true, OP_TEXT, &mid, None));
        s.extend(frame(true, OP_CLOSE, &close_payload(1000, "bye"), None));
        let mut whole = FrameReader::new(Sender::Server, Limit::Skip(1 << 20));
        let all = whole.feed(&s).unwrap();
        let mut split = FrameReader::new(Sender::Server, Limit::Skip(1 << 20));
        let mut got = Vec::new();
        for (at, b) in s.iter().enumerate() {
            for e in split.feed(std::slice::from_ref(b)).unwrap() {
                // Offsets are within the chunk fed: one byte, so always 1.
                assert_eq!(e.end(), 1);
                got.push((at, e));
            }
        }
        assert_eq!(all.len(), 4);
        assert_eq!(got.len(), 4);
        for ((at, e), w) in got.iter().zip(&all) {
            assert_eq!(at + 1, w.end(), "event ends at the same stream offset");
            assert_eq!(std::mem::discriminant(e), std::mem::discriminant(w));
        }
        assert_eq!(messages(&all), vec![big.clone(), mid.clone()]);
        assert_eq!(
            messages(&got.into_iter().map(|(_, e)| e).collect::<Vec<_>>()),
            vec![big, mid]
        );
    }

    #[test]
    fn an_oversized_length_is_a_clean_error_before_any_payload() {
        // 64-bit length with the top bit set.
        let mut f = vec![0x81, 0xFF];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        f.extend_from_slice(&KEY);
        let mut r = FrameReader::new(Sender::Client, Limit::Refuse(1 << 20));
        assert_eq!(r.feed(&f), Err(FrameError::Length(u64::MAX)));
        // and the stream stays failed
        assert!(matches!(r.feed(b"x"), Err(FrameError::Failed(_))));
        // A legal but huge length beyond a refusing limit: refused from the header alone.
        let mut f = vec![0x81, 0xFF];
        f.extend_from_slice(&(1u64 << 40).to_be_bytes());
        f.extend_from_slice(&KEY);
        let mut r = FrameReader::new(Sender::Client, Limit::Refuse(1 << 20));
        assert_eq!(r.feed(&f), Err(FrameError::TooLarge(1 << 20)));
        // Fragments that add up beyond it, too.
        let mut r = FrameReader::new(Sender::Client, Limit::Refuse(10));
        let mut s = frame(false, OP_TEXT, b"123456", Some(KEY));
        s.extend(frame(true, OP_CONTINUATION, b"789012", Some(KEY)));
        assert_eq!(r.feed(&s), Err(FrameError::TooLarge(10)));
        // A skipping reader lets it pass unread.
        let mut r = FrameReader::new(Sender::Server, Limit::Skip(4));
        let ev = r.feed(&frame(true, OP_TEXT, b"123456", None)).unwrap();
        assert!(matches!(&ev[..], [Event::Message { payload: None, .. }]));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let cases: Vec<(Sender, Vec<u8>, FrameError)> = vec![
            (
                Sender::Client,
                frame(true, OP_TEXT, b"a", None),
                FrameError::Masking(Sender::Client, "not "),
            ),
            (
                Sender::Server,
                frame(true, OP_TEXT, b"a", Some(KEY)),
                FrameError::Masking(Sender::Server, ""),
            ),
            (
                Sender::Server,
                vec![0xC1, 0x01, b'a'],
                FrameError::Reserved(0x40),
            ),
            (
                Sender::Server,
                frame(true, 0x3, b"a", None),
                FrameError::Opcode(0x3),
            ),
            (
                Sender::Server,
                frame(false, OP_PING, b"a", None),
                FrameError::BadControl(1),
            ),
            (
                Sender::Server,
                frame(true, OP_PING, &[0; 126], None),
                FrameError::BadControl(126),
            ),
            (
                Sender::Server,
                frame(true, OP_CONTINUATION, b"a", None),
                FrameError::Continuation,
            ),
            (
                Sender::Server,
                [
                    frame(false, OP_TEXT, b"a", None),
                    frame(true, OP_TEXT, b"b", None),
                ]
                .concat(),
                FrameError::Interleaved,
            ),
        ];
        for (sender, bytes, want) in cases {
            let mut r = FrameReader::new(sender, Limit::Skip(1 << 20));
            assert_eq!(r.feed(&bytes), Err(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn empty_frames_end_at_their_header() {
        let mut r = FrameReader::new(Sender::Server, Limit::Skip(16));
        let mut s = frame(false, OP_TEXT, b"", None);
        s.extend(frame(true, OP_CONTINUATION, b"", None));
        let ev = r.feed(&s).unwrap();
        assert_eq!(
            ev,
            vec![Event::Message {
                text: true,
                payload: Some(Vec::new()),
                end: 4
            }]
        );
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame() {
        let p = close_payload(1008, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(&p[..2], &1008u16.to_be_bytes());
    }
}
