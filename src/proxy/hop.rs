//! The peer hop on the wire: refusing hop headers from clients, verifying them from peers,
//! and signing requests this pod forwards. The cryptography is in `crate::peer`.

use super::reply::Refusal;
use crate::peer::{self, HopClaims, HOP, HOP_FROM, HOP_SIGNATURE, HOP_TIME, HOP_USER};
use crate::protocol::headers::MCP_SESSION_ID;
use crate::protocol::jsonrpc::code;
use pingora::http::RequestHeader;
use pingora::prelude::*;

fn text<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn forbidden(message: String) -> Refusal {
    Refusal::new(403, code::SERVER_ERROR, message)
}

/// Admits a request's hop headers. On the public listener there must be none (a client
/// cannot pose as a peer); on the peer listener they must verify.
pub fn check(req: &RequestHeader, from_peer: bool, secret: Option<&[u8]>) -> Result<(), Refusal> {
    if !from_peer {
        return match [HOP, HOP_TIME, HOP_SIGNATURE, HOP_FROM]
            .iter()
            .any(|h| req.headers.contains_key(*h))
            || req.headers.contains_key(HOP_USER)
        {
            true => Err(forbidden(
                "sidecar hop headers are not accepted from clients".into(),
            )),
            false => Ok(()),
        };
    }
    let secret = secret
        .ok_or_else(|| forbidden("peer forwarding is not configured (peer.secret)".into()))?;
    let (Some(hop), Some(time), Some(sig)) = (
        text(req, HOP).and_then(|v| v.parse().ok()),
        text(req, HOP_TIME).and_then(|v| v.parse().ok()),
        text(req, HOP_SIGNATURE),
    ) else {
        return Err(forbidden(peer::HopError::Missing.to_string()));
    };
    let claims = HopClaims {
        hop,
        time,
        method: req.method.as_str(),
        path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        session_id: text(req, MCP_SESSION_ID).unwrap_or(""),
        from: text(req, HOP_FROM).unwrap_or(""),
        user: text(req, HOP_USER).unwrap_or(""),
    };
    claims
        .verify(secret, sig, peer::unix_now())
        .map_err(|e| forbidden(e.to_string()))
}

/// Removes hop headers (nothing of the hop reaches an MCP server).
pub fn strip(upstream_request: &mut RequestHeader) {
    for h in [HOP, HOP_TIME, HOP_SIGNATURE, HOP_FROM, HOP_USER] {
        upstream_request.remove_header(h);
    }
}

/// The verified caller a peer's hop names (its key digest), if any.
pub fn user(req: &RequestHeader) -> Option<&str> {
    text(req, HOP_USER).filter(|u| !u.is_empty())
}

/// Signs a request this pod forwards to the session's owner, naming the verified caller by
/// its key digest (`""` when anonymous).
pub fn sign(
    upstream_request: &mut RequestHeader,
    secret: &[u8],
    me: &str,
    user: &str,
) -> Result<()> {
    let time = peer::unix_now();
    let claims = HopClaims {
        hop: 1,
        time,
        method: upstream_request.method.as_str(),
        path_and_query: upstream_request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str()),
        session_id: text(upstream_request, MCP_SESSION_ID).unwrap_or(""),
        from: me,
        user,
    };
    let signature = claims.sign(secret);
    upstream_request.insert_header(HOP, "1")?;
    upstream_request.insert_header(HOP_TIME, time.to_string())?;
    upstream_request.insert_header(HOP_FROM, me.to_string())?;
    upstream_request.insert_header(HOP_SIGNATURE, signature)?;
    if !user.is_empty() {
        upstream_request.insert_header(HOP_USER, user.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        r.insert_header(MCP_SESSION_ID, "abc").unwrap();
        r
    }

    #[test]
    fn signed_requests_pass_the_peer_listener() {
        let mut r = request("/mcp?x=1");
        sign(&mut r, b"0123456789abcdef", "10.0.0.1:8081", "").unwrap();
        assert_eq!(check(&r, true, Some(b"0123456789abcdef")), Ok(()));
        assert!(check(&r, true, Some(b"another-secret-xx")).is_err());
        assert!(check(&r, true, None).is_err());
        // the same headers on the public listener are a forgery
        assert_eq!(
            check(&r, false, Some(b"0123456789abcdef"))
                .unwrap_err()
                .status,
            403
        );
        // another caller named on a signed hop: refused
        let mut u = request("/mcp");
        sign(&mut u, b"0123456789abcdef", "10.0.0.1:8081", "aa").unwrap();
        assert_eq!(user(&u), Some("aa"));
        assert_eq!(check(&u, true, Some(b"0123456789abcdef")), Ok(()));
        u.insert_header(HOP_USER, "bb").unwrap();
        assert!(check(&u, true, Some(b"0123456789abcdef")).is_err());
        // a client naming itself a caller on the public listener: refused
        let mut c = request("/mcp");
        c.insert_header(HOP_USER, "aa").unwrap();
        assert_eq!(check(&c, false, None).unwrap_err().status, 403);
        // moved to another session: refused
        r.insert_header(MCP_SESSION_ID, "abd").unwrap();
        assert!(check(&r, true, Some(b"0123456789abcdef")).is_err());
        strip(&mut r);
        assert_eq!(check(&r, false, None), Ok(()));
        assert!(check(&r, true, Some(b"0123456789abcdef")).is_err());
    }
}
