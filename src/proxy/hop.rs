//! The peer hop on the wire: refusing hop headers from clients, verifying them (and the body
//! they sign) from peers, and signing requests this pod forwards. The cryptography and the
//! guarantees are in `crate::peer`.

use super::reply::Refusal;
use super::RequestCtx;
use crate::config::Config;
use crate::metrics::METRICS;
use crate::peer::{
    self, HopClaims, HopError, ReplayGuard, Tag, BODY_TRAILER, HOP, HOP_BODY, HOP_FROM,
    HOP_HEADERS, HOP_NONCE, HOP_SIGNATURE, HOP_TIME, HOP_TO, HOP_USER,
};
use crate::protocol::headers::MCP_SESSION_ID;
use crate::protocol::jsonrpc::code;
use bytes::{Bytes, BytesMut};
use log::warn;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

fn text<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// What is left of a hop once its headers verified: the body check, when the body was not
/// complete yet (it is done in `settle`), and the trailer this pod appends to a body it
/// forwards.
#[derive(Debug, Default)]
pub struct HopState {
    /// Received: the body must match this `sha256=` claim.
    digest: Option<String>,
    /// Received: the body ends with a trailer for this signature.
    trailer: Option<Tag>,
    /// Forwarded: append a trailer for this signature.
    seal: Option<Tag>,
}

/// The hop's settings and the signatures this pod accepted.
pub struct Hops {
    secret: Option<Vec<u8>>,
    /// This pod's advertised peer address: what hops meant for it name.
    me: String,
    max_skew: u64,
    replay: ReplayGuard,
}

impl Hops {
    pub fn new(config: &Config, me: String) -> Hops {
        Hops {
            secret: config.peer_secret().map(|s| s.as_bytes().to_vec()),
            me,
            max_skew: config.peer.max_clock_skew.as_secs(),
            replay: ReplayGuard::new(config.peer.replay_cache_size),
        }
    }

