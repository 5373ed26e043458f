//! Incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules).
//!
//! Bytes may be split anywhere, lines end in CRLF, LF or CR (a CR at the end of one chunk and the LF
//! starting the next are one line end), `data:` lines of one event are joined with `\n`, lines
//! starting with `:` are comments, one space after the colon is dropped, a leading UTF-8 BOM is
//! ignored, and an event is dispatched on a blank line only: an event cut off by the end of the
//! stream is never dispatched (a truncated stream yields no half event).
//!
//! With [`SseParser::with_raw`] it also hands back the exact bytes of every block (everything from
//! the end of the previous blank line to the end of this one), so a caller can forward all blocks
//! unchanged except the ones it filters out.

/// Default bound on one event's bytes. An event beyond it is not parsed (its bytes are still
/// handed on raw); no provider sends usage in events anywhere near this size.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (the spec's default type is "message").
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: Vec<u8>,
}

impl SseEvent {
    /// The event type, "message" when the stream named none.
    pub fn kind(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

/// One block of the stream, ended by a blank line (or bytes handed on early, see `event`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseBlock {
    /// The event, or `None` for a block without data (comments only, an empty line, an event too
    /// large to parse, or raw bytes handed on early because the event grew beyond the bound).
    pub event: Option<SseEvent>,
    /// The exact bytes of the block; empty unless the parser keeps raw bytes.
    pub raw: Vec<u8>,
}

/// The parser state between chunks.
#[derive(Debug)]
pub struct SseParser {
    keep_raw: bool,
    max_event_bytes: usize,
    line: Vec<u8>,
    line_too_long: bool,
    pending_cr: bool,
    at_stream_start: bool,
    event_type: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    event_too_large: bool,
    raw: Vec<u8>,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser that yields events only.
    pub fn new() -> SseParser {
        SseParser {
            keep_raw: false,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            line: Vec::new(),
            line_too_long: false,
            pending_cr: false,
            at_stream_start: true,
            event_type: None,
            data: Vec::new(),
            has_data: false,
            event_too_large: false,
            raw: Vec::new(),
        }
    }

    /// A parser that also yields each block's exact bytes.
    pub fn with_raw() -> SseParser {
        SseParser {
            keep_raw: true,
            ..SseParser::new()
        }
    }

    /// Sets the bound on one event's bytes.
    pub fn max_event_bytes(mut self, max: usize) -> SseParser {
        self.max_event_bytes = max;
        self
    }

