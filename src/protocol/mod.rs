//! What the sidecar knows about MCP on the wire: JSON-RPC envelopes and error bodies, and the
//! HTTP headers the transports use, and HTTP/1.1 chunked decoding. Nothing here knows about Redis or Pingora.

pub mod chunked;
pub mod headers;
pub mod jsonrpc;
pub mod messages;
pub mod modern;
pub mod request_state;
pub mod strict;
pub mod target;
pub mod unknown_session;

/// Client text made safe for a log line or an error message: control characters, quotes and
/// non-ASCII escaped, and cut after `max` characters, so a crafted value cannot forge a line or
/// flood one.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        match c {
            ' '..='~' if c != '"' && c != '\\' => out.push(c),
            _ => out.extend(c.escape_default()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn shown_text_cannot_break_a_line() {
        assert_eq!(super::shown("a b", 10), "a b");
        assert_eq!(super::shown("a\nb=\"c\"", 10), "a\\nb=\\\"c\\\"");
        assert_eq!(super::shown("\u{1b}[31m", 10), "\\u{1b}[31m");
        assert_eq!(super::shown(&"x".repeat(20), 5), "xxxxx...");
    }
}
