//! The hop between sidecars. A request forwarded to the session's owner pod carries an HMAC
//! over a shared peer secret, so no client can forge one, and a hop count, so a forwarded
//! request is never forwarded again.
//!
//! What a hop guarantees (format v3):
//! - it was signed by a holder of `peer.secret`, for this method, path, session, caller and
//!   destination pod (a hop for pod A is refused by pod B);
//! - its body is the one that was signed: the owner digests what it received before any of it
//!   reaches its MCP server;
//! - it is fresh: signed at most `HOP_TRANSIT_SECS` plus `peer.max_clock_skew` ago, and not
//!   more than the skew in the future;
//! - it is used once: the owner remembers every signature it accepted until it expires.
//!
//! Bodies the forwarder holds before it signs (up to Pingora's retry buffer, or none) are named
//! by their SHA-256 in the signed headers. Larger or chunked bodies leave after the headers, so
//! the headers say `trailer` and the body ends with a MAC over the header signature and the
//! body's digest; the owner checks and strips it.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub const HOP: &str = "x-mcp-sidecar-hop";
pub const HOP_TIME: &str = "x-mcp-sidecar-hop-time";
pub const HOP_SIGNATURE: &str = "x-mcp-sidecar-hop-signature";
/// The pod the hop came from (for logs).
pub const HOP_FROM: &str = "x-mcp-sidecar-hop-from";
/// The pod the hop is meant for (its advertised address).
pub const HOP_TO: &str = "x-mcp-sidecar-hop-to";
/// Random per signing, so a retried forward carries a signature of its own.
pub const HOP_NONCE: &str = "x-mcp-sidecar-hop-nonce";
/// `sha256=<hex>` of the body, or `trailer` (see the module documentation).
pub const HOP_BODY: &str = "x-mcp-sidecar-hop-body";
/// The hub caller the forwarding pod verified: its key's SHA-256 (signed with the rest, so
/// the owner pod trusts it without looking at client headers).
pub const HOP_USER: &str = "x-mcp-sidecar-hop-user";

/// Every header of the hop; none of them reaches an MCP server.
pub const HOP_HEADERS: [&str; 8] = [
    HOP,
    HOP_TIME,
    HOP_SIGNATURE,
    HOP_FROM,
    HOP_TO,
    HOP_NONCE,
    HOP_BODY,
    HOP_USER,
];

/// The signature's prefix. Sidecars of different hop versions refuse each other's hops.
pub const VERSION: &str = "v3";

/// How long a hop may take from signing to verification, besides the clock skew. The forwarder
/// signs once it holds the body (or sends it right behind the headers), so this is a network
/// round, not an upload.
pub const HOP_TRANSIT_SECS: u64 = 5;

/// Length of the MAC that ends a `trailer` body.
pub const TRAILER_LEN: usize = 32;

/// The body claim of a body that travels with a trailer.
pub const BODY_TRAILER: &str = "trailer";

/// The one hop a request may take.
pub const MAX_HOPS: u32 = 1;

/// Why a hop was refused. The labels are the `reason` of `mcp_sidecar_hop_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopError {
    /// Hop headers on the public listener.
    FromClient,
    /// No `peer.secret` on this pod.
    NotConfigured,
    Missing,
    /// A signature of another hop format (a rolling upgrade across versions).
    Version,
    TooManyHops,
    BadSignature,
    /// Signed too long ago, or further in the future than the clock skew allows.
    Expired,
    /// Signed for another pod.
    Misdirected,
    /// The body is not the one that was signed.
    BodyDigest,
    /// The signature was already used.
    Replayed,
    /// Too many live signatures to remember another one.
    ReplayCacheFull,
}

