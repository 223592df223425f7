//! Group-based tool filtering of answers: `tools/list` answers (JSON or an SSE stream) lose
//! the tools the caller may not see.

use crate::protocol::messages::{edit_json, MessageStream};
use bytes::Bytes;
use serde_json::Value;

/// Removes disallowed tools from every `result.tools` list in one JSON-RPC message or batch.
/// Returns whether anything changed.
pub fn filter_message(msg: &mut Value, allows: &dyn Fn(&str) -> bool) -> bool {
    match msg {
        Value::Array(items) => {
            let mut changed = false;
            for m in items {
                changed |= filter_message(m, allows);
            }
            changed
        }
        Value::Object(o) => {
            let Some(Value::Array(tools)) = o.get_mut("result").and_then(|r| r.get_mut("tools"))
            else {
                return false;
            };
            let before = tools.len();
            tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(allows));
            tools.len() != before
        }
        _ => false,
    }
}

/// Filters one complete JSON body; `None` when unparseable or unchanged.
pub fn filter_json(body: &[u8], allows: &dyn Fn(&str) -> bool) -> Option<Vec<u8>> {
    edit_json(body, &mut |v| filter_message(v, allows))
}

/// Filtering one `tools/list` answer, JSON or SSE.
#[derive(Debug)]
pub struct ToolsFilter(MessageStream);

impl ToolsFilter {
    /// For a response's content type; `None` when it is neither JSON nor SSE. `max_held`
    /// bounds what is held to be filtered (see `MessageStream`).
    pub fn for_content_type(content_type: &str, max_held: usize) -> Option<ToolsFilter> {
        MessageStream::for_content_type(content_type, max_held).map(ToolsFilter)
    }

    /// Takes the next body chunk and returns what may go downstream now.
    pub fn feed(
        &mut self,
        chunk: Option<&[u8]>,
        end: bool,
        allows: &dyn Fn(&str) -> bool,
        error_body: &dyn Fn() -> Vec<u8>,
    ) -> Bytes {
        self.0.feed(
            chunk,
            end,
            Some(b"\"tools\""),
            &mut |v| filter_message(v, allows),
            error_body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(name: &str) -> bool {
        name.starts_with("get_")
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_a","inputSchema":{}},{"name":"delete_b","inputSchema":{}},{"name":"get_c"}]}}"#;

    fn names(v: &Value) -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn json_bodies_in_pieces() {
        let mut f =
            ToolsFilter::for_content_type("application/json; charset=utf-8", 1 << 20).unwrap();
        let (a, b) = LIST.as_bytes().split_at(40);
        assert!(f.feed(Some(a), false, &allow, &Vec::new).is_empty());
        let out = f.feed(Some(b), true, &allow, &Vec::new);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&v), ["get_a", "get_c"]);
        assert_eq!(v["id"], 1);
        let batch = format!("[{LIST},{{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{{}}}}]");
        let out = filter_json(batch.as_bytes(), &allow).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&v[0]), ["get_a", "get_c"]);
        assert!(filter_json(b"not json", &allow).is_none());
    }

    #[test]
    fn sse_events_byte_by_byte() {
        let stream = format!(
            "event: message\r\nid: 7\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{}}}}\r\n\r\nevent: message\ndata: {LIST}\n\n: comment\n\n"
        );
        let mut f = ToolsFilter::for_content_type("text/event-stream", 1 << 20).unwrap();
        let mut out = Vec::new();
        for b in stream.as_bytes() {
            out.extend_from_slice(&f.feed(Some(&[*b]), false, &allow, &Vec::new));
        }
        out.extend_from_slice(&f.feed(None, true, &allow, &Vec::new));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("event: message\r\nid: 7\r\ndata: {\"jsonrpc\""),
            "{text}"
        );
        assert!(!text.contains("delete_b"));
        assert!(text.contains("get_c"));
        assert!(text.ends_with(": comment\n\n"));
        let data = text
            .lines()
            .find(|l| l.contains("get_a"))
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(names(&v), ["get_a", "get_c"]);
    }

    #[test]
    fn oversized_json_becomes_an_error() {
        let mut f = ToolsFilter::for_content_type("application/json", 1024).unwrap();
        let big = vec![b' '; 1025];
        f.feed(Some(&big), false, &allow, &Vec::new);
        let out = f.feed(None, true, &allow, &|| b"ERR".to_vec());
        assert_eq!(&out[..], b"ERR");
    }
}
