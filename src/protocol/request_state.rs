//! The `requestState` of an MRTR round the sidecar runs for a legacy server: an opaque string
//! to the client, sealed by the sidecar (HMAC-SHA256 with a key every pod shares), naming the
//! pod that holds the pending upstream call, the call's handle, the principal it belongs to,
//! a digest of the original request, and an expiry. The client echoes it on a retry that may
//! land on any pod; every pod can verify it, and only the named pod can resume the call.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The version tag every sealed state starts with.
const PREFIX: &str = "mcps1.";
/// Longest state accepted from a client.
pub const MAX_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The peer address of the pod holding the pending call.
    pub pod: String,
    /// The pending call on that pod.
    pub handle: String,
    /// Who may resume it (see `principal`).
    pub principal: String,
    /// Hex SHA-256 of the original request (`modern::Request::digest`).
    pub digest: String,
    /// Unix seconds after which the state is refused.
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Not one of ours, altered, or sealed with another key.
    Invalid,
    Expired,
}

impl StateError {
    pub fn message(self) -> &'static str {
        match self {
            StateError::Invalid => "Invalid or expired requestState",
            StateError::Expired => "Invalid or expired requestState (expired)",
        }
    }
}

fn mac(key: &[u8], payload: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"mcp-sidecar requestState v1\0");
    m.update(payload.as_bytes());
    m
}

/// Seals `state` into the string a client echoes.
pub fn seal(key: &[u8], state: &State) -> String {
    let payload = B64.encode(serde_json::to_vec(state).expect("state serializes"));
    let tag = B64.encode(mac(key, &payload).finalize().into_bytes());
    format!("{PREFIX}{payload}.{tag}")
}

/// Opens a state a client echoed: its seal verified, then its expiry.
pub fn open(key: &[u8], sealed: &str, now: u64) -> Result<State, StateError> {
    if sealed.len() > MAX_LEN {
        return Err(StateError::Invalid);
    }
    let rest = sealed.strip_prefix(PREFIX).ok_or(StateError::Invalid)?;
    let (payload, tag) = rest.split_once('.').ok_or(StateError::Invalid)?;
    let tag = B64.decode(tag).map_err(|_| StateError::Invalid)?;
    mac(key, payload)
        .verify_slice(&tag)
        .map_err(|_| StateError::Invalid)?;
    let bytes = B64.decode(payload).map_err(|_| StateError::Invalid)?;
    let state: State = serde_json::from_slice(&bytes).map_err(|_| StateError::Invalid)?;
    if now > state.expires {
        return Err(StateError::Expired);
    }
    Ok(state)
}

/// The principal a state is bound to: the hub user when there is one, and the context of
/// the legacy session (which covers the injected token values) either way.
pub fn principal(user: Option<&str>, context: &str) -> String {
    format!("{}|{context}", user.unwrap_or("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            pod: "10.0.0.1:9090".into(),
            handle: "h1".into(),
            principal: principal(Some("alice"), "shared"),
            digest: "ab".repeat(32),
            expires: 1000,
        }
    }

    #[test]
    fn a_sealed_state_opens_with_the_same_key_only() {
        let sealed = seal(b"k1", &state());
        assert_eq!(open(b"k1", &sealed, 999), Ok(state()));
        assert_eq!(open(b"k2", &sealed, 999), Err(StateError::Invalid));
        assert_eq!(open(b"k1", &sealed, 1001), Err(StateError::Expired));
    }

    #[test]
    fn any_change_breaks_the_seal() {
        let sealed = seal(b"k1", &state());
        let mut other = state();
        other.pod = "10.0.0.2:9090".into();
        let forged_payload = seal(b"k1", &other);
        // the payload of one state with the tag of another
        let (_, tag) = sealed.rsplit_once('.').unwrap();
        let (payload, _) = forged_payload.rsplit_once('.').unwrap();
        assert_eq!(
            open(b"k1", &format!("{payload}.{tag}"), 0),
            Err(StateError::Invalid)
        );
        for bad in ["", "mcps1.", "mcps1.x.y", "garbage", &"a".repeat(5000)] {
            assert_eq!(open(b"k1", bad, 0), Err(StateError::Invalid));
        }
    }
}