    /// Feeds the next bytes; completed blocks are appended to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseBlock>) {
        while !chunk.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if let Some((b'\n', rest)) = chunk.split_first() {
                    self.push_raw(b"\n", out);
                    chunk = rest;
                    continue;
                }
            }
            match memchr::memchr2(b'\r', b'\n', chunk) {
                None => {
                    self.push_raw(chunk, out);
                    self.append_line(chunk);
                    return;
                }
                Some(i) => {
                    let (line_part, rest) = chunk.split_at(i);
                    let Some((&terminator, rest)) = rest.split_first() else {
                        return;
                    };
                    self.append_line(line_part);
                    let with_terminator = chunk.get(..=i).unwrap_or(chunk);
                    self.push_raw(with_terminator, out);
                    self.pending_cr = terminator == b'\r';
                    self.end_line(out);
                    chunk = rest;
                }
            }
        }
    }

    /// Ends the stream: the bytes of an incomplete trailing block (empty unless keeping raw
    /// bytes). Its event is dropped, as the spec says.
    pub fn finish(&mut self) -> Vec<u8> {
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        self.event_type = None;
        std::mem::take(&mut self.raw)
    }

    fn push_raw(&mut self, bytes: &[u8], out: &mut Vec<SseBlock>) {
        if !self.keep_raw {
            return;
        }
        self.raw.extend_from_slice(bytes);
        if self.raw.len() > self.max_event_bytes {
            // Too large to hold back: hand the bytes on now and give up parsing this event.
            self.event_too_large = true;
            out.push(SseBlock {
                event: None,
                raw: std::mem::take(&mut self.raw),
            });
        }
    }

    fn append_line(&mut self, part: &[u8]) {
        if self.line_too_long {
            return;
        }
        if self.line.len().saturating_add(part.len()) > self.max_event_bytes {
            self.line_too_long = true;
            self.event_too_large = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self, out: &mut Vec<SseBlock>) {
        let mut line = std::mem::take(&mut self.line);
        let too_long = std::mem::replace(&mut self.line_too_long, false);
        if self.at_stream_start {
            self.at_stream_start = false;
            if let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF".as_slice()) {
                line = rest.to_vec();
            }
        }
        if too_long {
            // Not empty, but not parsed either.
        } else if line.is_empty() {
            self.dispatch(out);
        } else if line.first() == Some(&b':') {
            // Comment.
        } else {
            self.field(&line);
        }
        line.clear();
        self.line = line;
    }

    fn field(&mut self, line: &[u8]) {
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let (n, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or_default();
                (n, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len().saturating_add(value.len()) > self.max_event_bytes {
                    self.event_too_large = true;
                    self.data.clear();
                }
                if !self.event_too_large {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                }
                self.has_data = true;
            }
            b"event" => self.event_type = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry and unknown fields do not matter here.
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseBlock>) {
        let mut data = std::mem::take(&mut self.data);
        let event = if self.has_data && !self.event_too_large {
            if data.last() == Some(&b'\n') {
                data.pop();
            }
            Some(SseEvent {
                event: self.event_type.take(),
                data,
            })
        } else {
            None
        };
        self.event_type = None;
        self.has_data = false;
        self.event_too_large = false;
        out.push(SseBlock {
            event,
            raw: std::mem::take(&mut self.raw),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, input: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        parser.feed(input, &mut out);
        out.into_iter().filter_map(|b| b.event).collect()
    }

    fn ev(kind: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: kind.map(str::to_string),
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn parses_fields_comments_and_multiline_data() {
        let input = b": keep-alive\nevent: message_start\ndata: {\"a\":1}\n\ndata:x\ndata: y\nid: 7\nretry: 5\n\n";
        let got = events(&mut SseParser::new(), input);
        assert_eq!(
            got,
            vec![ev(Some("message_start"), "{\"a\":1}"), ev(None, "x\ny")]
        );
        assert_eq!(got[1].kind(), "message");
    }

    #[test]
    fn all_line_endings_work_and_split_crlf_is_one_line_end() {
        for input in [
            &b"data: a\r\n\r\ndata: b\r\n\r\n"[..],
            b"data: a\n\ndata: b\n\n",
            b"data: a\r\rdata: b\r\r",
        ] {
            let mut all = Vec::new();
            for split in 0..=input.len() {
                let mut p = SseParser::new();
                let (x, y) = input.split_at(split);
                let mut got = events(&mut p, x);
                got.extend(events(&mut p, y));
                all.push(got);
            }
            for got in all {
                assert_eq!(got, vec![ev(None, "a"), ev(None, "b")]);
            }
        }
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"\xEF\xBB\xBFdata: one\r\n\r\n:c\r\nevent: e\r\ndata: two\r\n\r\n";
        let whole = events(&mut SseParser::new(), input);
        let mut p = SseParser::new();
        let mut piecewise = Vec::new();
        for b in input {
            piecewise.extend(events(&mut p, std::slice::from_ref(b)));
        }
        assert_eq!(whole, piecewise);
        assert_eq!(whole, vec![ev(None, "one"), ev(Some("e"), "two")]);
    }

    #[test]
    fn truncated_event_is_not_dispatched() {
        let mut p = SseParser::with_raw();
        let mut out = Vec::new();
        p.feed(b"data: done\n\ndata: {\"usage\":", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(p.finish(), b"data: {\"usage\":".to_vec());
    }

    #[test]
    fn raw_blocks_reassemble_the_stream_exactly() {
        let input = b": hi\r\n\r\ndata: a\r\n\r\nevent: x\rdata: b\r\r\ndata: c\n\ntail";
        let mut p = SseParser::with_raw();
        let mut out = Vec::new();
        for b in input {
            p.feed(std::slice::from_ref(b), &mut out);
        }
        let mut joined: Vec<u8> = out.iter().flat_map(|b| b.raw.clone()).collect();
        joined.extend(p.finish());
        assert_eq!(joined, input.to_vec());
        let evs: Vec<_> = out.into_iter().filter_map(|b| b.event).collect();
        assert_eq!(evs, vec![ev(None, "a"), ev(Some("x"), "b"), ev(None, "c")]);
    }

    #[test]
    fn oversized_events_are_skipped_but_bytes_survive() {
        let mut p = SseParser::with_raw().max_event_bytes(16);
        let mut out = Vec::new();
        let input = b"data: 0123456789abcdefghij\n\ndata: ok\n\n";
        p.feed(input, &mut out);
        let joined: Vec<u8> = out.iter().flat_map(|b| b.raw.clone()).collect();
        assert_eq!(joined, input.to_vec());
        let evs: Vec<_> = out.into_iter().filter_map(|b| b.event).collect();
        assert_eq!(evs, vec![ev(None, "ok")]);
    }

    proptest::proptest! {
        #[test]
        fn raw_blocks_always_reassemble_any_input(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut p = SseParser::with_raw().max_event_bytes(64);
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                p.feed(&input[at..c], &mut out);
                at = c;
            }
            let mut joined: Vec<u8> = out.iter().flat_map(|b| b.raw.clone()).collect();
            joined.extend(p.finish());
            proptest::prop_assert_eq!(joined, input.clone());
            // Without a size bound in play, a raw-keeping parser fed in pieces yields the same
            // events as a parse-only parser fed in one piece.
            let mut pieces = Vec::new();
            let mut raw = SseParser::with_raw();
            for chunk in input.chunks(7) {
                raw.feed(chunk, &mut pieces);
            }
            let mut whole = Vec::new();
            SseParser::new().feed(&input, &mut whole);
            let a: Vec<_> = pieces.into_iter().filter_map(|b| b.event).collect();
            let b: Vec<_> = whole.into_iter().filter_map(|b| b.event).collect();
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn field_without_colon_and_empty_data() {
        let got = events(&mut SseParser::new(), b"data\n\ndata:\ndata:\n\n");
        assert_eq!(got, vec![ev(None, ""), ev(None, "\n")]);
    }
}