impl HopError {
    pub fn label(self) -> &'static str {
        match self {
            HopError::FromClient => "from_client",
            HopError::NotConfigured => "not_configured",
            HopError::Missing => "missing",
            HopError::Version => "version",
            HopError::TooManyHops => "too_many_hops",
            HopError::BadSignature => "bad_signature",
            HopError::Expired => "expired",
            HopError::Misdirected => "misdirected",
            HopError::BodyDigest => "body_digest",
            HopError::Replayed => "replayed",
            HopError::ReplayCacheFull => "replay_cache_full",
        }
    }

    /// 503 when this pod cannot take the hop now (the forwarder's client may retry), else 403.
    pub fn status(self) -> u16 {
        match self {
            HopError::ReplayCacheFull => 503,
            _ => 403,
        }
    }
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HopError::FromClient => "sidecar hop headers are not accepted from clients",
            HopError::NotConfigured => "peer forwarding is not configured (peer.secret)",
            HopError::Missing => "peer request without hop headers",
            HopError::Version => {
                "peer request signed with another hop format: every sidecar must run the same version"
            }
            HopError::TooManyHops => "peer request already forwarded once",
            HopError::BadSignature => "peer request signature does not verify",
            HopError::Expired => "peer request signed outside the accepted time window",
            HopError::Misdirected => "peer request was signed for another pod",
            HopError::BodyDigest => "peer request body is not the one that was signed",
            HopError::Replayed => "peer request signature was already used",
            HopError::ReplayCacheFull => "too many peer requests in flight; retry shortly",
        })
    }
}

/// A MAC: the signature of a hop, the key of the replay cache.
pub type Tag = [u8; 32];

/// What a hop signs: enough of the request that a captured signature cannot be replayed onto
/// another method, path, session, pod or body.
pub struct HopClaims<'a> {
    pub hop: u32,
    pub time: u64,
    pub nonce: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub session_id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// Key digest of the verified hub caller; empty when anonymous.
    pub user: &'a str,
    /// `sha256=<hex>` or `trailer`.
    pub body: &'a str,
}

impl HopClaims<'_> {
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        for part in [
            "mcp-sidecar-hop-v3",
            &self.hop.to_string(),
            &self.time.to_string(),
            self.nonce,
            self.method,
            self.path_and_query,
            self.session_id,
            self.from,
            self.to,
            self.user,
            self.body,
        ] {
            // length-prefixed, so no two different claims share an encoding
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The signature header's value.
    pub fn sign(&self, secret: &[u8]) -> String {
        signature(&self.tag(secret))
    }

    pub fn tag(&self, secret: &[u8]) -> Tag {
        self.mac(secret).finalize().into_bytes().into()
    }

    /// The headers that carry these claims and their signature (the session id travels in its
    /// own header).
    pub fn headers(&self, signature: String) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (HOP, self.hop.to_string()),
            (HOP_TIME, self.time.to_string()),
            (HOP_NONCE, self.nonce.to_string()),
            (HOP_FROM, self.from.to_string()),
            (HOP_TO, self.to.to_string()),
            (HOP_BODY, self.body.to_string()),
            (HOP_SIGNATURE, signature),
        ];
        if !self.user.is_empty() {
            h.push((HOP_USER, self.user.to_string()));
        }
        h
    }

    /// Checks the hop count, the signature (in constant time) and the time window; the
    /// signature's tag on success.
    pub fn verify(
        &self,
        secret: &[u8],
        signature: &str,
        now: u64,
        max_skew: u64,
    ) -> Result<Tag, HopError> {
        let hex_sig = signature
            .strip_prefix(VERSION)
            .and_then(|s| s.strip_prefix(':'))
            .ok_or(HopError::Version)?;
        if self.hop > MAX_HOPS {
            return Err(HopError::TooManyHops);
        }
        let sig = hex::decode(hex_sig).map_err(|_| HopError::BadSignature)?;
        self.mac(secret)
            .verify_slice(&sig)
            .map_err(|_| HopError::BadSignature)?;
        if self.time > now.saturating_add(max_skew) || now > expires_at(self.time, max_skew) {
            return Err(HopError::Expired);
        }
        Ok(sig.try_into().expect("a verified HMAC-SHA256 is 32 bytes"))
    }
}

/// The signature header's value for a tag: `v3:<hex>`.
pub fn signature(tag: &Tag) -> String {
    format!("{VERSION}:{}", hex::encode(tag))
}

/// The last second a hop signed at `time` is accepted.
fn expires_at(time: u64, max_skew: u64) -> u64 {
    // the time comes from a header: never overflow on it
    time.saturating_add(HOP_TRANSIT_SECS)
        .saturating_add(max_skew)
}

