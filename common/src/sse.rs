//! Server-sent events: an incremental parser for the client side (router relaying a backend,
//! load_test, tests) and the one-line encoder used where a stream is written by hand.
//!
//! The parser follows the WHATWG rules that matter here: events end at a blank line, `data:` lines
//! are joined with `\n`, one optional space after the colon is dropped, lines starting with `:` are
//! comments, and `\n`, `\r\n` and `\r` all end a line. Bytes may arrive split anywhere, even inside a
//! UTF-8 sequence.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `message` when the event had none.
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Feed it bytes as they arrive; it returns the events completed so far.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    /// The last byte seen was a `\r`, so a following `\n` belongs to the same line end.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk` and returns every event it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    if let Some(ev) = self.line(&line) {
                        out.push(ev);
                    }
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    /// Bytes held that do not yet form a whole line (to bound memory against a hostile peer).
    pub fn pending_len(&self) -> usize {
        self.buf.len() + self.data.as_ref().map_or(0, String::len)
    }

    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| SseEvent {
                event: event.unwrap_or_else(|| "message".to_string()),
                data,
                id: self.id.clone(),
            });
        }
        if line[0] == b':' {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// Encodes one event as SSE text. Multi-line data becomes several `data:` lines.
pub fn encode(event: &str, data: &str) -> String {
    let mut s = String::with_capacity(data.len() + event.len() + 16);
    s.push_str("event: ");
    s.push_str(event);
    s.push('\n');
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_at_every_byte() {
        let text = encode("token", r#"{"text":"hé"}"#) + &encode("done", "{}\n{}") + ": comment\n\n";
        let mut p = SseParser::new();
        let mut evs = Vec::new();
        for b in text.as_bytes() {
            evs.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "token");
        assert_eq!(evs[0].data, r#"{"text":"hé"}"#);
        assert_eq!(evs[1].event, "done");
        assert_eq!(evs[1].data, "{}\n{}");
    }

    #[test]
    fn crlf_and_default_event_name() {
        let mut p = SseParser::new();
        let evs = p.push(b"data:a\r\ndata: b\r\n\r\nevent:x\rdata:c\r\r");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0], SseEvent { event: "message".into(), data: "a\nb".into(), id: None });
        assert_eq!(evs[1].event, "x");
        assert_eq!(evs[1].data, "c");
    }

    #[test]
    fn event_without_data_is_dropped() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\n").is_empty());
    }
}
