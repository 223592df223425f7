//! Hub-level multi-user safety: who is calling (an MCPHub key checked against the key
//! registry), what reaches the upstream on their behalf (their service tokens, injected by
//! per-route header templates; never the key, never a client's own `X-MCPHub-*` headers), and
//! what they may use (group-based tool filtering).
//!
//! - `key`: the key format, where requests carry one, and its digest (the registry's name).
//! - `registry`: digest → user, from the static key file or the store, cached with a bound.
//! - `user`: the user record and the registry's hash fields.
//! - `crypto`: service tokens encrypted at rest (AES-256-GCM).
//! - `policy`: a route's auth mode, required tokens, header templates and tool access.
//! - `filter`: refusing denied `tools/call`s and filtering `tools/list` answers.
//! - `cli`: `mcp-sidecar keys …`.

pub mod cli;
pub mod crypto;
pub mod filter;
pub mod key;
pub mod key_file;
pub mod policy;
pub mod registry;
pub mod user;

use crate::config::Config;
use crate::metrics::METRICS;
use crate::store::{unix_now, SessionStore};
use http::HeaderMap;
use key::{KeySource, Presented};
use policy::{AuthMode, RoutePolicy};
use registry::{Lookup, Registry};
use std::sync::Arc;
use user::{HubUser, Refused};

/// A caller whose key the registry vouched for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's SHA-256: how the peer hop names the caller to the owner pod.
    pub digest: String,
    pub user: Arc<HubUser>,
}

/// Why a request's caller is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Unknown,
    Inactive,
    Expired,
    /// The registry could not answer (store down, nothing cached).
    Unavailable,
    /// The user lacks a service token the route requires.
    MissingToken(String),
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Unavailable => 503,
            AuthError::MissingToken(_) => 403,
            _ => 401,
        }
    }

    /// Metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown",
            AuthError::Inactive => "inactive",
            AuthError::Expired => "expired",
            AuthError::Unavailable => "unavailable",
            AuthError::MissingToken(_) => "missing_token",
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => {
                "MCPHub key required: send ?key=, Authorization: Bearer or X-MCPHub-Key".into()
            }
            AuthError::Malformed => {
                "malformed MCPHub key (expected mcphub_ and 64 hex characters)".into()
            }
            AuthError::Unknown => "unknown MCPHub key".into(),
            AuthError::Inactive => "MCPHub key is inactive".into(),
            AuthError::Expired => "MCPHub key has expired".into(),
            AuthError::Unavailable => "key registry unavailable; retry shortly".into(),
            AuthError::MissingToken(t) => format!(
                "this server needs the service token {t}, which your MCPHub key does not hold"
            ),
        }
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self, realm: &str) -> Option<String> {
        match self {
            AuthError::Missing => Some(format!("Bearer realm=\"{realm}\"")),
            e if e.status() == 401 => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                e.label()
            )),
            _ => None,
        }
    }
}

/// The hub: key sources, the registry, and the realm named in challenges.
pub struct Hub {
    registry: Registry,
    sources: Vec<KeySource>,
    /// Lower-cased `auth.key_header`.
    key_header: String,
    pub realm: String,
}

