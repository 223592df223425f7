//! Editing JSON-RPC messages in a response body on the fly, in either framing a Streamable
//! HTTP server answers with: one JSON body (held whole, edited at its end) or an SSE stream
//! (each event held until complete, edited, and sent on at once). Used by tool filtering and
//! by the shared-session multiplexer, which restores request ids.

use bytes::Bytes;
use serde_json::Value;

/// A JSON answer larger than this is not held for editing; the client gets an error instead
/// of an unedited answer.
pub const MAX_EDITED_JSON: usize = 8 * 1024 * 1024;

/// Changes one JSON-RPC message (or batch) in place; returns whether anything changed.
pub type Edit<'a> = dyn FnMut(&mut Value) -> bool + 'a;

/// The state of editing one response body.
#[derive(Debug)]
pub enum MessageStream {
    /// `application/json`: the whole body is held, edited at its end.
    Json(Vec<u8>),
    /// `text/event-stream`: each event is held until complete, then sent on (edited).
    Sse(Vec<u8>),
}

impl MessageStream {
    /// For a response's content type; `None` when it is neither JSON nor SSE.
    pub fn for_content_type(content_type: &str) -> Option<MessageStream> {
        let ct = content_type.split(';').next().unwrap_or("").trim();
        if ct.eq_ignore_ascii_case("application/json") {
            Some(MessageStream::Json(Vec::new()))
        } else if ct.eq_ignore_ascii_case("text/event-stream") {
            Some(MessageStream::Sse(Vec::new()))
        } else {
            None
        }
    }

    /// Takes the next body chunk and returns what may go downstream now. An SSE event whose
    /// text does not contain `hint` (when given) passes without being parsed.
    pub fn feed(
        &mut self,
        chunk: Option<&[u8]>,
        end: bool,
        hint: Option<&[u8]>,
        edit: &mut Edit,
        error_body: &dyn Fn() -> Vec<u8>,
    ) -> Bytes {
        match self {
            MessageStream::Json(buf) => {
                if buf.len() <= MAX_EDITED_JSON {
                    buf.extend_from_slice(chunk.unwrap_or_default());
                }
                if !end {
                    return Bytes::new();
                }
                let body = std::mem::take(buf);
                if body.len() > MAX_EDITED_JSON {
                    return Bytes::from(error_body());
                }
                Bytes::from(edit_json(&body, edit).unwrap_or(body))
            }
            MessageStream::Sse(buf) => {
                buf.extend_from_slice(chunk.unwrap_or_default());
                let mut out = Vec::new();
                while let Some(n) = event_end(buf) {
                    let event: Vec<u8> = buf.drain(..n).collect();
                    let wanted = hint.is_none_or(|h| event.windows(h.len()).any(|w| w == h));
                    match wanted.then(|| edit_event(&event, edit)).flatten() {
                        Some(e) => out.extend_from_slice(&e),
                        None => out.extend_from_slice(&event),
                    }
                }
                if end {
                    // an unterminated last event goes as it is
                    out.append(buf);
                }
                Bytes::from(out)
            }
        }
    }
}

/// Edits one complete JSON body; `None` when it is unparseable or nothing changed.
pub fn edit_json(body: &[u8], edit: &mut Edit) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    edit(&mut v).then(|| serde_json::to_vec(&v).expect("a Value serialises"))
}

/// The end of the first complete SSE event in `buf` (past its blank line).
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// The JSON of an SSE event's `data:` lines, and its other lines.
pub fn event_data(event: &str) -> (String, Vec<&str>) {
    let mut data = String::new();
    let mut others = Vec::new();
    for line in event.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if !line.is_empty() {
            others.push(line);
        }
    }
    (data, others)
}

/// One SSE event with its message edited; `None` when it needs no change.
fn edit_event(event: &[u8], edit: &mut Edit) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(event).ok()?;
    let (data, others) = event_data(text);
    let mut v: Value = serde_json::from_str(&data).ok()?;
    if !edit(&mut v) {
        return None;
    }
    let mut out = Vec::with_capacity(event.len());
    for line in others {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(&v).expect("a Value serialises"));
    out.extend_from_slice(b"\n\n");
    Some(out)
}
