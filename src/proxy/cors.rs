//! CORS for browser-based MCP clients: answers preflights and exposes `Mcp-Session-Id`, which a
//! browser client cannot read otherwise.

use crate::config::CorsSection;
use pingora::http::ResponseHeader;

pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    allow_headers: String,
    expose_headers: String,
    max_age: String,
}

impl Cors {
    pub fn new(c: &CorsSection) -> Cors {
        Cors {
            any_origin: c.allow_origins.iter().any(|o| o == "*"),
            origins: c.allow_origins.clone(),
            allow_headers: c.allow_headers.join(", "),
            expose_headers: c.expose_headers.join(", "),
            max_age: c.max_age.as_secs().to_string(),
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o == origin)
    }

    /// The value for `Access-Control-Allow-Origin`, if this origin is allowed.
    fn allowed<'a>(&self, origin: &'a str) -> Option<&'a str> {
        self.allows(origin).then_some(origin)
    }

    /// Headers for an actual (non-preflight) response.
    pub fn apply(&self, origin: Option<&str>, resp: &mut ResponseHeader) {
        let Some(origin) = origin.and_then(|o| self.allowed(o)) else {
            return;
        };
        // the origin is echoed (not `*`) so credentials work; Vary keeps caches honest
        let _ = resp.insert_header("access-control-allow-origin", origin);
        let _ = resp.insert_header("vary", "Origin");
        if !self.expose_headers.is_empty() {
            let _ = resp.insert_header("access-control-expose-headers", &self.expose_headers);
        }
    }

    /// A complete preflight answer, or `None` when the origin is not allowed (the request then
    /// goes on to the upstream like any other).
    pub fn preflight(&self, origin: &str) -> Option<ResponseHeader> {
        let origin = self.allowed(origin)?;
        let mut resp = ResponseHeader::build(204, Some(6)).ok()?;
        let _ = resp.insert_header("access-control-allow-origin", origin);
        let _ = resp.insert_header("vary", "Origin");
        let _ = resp.insert_header("access-control-allow-methods", "GET, POST, DELETE, OPTIONS");
        let _ = resp.insert_header("access-control-allow-headers", &self.allow_headers);
        let _ = resp.insert_header("access-control-max-age", &self.max_age);
        let _ = resp.insert_header("content-length", "0");
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_and_expose() {
        let cors = Cors::new(&CorsSection {
            allow_origins: vec!["https://app.example".into()],
            ..Default::default()
        });
        assert!(cors.preflight("https://evil.example").is_none());
        let p = cors.preflight("https://app.example").unwrap();
        assert_eq!(p.status.as_u16(), 204);
        assert!(p.headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Mcp-Session-Id"));
        let mut r = ResponseHeader::build(200, None).unwrap();
        cors.apply(Some("https://app.example"), &mut r);
        assert!(r.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("Mcp-Session-Id"));
        let mut r = ResponseHeader::build(200, None).unwrap();
        cors.apply(Some("https://evil.example"), &mut r);
        assert!(r.headers.get("access-control-allow-origin").is_none());
    }
}
