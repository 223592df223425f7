//! Reading a legacy SSE stream as it passes: the first `endpoint` event (captured, and
//! rewritten when the route is mounted under a prefix), and where events end (keep-alive
//! comments go only between events).

/// Bytes held while looking for the `endpoint` event before giving up (the SDKs send it
/// first, a few dozen bytes long).
const FIND_LIMIT: usize = 16 * 1024;

/// The comment written on an idle stream. Clients ignore comment lines.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Tracks whether the bytes sent so far end between two events.
#[derive(Debug)]
pub struct Boundary {
    between_events: bool,
    /// Bytes in the current line so far.
    line_len: usize,
    /// The previous byte was `\r` (a following `\n` belongs to it).
    prev_cr: bool,
}

impl Default for Boundary {
    fn default() -> Self {
        Boundary {
            between_events: true,
            line_len: 0,
            prev_cr: false,
        }
    }
}

impl Boundary {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' if self.prev_cr => {}
                b'\n' | b'\r' => {
                    // an empty line ends the event; a non-empty one is inside it
                    self.between_events = self.line_len == 0;
                    self.line_len = 0;
                }
                _ => {
                    self.line_len += 1;
                    self.between_events = false;
                }
            }
            self.prev_cr = b == b'\r';
        }
    }

    /// Nothing of an unfinished event has been sent: a comment may go here.
    pub fn between_events(&self) -> bool {
        self.between_events
    }
}

/// One line: where its content is, and where the next line starts.
fn next_line(buf: &[u8], from: usize) -> Option<(usize, usize, usize)> {
    let rel = buf[from..].iter().position(|&b| b == b'\n' || b == b'\r')?;
    let end = from + rel;
    let next = if buf[end] == b'\r' && buf.get(end + 1) == Some(&b'\n') {
        end + 2
    } else {
        end + 1
    };
    Some((from, end, next))
}

/// A complete event at the start of `buf`.
struct Event {
    /// Length of the event in `buf`, blank line included.
    len: usize,
    name: Option<(usize, usize)>,
    /// Span of the value of each `data` line.
    data: Vec<(usize, usize)>,
}

fn parse_event(buf: &[u8]) -> Option<Event> {
    let mut ev = Event {
        len: 0,
        name: None,
        data: Vec::new(),
    };
    let mut pos = 0;
    loop {
        let (start, end, next) = next_line(buf, pos)?;
        pos = next;
        if start == end {
            ev.len = next;
            return Some(ev);
        }
        let line = &buf[start..end];
        if line[0] == b':' {
            continue;
        }
        let (field, mut value_start) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], start + i + 1),
            None => (line, end),
        };
        if buf.get(value_start) == Some(&b' ') && value_start < end {
            value_start += 1;
        }
        match field {
            b"event" => ev.name = Some((value_start, end)),
            b"data" => ev.data.push((value_start, end)),
            _ => {}
        }
    }
}

/// What [`EndpointFinder::push`] produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes to send downstream now.
    pub out: Vec<u8>,
    /// The `endpoint` event's data as sent to the client, when it was in this push.
    pub endpoint: Option<String>,
}

/// Holds a stream's first bytes until its first event is complete, so an `endpoint` event can
/// be read and rewritten whole. Comments before it pass as soon as they are complete.
#[derive(Debug, Default)]
pub struct EndpointFinder {
    held: Vec<u8>,
    done: bool,
}