/// The body claim of a body known when signing.
pub fn body_claim(body: &[u8]) -> String {
    format!("sha256={}", hex::encode(Sha256::digest(body)))
}

/// The MAC that ends a `trailer` body: the hop's signature and the body's digest, so the body
/// belongs to that one hop.
pub fn trailer(secret: &[u8], signature: &Tag, body: &[u8]) -> Tag {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"mcp-sidecar-hop-v3-trailer\n");
    mac.update(signature);
    mac.update(&Sha256::digest(body));
    mac.finalize().into_bytes().into()
}

/// The body of a `trailer` hop without its trailer, if the trailer verifies.
pub fn open_trailer<'a>(
    secret: &[u8],
    signature: &Tag,
    sealed: &'a [u8],
) -> Result<&'a [u8], HopError> {
    let split = sealed
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or(HopError::BodyDigest)?;
    let (body, tag) = sealed.split_at(split);
    match constant_time_eq(&trailer(secret, signature, body), tag) {
        true => Ok(body),
        false => Err(HopError::BodyDigest),
    }
}

/// Whether a received body is the one a `sha256=` claim names.
pub fn body_matches(claim: &str, body: &[u8]) -> bool {
    constant_time_eq(body_claim(body).as_bytes(), claim.as_bytes())
}

/// A fresh nonce for one signing.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The signatures this pod accepted, each until its hop expires. Bounded: when `capacity` live
/// signatures are remembered, new hops are refused rather than forgetting one that could still
/// be replayed.
pub struct ReplayGuard {
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    tags: HashSet<Tag>,
    /// Expiry second → the tags that expire then.
    by_expiry: BTreeMap<u64, Vec<Tag>>,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            capacity,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records the first use of a verified hop's signature; refuses a second one.
    pub fn admit(&self, tag: Tag, time: u64, max_skew: u64, now: u64) -> Result<(), HopError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let live = seen.by_expiry.split_off(&now);
        for tag in std::mem::replace(&mut seen.by_expiry, live)
            .into_values()
            .flatten()
        {
            seen.tags.remove(&tag);
        }
        if seen.tags.contains(&tag) {
            return Err(HopError::Replayed);
        }
        if seen.tags.len() >= self.capacity {
            return Err(HopError::ReplayCacheFull);
        }
        seen.tags.insert(tag);
        seen.by_expiry
            .entry(expires_at(time, max_skew))
            .or_default()
            .push(tag);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().unwrap().tags.len()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Constant-time comparison for secrets (admin token, MACs).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: u64 = 5;

