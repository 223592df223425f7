//! MCPHub keys on the wire: their format, where a request carries one, and how the registry
//! names them (the SHA-256 of the key; the key itself is never stored or logged).

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "mcphub_";
/// Hex characters after the prefix.
const KEY_HEX_LEN: usize = 64;
/// The query parameter Cursor-style clients put the key in (`/mcp?key=mcphub_…`).
pub const QUERY_PARAM: &str = "key";
/// How much of a key `keys list` and logs may show: `mcphub_` and 8 hex characters.
pub const SHOWN_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;

/// Where a request may carry its key; the configured order decides which wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// `?key=mcphub_…`
    Query,
    /// `Authorization: Bearer mcphub_…`
    Bearer,
    /// `X-MCPHub-Key: mcphub_…` (the header name is configurable)
    Header,
}

/// What a request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    /// Something in a key position that is not a well-formed key: refused before any lookup.
    Malformed(KeySource),
    Key(&'a str, KeySource),
}

/// Whether `s` is `mcphub_` followed by 64 hex characters.
pub fn is_well_formed(s: &str) -> bool {
    s.strip_prefix(KEY_PREFIX)
        .is_some_and(|hex| hex.len() == KEY_HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The registry's name for a key: lower-case hex SHA-256 of the whole key.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The part of a key that may be shown (`mcphub_1a2b3c4d`).
pub fn shown_prefix(key: &str) -> &str {
    &key[..SHOWN_PREFIX_LEN.min(key.len())]
}

/// A new random key (32 bytes from the OS).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The value of the first `key` query parameter, if any.
fn from_query(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == QUERY_PARAM).then_some(value)
    })
}

/// Finds the key a request presents, looking in `sources` in order. The first source that
/// holds anything decides: a malformed value there is refused, not skipped.
pub fn presented<'a>(
    sources: &[KeySource],
    header_name: &str,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Presented<'a> {
    for source in sources {
        let value = match source {
            KeySource::Query => from_query(query),
            KeySource::Bearer => headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or(""))
                .and_then(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
                }),
            KeySource::Header => headers
                .get(header_name)
                .map(|v| v.to_str().unwrap_or("").trim()),
        };
        match value {
            None => continue,
            Some(v) if is_well_formed(v) => return Presented::Key(v, *source),
            Some(_) => return Presented::Malformed(*source),
        }
    }
    Presented::None
}

/// The query without hub keys: `key=` parameters whose value looks like a hub key (or every
/// `key=` parameter when `all_keys`, on routes where the sidecar read it as one). `None` when
/// nothing is left.
pub fn strip_from_query(query: &str, all_keys: bool) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            !(name == QUERY_PARAM && (all_keys || value.starts_with(KEY_PREFIX)))
        })
        .collect();
    (!kept.is_empty() && kept.iter().any(|p| !p.is_empty())).then(|| kept.join("&"))
}

/// Whether a query carries a `key=` parameter [`strip_from_query`] would remove.
pub fn query_has_key(query: Option<&str>, all_keys: bool) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            name == QUERY_PARAM && (all_keys || value.starts_with(KEY_PREFIX))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "mcphub_e9a2d03d95400afe74274c07122169fca44e79395818a78fb18b2afbfa69ae82";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn format() {
        assert!(is_well_formed(K));
        assert!(!is_well_formed(&K[..K.len() - 1]));
        assert!(!is_well_formed(&format!("{K}0")));
        assert!(!is_well_formed(&K.replace('e', "g")));
        assert!(!is_well_formed("mcphub_user_a_key"));
        assert!(!is_well_formed(&K.replace("mcphub_", "mcphuB_")));
        let g = generate();
        assert!(is_well_formed(&g));
        assert_ne!(g, generate());
        assert_eq!(digest(K).len(), 64);
        assert_eq!(shown_prefix(K), "mcphub_e9a2d03d");
    }

    #[test]
    fn sources_in_order() {
        use KeySource::*;
        let all = [Query, Bearer, Header];
        let h = headers(&[
            ("authorization", &format!("Bearer {K}")),
            ("x-mcphub-key", "nope"),
        ]);
        let q = Some("a=1&key=mcphub_00");
        assert_eq!(
            presented(&all, "x-mcphub-key", &h, q),
            Presented::Malformed(Query)
        );
        assert_eq!(
            presented(&all, "x-mcphub-key", &h, Some("a=1")),
            Presented::Key(K, Bearer)
        );
        assert_eq!(
            presented(&[Header, Bearer], "x-mcphub-key", &h, None),
            Presented::Malformed(Header)
        );
        assert_eq!(
            presented(&[Query], "x-mcphub-key", &h, Some("x=1")),
            Presented::None
        );
        let h = headers(&[("authorization", &format!("bearer  {K} "))]);
        assert_eq!(
            presented(&all, "x-mcphub-key", &h, None),
            Presented::Key(K, Bearer)
        );
        let h = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(presented(&all, "x-mcphub-key", &h, None), Presented::None);
    }

    #[test]
    fn keys_leave_the_query() {
        let q = format!("a=1&key={K}&b=2");
        assert_eq!(strip_from_query(&q, false).as_deref(), Some("a=1&b=2"));
        assert_eq!(strip_from_query(&format!("key={K}"), false), None);
        assert_eq!(
            strip_from_query("key=other", false).as_deref(),
            Some("key=other")
        );
        assert_eq!(strip_from_query("key=other&x", true).as_deref(), Some("x"));
        assert!(query_has_key(Some(&q), false));
        assert!(!query_has_key(Some("key=other"), false));
        assert!(query_has_key(Some("key=other"), true));
        assert!(!query_has_key(None, true));
    }
}