    /// Admits a request's hop headers. On the public listener there must be none (a client
    /// cannot pose as a peer); on the peer listener they must verify, once, and so must the
    /// body when it is already complete (else `settle` checks it).
    pub fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        // only a peer's body is checked here; a client's is not copied for nothing
        let body = match ctx.from_peer {
            true => known_body(session, ctx),
            false => None,
        };
        let req = session.req_header();
        match self.check(req, ctx.from_peer, body.as_deref(), peer::unix_now()) {
            Ok(state) => {
                ctx.hop = state;
                Ok(())
            }
            Err(e) => Err(refuse(ctx, text(req, HOP_FROM), e)),
        }
    }

    fn check(
        &self,
        req: &RequestHeader,
        from_peer: bool,
        body: Option<&[u8]>,
        now: u64,
    ) -> Result<HopState, HopError> {
        if !from_peer {
            return match HOP_HEADERS.iter().any(|h| req.headers.contains_key(*h)) {
                true => Err(HopError::FromClient),
                false => Ok(HopState::default()),
            };
        }
        let secret = self.secret.as_deref().ok_or(HopError::NotConfigured)?;
        let sig = text(req, HOP_SIGNATURE).ok_or(HopError::Missing)?;
        let (Some(hop), Some(time), Some(nonce), Some(to), Some(claim)) = (
            text(req, HOP).and_then(|v| v.parse().ok()),
            text(req, HOP_TIME).and_then(|v| v.parse().ok()),
            text(req, HOP_NONCE),
            text(req, HOP_TO),
            text(req, HOP_BODY),
        ) else {
            // an older sidecar signs fewer headers
            return Err(match sig.starts_with(peer::VERSION) {
                true => HopError::Missing,
                false => HopError::Version,
            });
        };
        let claims = HopClaims {
            hop,
            time,
            nonce,
            method: req.method.as_str(),
            path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            session_id: text(req, MCP_SESSION_ID).unwrap_or(""),
            from: text(req, HOP_FROM).unwrap_or(""),
            to,
            user: text(req, HOP_USER).unwrap_or(""),
            body: claim,
        };
        let tag = claims.verify(secret, sig, now, self.max_skew)?;
        if to != self.me {
            return Err(HopError::Misdirected);
        }
        let mut state = HopState::default();
        match (claim, body) {
            // a forwarder announces a trailer only for a body it sends chunked, which is never
            // complete here yet; one that is would reach the MCP server with its trailer
            (BODY_TRAILER, Some(_)) => return Err(HopError::BodyDigest),
            (BODY_TRAILER, None) => state.trailer = Some(tag),
            (claim, Some(body)) if !peer::body_matches(claim, body) => {
                return Err(HopError::BodyDigest)
            }
            (_, Some(_)) => {}
            (claim, None) => state.digest = Some(claim.to_string()),
        }
        self.replay.admit(tag, time, self.max_skew, now)?;
        Ok(state)
    }

    /// The body a peer sent, once complete, checked against its hop (and without its trailer).
    /// `Err` is the 403 `fail_to_proxy` answers (the MCP server got the headers, not a byte of
    /// this body).
    pub fn settle(&self, ctx: &mut RequestCtx, full: Bytes) -> Result<Bytes> {
        let secret = self.secret.as_deref().unwrap_or_default();
        let checked = match (ctx.hop.digest.take(), ctx.hop.trailer.take()) {
            (Some(claim), _) if !peer::body_matches(&claim, &full) => Err(HopError::BodyDigest),
            (_, Some(tag)) => peer::open_trailer(secret, &tag, &full).map(|b| full.slice_ref(b)),
            _ => Ok(full),
        };
        checked.or_else(|e| {
            let refusal = refuse(ctx, None, e);
            let status = refusal.status;
            ctx.denied = Some(refusal);
            Error::e_explain(ErrorType::HTTPStatus(status), "peer request body refused")
        })
    }

    /// The body of a request this pod forwards, with its trailer when the hop announced one.
    pub fn seal(&self, ctx: &RequestCtx, full: Bytes) -> Bytes {
        let (Some(tag), Some(secret)) = (&ctx.hop.seal, self.secret.as_deref()) else {
            return full;
        };
        let mut sealed = BytesMut::with_capacity(full.len() + peer::TRAILER_LEN);
        sealed.extend_from_slice(&full);
        sealed.extend_from_slice(&peer::trailer(secret, tag, &full));
        sealed.freeze()
    }

    /// Signs a request this pod forwards to the peer at `to`, naming the verified caller by
    /// its key digest. Runs again on every retry, so a resent request carries a new signature.
    pub fn sign(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
        to: &str,
    ) -> Result<()> {
        let secret = self.secret.as_deref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "forwarding without peer.secret")
        })?;
        // a larger body leaves after these headers and gets a trailer instead
        let claim = known_body(session, ctx).as_deref().map(peer::body_claim);
        let nonce = peer::nonce();
        let claims = HopClaims {
            hop: 1,
            time: peer::unix_now(),
            nonce: &nonce,
            method: upstream_request.method.as_str(),
            path_and_query: upstream_request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str()),
            session_id: text(upstream_request, MCP_SESSION_ID).unwrap_or(""),
            from: &self.me,
            to,
            user: ctx.caller.as_ref().map_or("", |c| c.digest.as_str()),
            body: claim.as_deref().unwrap_or(BODY_TRAILER),
        };
        let tag = claims.tag(secret);
        let headers = claims.headers(peer::signature(&tag));
        ctx.hop.seal = match claim {
            Some(_) => None,
            None => {
                // the trailer makes the body longer than announced
                upstream_request.remove_header("content-length");
                upstream_request.insert_header("transfer-encoding", "chunked")?;
                Some(tag)
            }
        };
        for (name, value) in headers {
            upstream_request.insert_header(name, value)?;
        }
        Ok(())
    }
}

/// The whole body, when it is known before the upstream gets the headers: read in
/// `request_filter` (it is in Pingora's retry buffer), or none at all.
fn known_body(session: &mut Session, ctx: &RequestCtx) -> Option<Bytes> {
    if ctx.body_complete {
        Some(session.as_ref().get_retry_buffer().unwrap_or_default())
    } else if session.as_mut().is_body_empty() {
        Some(Bytes::new())
    } else {
        None
    }
}