    fn claims(hop: u32, time: u64) -> HopClaims<'static> {
        HopClaims {
            hop,
            time,
            nonce: "n1",
            method: "POST",
            path_and_query: "/mcp",
            session_id: "abc",
            from: "10.0.0.1:8081",
            to: "10.0.0.2:8081",
            user: "",
            body: "sha256=e3b0",
        }
    }

    #[test]
    fn signed_hops_verify_and_tampering_does_not() {
        let sig = claims(1, 1000).sign(b"secret");
        assert!(sig.starts_with("v3:"));
        assert!(claims(1, 1000).verify(b"secret", &sig, 1001, SKEW).is_ok());
        assert_eq!(
            claims(1, 1000).verify(b"other", &sig, 1001, SKEW),
            Err(HopError::BadSignature)
        );
        let tampered: [fn(&mut HopClaims<'static>); 6] = [
            |c| c.session_id = "abd",
            |c| c.user = "digest-of-another-users-key",
            |c| c.to = "10.0.0.3:8081",
            |c| c.body = "sha256=0000",
            |c| c.nonce = "n2",
            |c| c.path_and_query = "/mcp?x",
        ];
        for change in tampered {
            let mut other = claims(1, 1000);
            change(&mut other);
            assert_eq!(
                other.verify(b"secret", &sig, 1001, SKEW),
                Err(HopError::BadSignature)
            );
        }
        assert_eq!(
            claims(1, 1000).verify(b"secret", "v3:zz", 1001, SKEW),
            Err(HopError::BadSignature)
        );
        let sig2 = claims(2, 1000).sign(b"secret");
        assert_eq!(
            claims(2, 1000).verify(b"secret", &sig2, 1000, SKEW),
            Err(HopError::TooManyHops)
        );
    }

    #[test]
    fn hops_of_another_format_version_are_refused() {
        let sig = claims(1, 1000).sign(b"secret");
        let bare = sig.trim_start_matches("v3:");
        assert_eq!(
            claims(1, 1000).verify(b"secret", bare, 1000, SKEW),
            Err(HopError::Version)
        );
        assert_eq!(
            claims(1, 1000).verify(b"secret", &format!("v2:{bare}"), 1000, SKEW),
            Err(HopError::Version)
        );
    }

    #[test]
    fn clock_skew_is_tolerated_both_ways_and_no_further() {
        let sig = claims(1, 1000).sign(b"secret");
        let at = |now: u64, skew: u64| claims(1, 1000).verify(b"secret", &sig, now, skew);
        // the signer's clock runs ahead of ours
        assert!(at(1000 - SKEW, SKEW).is_ok());
        assert_eq!(at(1000 - SKEW - 1, SKEW), Err(HopError::Expired));
        // or behind: transit plus skew
        assert!(at(1000 + HOP_TRANSIT_SECS + SKEW, SKEW).is_ok());
        assert_eq!(
            at(1000 + HOP_TRANSIT_SECS + SKEW + 1, SKEW),
            Err(HopError::Expired)
        );
        // the skew is configurable
        assert!(at(1000 - 30, 30).is_ok());
        assert_eq!(at(1000 - 1, 0), Err(HopError::Expired));
        assert!(at(1000 + HOP_TRANSIT_SECS, 0).is_ok());
    }

    #[test]
    fn body_claims_and_trailers_bind_the_body() {
        assert_eq!(
            body_claim(b""),
            "sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "an empty body digests as zero bytes"
        );
        let claim = body_claim(b"{\"id\":1}");
        assert!(body_matches(&claim, b"{\"id\":1}"));
        assert!(!body_matches(&claim, b"{\"id\":2}"));
        assert!(!body_matches(BODY_TRAILER, b""));

        let sig = [7u8; 32];
        let body = b"a large body".repeat(100);
        let mut sealed = body.clone();
        sealed.extend_from_slice(&trailer(b"secret", &sig, &body));
        assert_eq!(open_trailer(b"secret", &sig, &sealed), Ok(&body[..]));
        let mut tampered = sealed.clone();
        tampered[3] ^= 1;
        assert_eq!(
            open_trailer(b"secret", &sig, &tampered),
            Err(HopError::BodyDigest)
        );
        // the trailer of another hop, or made with another secret
        assert_eq!(
            open_trailer(b"secret", &[8u8; 32], &sealed),
            Err(HopError::BodyDigest)
        );
        assert_eq!(
            open_trailer(b"other", &sig, &sealed),
            Err(HopError::BodyDigest)
        );
        assert_eq!(
            open_trailer(b"secret", &sig, &sealed[..10]),
            Err(HopError::BodyDigest)
        );
    }

    #[test]
    fn a_signature_is_accepted_once_and_forgotten_when_it_expires() {
        let guard = ReplayGuard::new(2);
        assert_eq!(guard.admit([1; 32], 1000, SKEW, 1000), Ok(()));
        assert_eq!(
            guard.admit([1; 32], 1000, SKEW, 1001),
            Err(HopError::Replayed)
        );
        assert_eq!(guard.admit([2; 32], 1000, SKEW, 1001), Ok(()));
        // full: refuse rather than forget a signature that could still be replayed
        assert_eq!(
            guard.admit([3; 32], 1001, SKEW, 1001),
            Err(HopError::ReplayCacheFull)
        );
        let last = expires_at(1000, SKEW);
        assert_eq!(
            guard.admit([1; 32], 1000, SKEW, last),
            Err(HopError::Replayed),
            "remembered through the last second the hop is accepted"
        );
        assert_eq!(guard.admit([3; 32], 1001, SKEW, last + 1), Ok(()));
        assert_eq!(guard.len(), 1, "expired signatures are dropped");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