impl Hub {
    pub fn new(config: &Config, store: Arc<dyn SessionStore>) -> Result<Hub, String> {
        let a = &config.auth;
        let cipher = config
            .token_encryption_key()
            .map(crypto::TokenCipher::from_hex)
            .transpose()
            .map_err(|e| format!("auth.token_encryption_key {e}"))?;
        Ok(Hub {
            registry: Registry::new(
                store,
                a.keys_file.clone(),
                a.cache_ttl,
                a.stale_if_error,
                cipher,
            )?,
            sources: a.key_sources.clone(),
            key_header: a.key_header.to_ascii_lowercase(),
            realm: a.realm.clone(),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Who a client request on the public listener comes from. `Ok(None)`: anonymous, which
    /// the route allows.
    pub async fn authenticate(
        &self,
        policy: &RoutePolicy,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Caller>, AuthError> {
        if policy.mode == AuthMode::None {
            return Ok(None);
        }
        let result = match key::presented(&self.sources, &self.key_header, headers, query) {
            Presented::None if policy.mode == AuthMode::Optional => Ok(None),
            Presented::None => Err(AuthError::Missing),
            Presented::Malformed(_) => Err(AuthError::Malformed),
            Presented::Key(k, _) => self.caller(policy, key::digest(k)).await.map(Some),
        };
        METRICS
            .auth
            .with_label_values(&[match &result {
                Ok(Some(_)) => "ok",
                Ok(None) => "anonymous",
                Err(e) => e.label(),
            }])
            .inc();
        result
    }

    /// Who a request forwarded by a peer comes from: the digest the peer verified, carried in
    /// the signed hop. Client headers are not looked at.
    pub async fn from_peer(
        &self,
        policy: &RoutePolicy,
        digest: Option<&str>,
    ) -> Result<Option<Caller>, AuthError> {
        match digest {
            _ if policy.mode == AuthMode::None => Ok(None),
            None | Some("") if policy.mode == AuthMode::Required => Err(AuthError::Missing),
            None | Some("") => Ok(None),
            Some(d) => self.caller(policy, d.to_string()).await.map(Some),
        }
    }

    async fn caller(&self, policy: &RoutePolicy, digest: String) -> Result<Caller, AuthError> {
        let user = match self.registry.lookup(&digest).await {
            Lookup::Found(u) => u,
            Lookup::Unknown => return Err(AuthError::Unknown),
            Lookup::Unavailable(e) => {
                log::warn!("key registry unavailable: {e}");
                return Err(AuthError::Unavailable);
            }
        };
        user.usable(unix_now()).map_err(|r| match r {
            Refused::Inactive => AuthError::Inactive,
            Refused::Expired => AuthError::Expired,
        })?;
        if let Some(t) = policy.missing_token(&user) {
            return Err(AuthError::MissingToken(t.to_string()));
        }
        Ok(Caller { digest, user })
    }

    /// Whether a client's request header must not reach the upstream: the injection namespace
    /// (`X-MCPHub-*`), the key header, anything a template sets, and `Authorization` on a
    /// route that reads keys (elsewhere only when it carries a hub key).
    pub fn strips(&self, policy: &RoutePolicy, name: &http::HeaderName, value: &[u8]) -> bool {
        let n = name.as_str();
        if n.starts_with("x-mcphub-") || n == self.key_header || policy.injects(n) {
            return true;
        }
        if name == http::header::AUTHORIZATION {
            return policy.mode != AuthMode::None
                || std::str::from_utf8(value).is_ok_and(|v| {
                    v.split_whitespace()
                        .nth(1)
                        .is_some_and(|k| k.starts_with(key::KEY_PREFIX))
                });
        }
        false
    }

    /// The key a request carries in its query, when that is the key the sidecar reads (a
    /// legacy SSE endpoint then carries it on, so the client's posts are authenticated too).
    pub fn query_key<'a>(
        &self,
        policy: &RoutePolicy,
        headers: &HeaderMap,
        query: Option<&'a str>,
    ) -> Option<&'a str> {
        if policy.mode == AuthMode::None {
            return None;
        }
        match key::presented(&self.sources, &self.key_header, headers, query) {
            Presented::Key(_, KeySource::Query) => query.and_then(|q| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("key="))
                    .filter(|k| key::is_well_formed(k))
            }),
            _ => None,
        }
    }

    /// The query as the upstream may see it (without hub keys); `None` when unchanged.
    pub fn upstream_query(
        &self,
        policy: &RoutePolicy,
        query: Option<&str>,
    ) -> Option<Option<String>> {
        let all = policy.mode != AuthMode::None && self.sources.contains(&KeySource::Query);
        key::query_has_key(query, all).then(|| key::strip_from_query(query.unwrap_or(""), all))
    }
}
