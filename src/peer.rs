//! The hop between sidecars. A request forwarded to the session's owner pod carries an HMAC
//! over a shared peer secret, so no client can forge one, and a hop count, so a forwarded
//! request is never forwarded again.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

pub const HOP: &str = "x-mcp-sidecar-hop";
pub const HOP_TIME: &str = "x-mcp-sidecar-hop-time";
pub const HOP_SIGNATURE: &str = "x-mcp-sidecar-hop-signature";
/// The pod the hop came from (for logs).
pub const HOP_FROM: &str = "x-mcp-sidecar-hop-from";
/// The hub caller the forwarding pod verified: its key's SHA-256 (signed with the rest, so
/// the owner pod trusts it without looking at client headers).
pub const HOP_USER: &str = "x-mcp-sidecar-hop-user";

/// How far apart the signer's and verifier's clocks (plus transit) may be.
const MAX_SKEW_SECS: u64 = 30;

/// The one hop a request may take.
pub const MAX_HOPS: u32 = 1;

/// Why a hop was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopError {
    Missing,
    TooManyHops,
    Stale,
    BadSignature,
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HopError::Missing => "peer request without hop headers",
            HopError::TooManyHops => "peer request already forwarded once",
            HopError::Stale => "peer request signed too long ago",
            HopError::BadSignature => "peer request signature does not verify",
        })
    }
}

/// What a hop signs: enough of the request that a captured signature cannot be replayed onto
/// another method, path or session.
pub struct HopClaims<'a> {
    pub hop: u32,
    pub time: u64,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub session_id: &'a str,
    pub from: &'a str,
    /// Key digest of the verified hub caller; empty when anonymous.
    pub user: &'a str,
}

impl HopClaims<'_> {
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        for part in [
            "mcp-sidecar-hop-v2",
            &self.hop.to_string(),
            &self.time.to_string(),
            self.method,
            self.path_and_query,
            self.session_id,
            self.from,
            self.user,
        ] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// Hex signature.
    pub fn sign(&self, secret: &[u8]) -> String {
        hex(&self.mac(secret).finalize().into_bytes())
    }

    /// Checks the signature (in constant time), the freshness and the hop count.
    pub fn verify(&self, secret: &[u8], signature: &str, now: u64) -> Result<(), HopError> {
        if self.hop > MAX_HOPS {
            return Err(HopError::TooManyHops);
        }
        if now.abs_diff(self.time) > MAX_SKEW_SECS {
            return Err(HopError::Stale);
        }
        let sig = unhex(signature).ok_or(HopError::BadSignature)?;
        self.mac(secret)
            .verify_slice(&sig)
            .map_err(|_| HopError::BadSignature)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Constant-time comparison for secrets (admin token).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(hop: u32, time: u64) -> HopClaims<'static> {
        HopClaims {
            hop,
            time,
            method: "POST",
            path_and_query: "/mcp",
            session_id: "abc",
            from: "10.0.0.1:8081",
            user: "",
        }
    }

    #[test]
    fn signed_hops_verify_and_tampering_does_not() {
        let sig = claims(1, 1000).sign(b"secret");
        assert_eq!(claims(1, 1000).verify(b"secret", &sig, 1010), Ok(()));
        assert_eq!(
            claims(1, 1000).verify(b"other", &sig, 1010),
            Err(HopError::BadSignature)
        );
        let mut other = claims(1, 1000);
        other.session_id = "abd";
        assert_eq!(
            other.verify(b"secret", &sig, 1010),
            Err(HopError::BadSignature)
        );
        let mut impostor = claims(1, 1000);
        impostor.user = "digest-of-another-users-key";
        assert_eq!(
            impostor.verify(b"secret", &sig, 1010),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            claims(1, 1000).verify(b"secret", "zz", 1010),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            claims(1, 1000).verify(b"secret", &sig, 2000),
            Err(HopError::Stale)
        );
        let sig2 = claims(2, 1000).sign(b"secret");
        assert_eq!(
            claims(2, 1000).verify(b"secret", &sig2, 1000),
            Err(HopError::TooManyHops)
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