/// Counts and logs a refused hop; the answer to send. Never names the signature or the secret.
fn refuse(ctx: &RequestCtx, from: Option<&str>, e: HopError) -> Refusal {
    METRICS.hop_refusals.with_label_values(&[e.label()]).inc();
    warn!(
        "request_id={} peer hop refused: reason={} from={}",
        ctx.request_id,
        e.label(),
        from.unwrap_or("-")
    );
    Refusal::new(e.status(), code::SERVER_ERROR, e.to_string())
}

/// Removes hop headers (nothing of the hop reaches an MCP server or the next peer).
pub fn strip(upstream_request: &mut RequestHeader, ctx: &mut RequestCtx) {
    ctx.hop.seal = None;
    for h in HOP_HEADERS {
        upstream_request.remove_header(h);
    }
}

/// The verified caller a peer's hop names (its key digest), if any.
pub fn user(req: &RequestHeader) -> Option<&str> {
    text(req, HOP_USER).filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef";
    const ME: &str = "10.0.0.2:8081";

    fn hops(secret: Option<&[u8]>) -> Hops {
        Hops {
            secret: secret.map(<[u8]>::to_vec),
            me: ME.into(),
            max_skew: 5,
            replay: ReplayGuard::new(100),
        }
    }

    /// A request as a peer signs it, with `body` claimed (or a trailer) at `time`.
    fn signed(time: u64, to: &str, body: Option<&[u8]>, user: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/mcp?x=1", None).unwrap();
        r.insert_header(MCP_SESSION_ID, "abc").unwrap();
        let claim = body.map(peer::body_claim);
        let nonce = peer::nonce();
        let claims = HopClaims {
            hop: 1,
            time,
            nonce: &nonce,
            method: "POST",
            path_and_query: "/mcp?x=1",
            session_id: "abc",
            from: "10.0.0.1:8081",
            to,
            user,
            body: claim.as_deref().unwrap_or(BODY_TRAILER),
        };
        for (name, value) in claims.headers(claims.sign(SECRET)) {
            r.insert_header(name, value).unwrap();
        }
        r
    }

    const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

    #[test]
    fn signed_requests_pass_the_peer_listener_once() {
        let h = hops(Some(SECRET));
        let r = signed(1000, ME, Some(BODY), "");
        assert!(h.check(&r, true, Some(BODY), 1000).is_ok());
        assert_eq!(
            h.check(&r, true, Some(BODY), 1001).unwrap_err(),
            HopError::Replayed
        );
        // a retry is signed again (sign runs per attempt): a new nonce, a new signature, in
        // the same second
        let retried = signed(1000, ME, Some(BODY), "");
        assert_ne!(retried.headers[HOP_SIGNATURE], r.headers[HOP_SIGNATURE]);
        assert!(h.check(&retried, true, Some(BODY), 1000).is_ok());
        // the same request verifies with the right secret only
        let r = signed(1000, ME, Some(BODY), "");
        assert_eq!(
            hops(Some(b"another-secret-xx"))
                .check(&r, true, Some(BODY), 1000)
                .unwrap_err(),
            HopError::BadSignature
        );
        assert_eq!(
            hops(None).check(&r, true, Some(BODY), 1000).unwrap_err(),
            HopError::NotConfigured
        );
        // the same headers on the public listener are a forgery
        assert_eq!(
            h.check(&r, false, Some(BODY), 1000).unwrap_err(),
            HopError::FromClient
        );
    }

    #[test]
    fn the_trace_context_rides_along_unsigned() {
        // the forwarder writes its hop span's traceparent beside the signed headers: no claim,
        // so hops of sidecars with tracing on, off, or of an older release verify alike, and
        // stripping the hop leaves it for the MCP server's side to replace
        let h = hops(Some(SECRET));
        let mut r = signed(1000, ME, Some(BODY), "");
        r.insert_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .unwrap();
        r.insert_header("tracestate", "k=v").unwrap();
        assert!(h.check(&r, true, Some(BODY), 1000).is_ok());
        let mut ctx = RequestCtx::new();
        strip(&mut r, &mut ctx);
        assert!(r.headers.contains_key("traceparent") && !r.headers.contains_key(HOP_SIGNATURE));
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let h = hops(Some(SECRET));
        let r = signed(1000, ME, Some(BODY), "");
        let other = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#;
        assert_eq!(
            h.check(&r, true, Some(other), 1000).unwrap_err(),
            HopError::BodyDigest
        );
        // an empty body is claimed as the digest of zero bytes
        let r = signed(1000, ME, Some(b""), "");
        assert_eq!(
            h.check(&r, true, Some(BODY), 1000).unwrap_err(),
            HopError::BodyDigest
        );
        assert!(h.check(&r, true, Some(b""), 1000).is_ok());
        // a body not complete yet is checked when it is
        let r = signed(1000, ME, Some(BODY), "");
        let state = h.check(&r, true, None, 1000).unwrap();
        assert!(state.digest.is_some() && state.trailer.is_none());
        let r = signed(1000, ME, None, "");
        let state = h.check(&r, true, None, 1000).unwrap();
        assert!(state.trailer.is_some());
        let r = signed(1000, ME, None, "");
        assert_eq!(
            h.check(&r, true, Some(BODY), 1000).unwrap_err(),
            HopError::BodyDigest
        );
    }

    #[test]
    fn clock_skew_both_ways() {
        let h = hops(Some(SECRET));
        // signed 5s in our future (the skew) and 10s in our past (transit and skew): accepted
        assert!(h
            .check(&signed(1005, ME, Some(b""), ""), true, Some(b""), 1000)
            .is_ok());
        assert!(h
            .check(&signed(990, ME, Some(b""), ""), true, Some(b""), 1000)
            .is_ok());
        for time in [1006, 989] {
            assert_eq!(
                h.check(&signed(time, ME, Some(b""), ""), true, Some(b""), 1000)
                    .unwrap_err(),
                HopError::Expired,
                "signed at {time}"
            );
        }
    }

    #[test]
    fn tampered_headers_and_other_pods_are_refused() {
        let h = hops(Some(SECRET));
        assert_eq!(
            h.check(
                &signed(1000, "10.0.0.3:8081", Some(b""), ""),
                true,
                Some(b""),
                1000
            )
            .unwrap_err(),
            HopError::Misdirected
        );
        // another caller named on a signed hop
        let mut u = signed(1000, ME, Some(b""), "aa");
        assert_eq!(user(&u), Some("aa"));
        u.insert_header(HOP_USER, "bb").unwrap();
        assert_eq!(
            h.check(&u, true, Some(b""), 1000).unwrap_err(),
            HopError::BadSignature
        );
        // moved to another session
        let mut r = signed(1000, ME, Some(b""), "");
        r.insert_header(MCP_SESSION_ID, "abd").unwrap();
        assert_eq!(
            h.check(&r, true, Some(b""), 1000).unwrap_err(),
            HopError::BadSignature
        );
        // a v2 sidecar's hop (no nonce, body or destination; a bare hex signature)
        let mut old = RequestHeader::build("POST", b"/mcp", None).unwrap();
        for (n, v) in [(HOP, "1"), (HOP_TIME, "1000"), (HOP_SIGNATURE, "00ff")] {
            old.insert_header(n, v).unwrap();
        }
        assert_eq!(
            h.check(&old, true, Some(b""), 1000).unwrap_err(),
            HopError::Version
        );
        // no hop at all
        let bare = RequestHeader::build("POST", b"/mcp", None).unwrap();
        assert_eq!(
            h.check(&bare, true, Some(b""), 1000).unwrap_err(),
            HopError::Missing
        );
        assert!(h.check(&bare, false, Some(b""), 1000).is_ok());
        // a client naming itself a caller on the public listener
        let mut c = RequestHeader::build("POST", b"/mcp", None).unwrap();
        c.insert_header(HOP_USER, "aa").unwrap();
        assert_eq!(
            h.check(&c, false, None, 1000).unwrap_err(),
            HopError::FromClient
        );
    }
}
