//! What the sidecar knows about MCP on the wire: JSON-RPC envelopes and error bodies, and the
//! HTTP headers the transports use, and HTTP/1.1 chunked decoding. Nothing here knows about Redis or Pingora.

pub mod chunked;
pub mod headers;
pub mod jsonrpc;
pub mod messages;
pub mod unknown_session;
