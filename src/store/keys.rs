//! The Redis key schema, in one place. Every key lives under `mcp:`, is readable with
//! `redis-cli`, and has a TTL. The README's "Redis key schema" section mirrors this file.
//!
//! No store operation touches two keys, so on a Redis Cluster every operation lives in one hash
//! slot without hash tags. An operation that has to touch two keys (a script, a `MULTI`) must
//! give them one slot with a hash tag, e.g. `mcp:{session:ID}` and `mcp:{session:ID}:lock`: a
//! schema change that needs every pod switched at once.

/// The one prefix every key of the sidecar lives under.
pub const PREFIX: &str = "mcp:";

/// `mcp:session:{session_id}`: a hash describing one client session (fields below).
pub fn session(session_id: &str) -> String {
    format!("{PREFIX}session:{session_id}")
}

/// Field names of the session hash.
pub mod session_field {
    pub const UPSTREAM_SESSION_ID: &str = "upstream_session_id";
    pub const OWNER: &str = "owner";
    pub const SERVER: &str = "server";
    /// `streamable_http` or `sse` (absent in records of older sidecars: Streamable HTTP).
    pub const TRANSPORT: &str = "transport";
    pub const USER: &str = "user";
    pub const PROTOCOL_VERSION: &str = "protocol_version";
    pub const INIT_PARAMS: &str = "init_params";
    /// Client sessions of shared routes: the context key of their upstream session.
    pub const CONTEXT: &str = "context";
    /// Shared upstream sessions: the InitializeResult later clients are answered with.
    pub const INIT_RESULT: &str = "init_result";
    pub const CREATED_AT: &str = "created_at";
    pub const LAST_SEEN: &str = "last_seen";
    /// The ownership epoch (absent in records of older sidecars: 0).
    pub const EPOCH: &str = "epoch";
}

/// `mcp:pod:{address}`: a string (JSON about the pod) with a short TTL, refreshed by the pod's
/// heartbeat. A pod whose key is gone is treated as dead.
pub fn pod(address: &str) -> String {
    format!("{PREFIX}pod:{address}")
}

/// `mcp:lock:{name}`: a string holding the holder's token, with a TTL so a crashed holder
/// cannot block others for long.
pub fn lock(name: &str) -> String {
    format!("{PREFIX}lock:{name}")
}

/// `mcp:hub:key:{sha256 of the key}`: a hash describing one MCPHub key's user (fields in
/// `crate::hub::user::field`). Written by `mcp-sidecar keys`; the key itself is never stored.
/// Its TTL follows the key's expiry; a key created with `--expires never` has none.
pub fn hub_key(digest: &str) -> String {
    format!("{PREFIX}hub:key:{digest}")
}

/// `mcp:upstream:session:{server_name}:{context_key}`: a string holding the upstream
/// `Mcp-Session-Id` that every client of the context shares (the seeds' schema), with a
/// sliding TTL. Server names never contain `:`; context keys may.
pub fn upstream_session(server: &str, context: &str) -> String {
    format!("{PREFIX}upstream:session:{server}:{context}")
}

pub const UPSTREAM_SESSION_PATTERN: &str = "mcp:upstream:session:*";

/// `(server_name, context_key)` of an upstream session key.
pub fn parse_upstream_session(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(&UPSTREAM_SESSION_PATTERN[..UPSTREAM_SESSION_PATTERN.len() - 1])?
        .split_once(':')
}

pub const HUB_KEY_PATTERN: &str = "mcp:hub:key:*";

/// Scan patterns for the admin API.
pub const SESSION_PATTERN: &str = "mcp:session:*";
pub const POD_PATTERN: &str = "mcp:pod:*";

#[cfg(test)]
mod tests {
    #[test]
    fn keys_live_under_the_prefix() {
        assert_eq!(super::session("abc"), "mcp:session:abc");
        assert_eq!(super::pod("10.0.0.7:8081"), "mcp:pod:10.0.0.7:8081");
        assert_eq!(super::lock("recover:abc"), "mcp:lock:recover:abc");
        assert!(super::session("x")
            .starts_with(&super::SESSION_PATTERN[..super::SESSION_PATTERN.len() - 1]));
        let k = super::upstream_session("demo", "tok:A,B:abc");
        assert_eq!(k, "mcp:upstream:session:demo:tok:A,B:abc");
        assert_eq!(
            super::parse_upstream_session(&k),
            Some(("demo", "tok:A,B:abc"))
        );
        assert_eq!(super::parse_upstream_session("mcp:session:x"), None);
        assert!(super::pod("x").starts_with(&super::POD_PATTERN[..super::POD_PATTERN.len() - 1]));
    }
}
