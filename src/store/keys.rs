//! The Redis key schema, in one place. Every key lives under `mcp:`, is readable with
//! `redis-cli`, and has a TTL. The README's "Redis key schema" section mirrors this file.

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
    pub const USER: &str = "user";
    pub const PROTOCOL_VERSION: &str = "protocol_version";
    pub const INIT_PARAMS: &str = "init_params";
    pub const CREATED_AT: &str = "created_at";
    pub const LAST_SEEN: &str = "last_seen";
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_live_under_the_prefix() {
        assert_eq!(super::session("abc"), "mcp:session:abc");
    }
}