impl EndpointFinder {
    /// Found, or given up on: the rest of the stream passes untouched.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes the next bytes of the stream. `rewrite` maps the endpoint the MCP server sent to
    /// the one the client must use (`None`: keep it).
    pub fn push(&mut self, chunk: &[u8], rewrite: &dyn Fn(&str) -> Option<String>) -> Pushed {
        if self.done {
            return Pushed {
                out: chunk.to_vec(),
                endpoint: None,
            };
        }
        self.held.extend_from_slice(chunk);
        let mut pushed = Pushed::default();
        let mut start = 0;
        while let Some(ev) = parse_event(&self.held[start..]) {
            let event = &self.held[start..start + ev.len];
            let is_endpoint = ev.name.is_some_and(|(a, b)| &event[a..b] == b"endpoint");
            if is_endpoint && ev.data.len() == 1 {
                let (a, b) = ev.data[0];
                let original = String::from_utf8_lossy(&event[a..b]).into_owned();
                match rewrite(&original) {
                    Some(new) => {
                        pushed.out.extend_from_slice(&event[..a]);
                        pushed.out.extend_from_slice(new.as_bytes());
                        pushed.out.extend_from_slice(&event[b..]);
                        pushed.endpoint = Some(new);
                    }
                    None => {
                        pushed.out.extend_from_slice(event);
                        pushed.endpoint = Some(original);
                    }
                }
                start += ev.len;
                self.done = true;
                break;
            }
            pushed.out.extend_from_slice(event);
            start += ev.len;
            if ev.name.is_some() || !ev.data.is_empty() {
                // the SDKs send `endpoint` first; a stream that starts otherwise is not a
                // legacy MCP stream, and passes untouched from here on
                self.done = true;
                break;
            }
        }
        if self.done || self.held.len() - start > FIND_LIMIT {
            self.done = true;
            pushed.out.extend_from_slice(&self.held[start..]);
            self.held = Vec::new();
        } else {
            self.held.drain(..start);
        }
        pushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(_: &str) -> Option<String> {
        None
    }

    fn prefix(e: &str) -> Option<String> {
        Some(format!("/py{e}"))
    }

    #[test]
    fn python_endpoint_event_in_one_piece() {
        let mut f = EndpointFinder::default();
        let p = f.push(
            b"event: endpoint\r\ndata: /messages/?session_id=ab12\r\n\r\n: ping\r\n\r\n",
            &keep,
        );
        assert_eq!(p.endpoint.as_deref(), Some("/messages/?session_id=ab12"));
        assert_eq!(
            p.out,
            b"event: endpoint\r\ndata: /messages/?session_id=ab12\r\n\r\n: ping\r\n\r\n"
        );
        assert!(f.is_done());
        assert_eq!(f.push(b"event: message\n", &keep).out, b"event: message\n");
    }

    #[test]
    fn endpoint_split_byte_by_byte_and_rewritten() {
        let stream =
            b"event: endpoint\ndata: /message?sessionId=u-1\n\nevent: message\ndata: {}\n\n";
        let mut f = EndpointFinder::default();
        let mut out = Vec::new();
        let mut found = None;
        for b in stream.iter() {
            let p = f.push(std::slice::from_ref(b), &prefix);
            out.extend(p.out);
            found = found.or(p.endpoint);
        }
        assert_eq!(found.as_deref(), Some("/py/message?sessionId=u-1"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: endpoint\ndata: /py/message?sessionId=u-1\n\nevent: message\ndata: {}\n\n"
        );
    }

    #[test]
    fn events_before_the_endpoint_pass_as_they_complete() {
        let mut f = EndpointFinder::default();
        let p = f.push(b": hello\n\nevent: endp", &keep);
        assert_eq!(p.out, b": hello\n\n");
        assert_eq!(p.endpoint, None);
        let p = f.push(b"oint\ndata:/x?session_id=1\n\n", &keep);
        assert_eq!(p.endpoint.as_deref(), Some("/x?session_id=1"));
        assert_eq!(p.out, b"event: endpoint\ndata:/x?session_id=1\n\n");
    }

    #[test]
    fn a_stream_that_starts_with_another_event_is_left_alone() {
        let mut f = EndpointFinder::default();
        let p = f.push(b"event: message\ndata: 1\n\ndata: 2", &keep);
        assert_eq!(p.out, b"event: message\ndata: 1\n\ndata: 2");
        assert_eq!(p.endpoint, None);
        assert!(f.is_done());
    }

    #[test]
    fn a_stream_without_endpoint_is_released() {
        let mut f = EndpointFinder::default();
        let big = vec![b'x'; FIND_LIMIT + 1];
        let p = f.push(&big, &keep);
        assert_eq!(p.out.len(), big.len());
        assert!(f.is_done());
    }

    #[test]
    fn boundaries() {
        let mut b = Boundary::default();
        assert!(b.between_events());
        b.feed(b"event: message\r\n");
        assert!(!b.between_events());
        b.feed(b"data: {}\r\n\r");
        assert!(b.between_events());
        b.feed(b"\n");
        assert!(b.between_events());
        b.feed(b"data: par");
        assert!(!b.between_events());
        b.feed(b"tial\n");
        assert!(!b.between_events());
        b.feed(b"\n");
        assert!(b.between_events());
        b.feed(b": ping\n\n");
        assert!(b.between_events());
        b.feed(b"data: x\r\rdata: y\n");
        assert!(!b.between_events());
    }
}
