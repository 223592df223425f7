//! A hub user as the key registry describes it, read from a Redis hash or the static key
//! file. Tokens are held decrypted in memory only.

use super::crypto::TokenCipher;
use crate::store::unix_now;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Field names of the `mcp:hub:key:<sha256>` hash.
pub mod field {
    pub const USER_ID: &str = "user_id";
    pub const USER_NAME: &str = "user_name";
    /// `true` or `false`; revocation sets `false`.
    pub const ACTIVE: &str = "active";
    /// Unix seconds; absent or empty: never.
    pub const EXPIRES_AT: &str = "expires_at";
    /// Comma-separated.
    pub const GROUPS: &str = "groups";
    /// `mcphub_` and the key's first 8 hex characters, for `keys list` and `keys revoke`.
    pub const KEY_PREFIX: &str = "key_prefix";
    pub const CREATED_AT: &str = "created_at";
    pub const REVOKED_AT: &str = "revoked_at";
    /// `token:GITHUB_TOKEN` holds that service token (plaintext or `enc:v2:…`, see
    /// `crate::hub::crypto`).
    pub const TOKEN_PREFIX: &str = "token:";
}

/// One key's user.
#[derive(Clone, PartialEq, Eq)]
pub struct HubUser {
    pub id: String,
    pub name: String,
    pub active: bool,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    pub groups: Vec<String>,
    /// Service tokens by name, decrypted.
    pub tokens: BTreeMap<String, String>,
}

/// Debug output never shows token values.
impl std::fmt::Debug for HubUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubUser")
            .field("id", &self.id)
            .field("active", &self.active)
            .field("expires_at", &self.expires_at)
            .field("groups", &self.groups)
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a known key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Inactive,
    Expired,
}

impl HubUser {
    /// Whether the key may be used now.
    pub fn usable(&self, now: u64) -> Result<(), Refused> {
        if !self.active {
            return Err(Refused::Inactive);
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Err(Refused::Expired);
        }
        Ok(())
    }

    /// Reads the registry hash of the key whose SHA-256 is `record`. Fails (without naming
    /// values) when it is not one.
    pub fn from_hash(
        mut map: HashMap<String, String>,
        cipher: Option<&TokenCipher>,
        record: &str,
    ) -> Result<HubUser, String> {
        let id = map
            .remove(field::USER_ID)
            .filter(|s| !s.is_empty())
            .ok_or("no user_id")?;
        let mut tokens = BTreeMap::new();
        for (k, v) in &map {
            if let Some(name) = k.strip_prefix(field::TOKEN_PREFIX) {
                tokens.insert(name.to_string(), open_token(cipher, v, record, name)?);
            }
        }
        Ok(HubUser {
            name: map.remove(field::USER_NAME).unwrap_or_else(|| id.clone()),
            id,
            active: map
                .get(field::ACTIVE)
                .is_none_or(|v| v != "false" && v != "0"),
            expires_at: map
                .get(field::EXPIRES_AT)
                .filter(|v| !v.is_empty())
                .map(|v| v.parse().map_err(|_| "expires_at is not unix seconds"))
                .transpose()?,
            groups: split_groups(map.get(field::GROUPS).map_or("", |s| s.as_str())),
            tokens,
        })
    }
}

/// A stored token's plaintext, as token `name` of the record `record`. Errors name no value.
fn open_token(
    cipher: Option<&TokenCipher>,
    stored: &str,
    record: &str,
    name: &str,
) -> Result<String, String> {
    match cipher {
        Some(c) => {
            let d = c
                .decrypt(stored, record, name)
                .map_err(|e| format!("token {name}: {e}"))?;
            if d.legacy {
                super::crypto::legacy_seen(record, name);
            }
            Ok(d.plain)
        }
        None if super::crypto::is_encrypted(stored) => Err(format!(
            "token {name} is encrypted but auth.token_encryption_key is not set"
        )),
        None => Ok(stored.to_string()),
    }
}

pub fn split_groups(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

/// The static key file (`auth.keys_file`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default)]
    pub keys: Vec<KeyFileEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileEntry {
    /// `sha256sum` of the key (`mcp-sidecar keys create` prints it); the key is not stored.
    pub key_sha256: String,
    pub user_id: String,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
    /// Unix seconds or an RFC 3339 time.
    #[serde(default)]
    pub expires_at: Option<serde_yaml::Value>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl KeyFile {
    /// Parses the file's text (already `${VAR}`-expanded) into users by key digest.
    pub fn parse(
        text: &str,
        cipher: Option<&TokenCipher>,
    ) -> Result<HashMap<String, HubUser>, String> {
        // the file holds tokens: parser messages lose the values they quote
        let quiet = |e: serde_yaml::Error| crate::config::unquoted(&e.to_string());
        let mut tree: serde_yaml::Value = serde_yaml::from_str(text).map_err(quiet)?;
        crate::config::expand_tree(&mut tree, &|name| std::env::var(name).ok())
            .map_err(|e| format!("{}: {}", e.path, e.reason))?;
        let file: KeyFile = serde_yaml::from_value(tree).map_err(quiet)?;
        let mut out = HashMap::new();
        for (i, e) in file.keys.into_iter().enumerate() {
            let at = |m: &str| format!("keys[{i}]: {m}");
            let digest = e.key_sha256.trim().to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(at(
                    "key_sha256 must be 64 hex characters (the SHA-256 of the key)",
                ));
            }
            if e.user_id.is_empty() {
                return Err(at("user_id must not be empty"));
            }
            let expires_at = match &e.expires_at {
                None | Some(serde_yaml::Value::Null) => None,
                Some(serde_yaml::Value::Number(n)) => Some(
                    n.as_u64()
                        .ok_or_else(|| at("expires_at must be unix seconds"))?,
                ),
                Some(serde_yaml::Value::String(s)) => Some(
                    humantime::parse_rfc3339_weak(s)
                        .map_err(|_| at("expires_at must be unix seconds or an RFC 3339 time"))?
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                ),
                Some(_) => return Err(at("expires_at must be unix seconds or an RFC 3339 time")),
            };
            let mut tokens = BTreeMap::new();
            for (name, v) in e.tokens {
                let plain = open_token(cipher, &v, &digest, &name).map_err(|m| at(&m))?;
                tokens.insert(name, plain);
            }
            let user = HubUser {
                name: e.user_name.unwrap_or_else(|| e.user_id.clone()),
                id: e.user_id,
                active: e.active,
                expires_at,
                groups: e.groups,
                tokens,
            };
            if out.insert(digest, user).is_some() {
                return Err(at("the same key_sha256 appears twice"));
            }
        }
        Ok(out)
    }
}

/// Seconds until a user's key expires, for `keys list`.
pub fn expires_in(user: &HubUser) -> Option<i64> {
    user.expires_at.map(|t| t as i64 - unix_now() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip_and_refusals() {
        let c = TokenCipher::from_hex(&"11".repeat(32)).unwrap();
        let map: HashMap<String, String> = [
            ("user_id", "alice".to_string()),
            ("active", "true".into()),
            ("groups", "dev, ops".into()),
            ("expires_at", "100".into()),
            (
                "token:GITHUB_TOKEN",
                c.encrypt("ghp_a", "d1", "GITHUB_TOKEN"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let u = HubUser::from_hash(map.clone(), Some(&c), "d1").unwrap();
        // the same ciphertext in another key's record
        let e = HubUser::from_hash(map.clone(), Some(&c), "d2").unwrap_err();
        assert!(e.contains("GITHUB_TOKEN") && !e.contains("enc:"), "{e}");
        assert_eq!(u.tokens["GITHUB_TOKEN"], "ghp_a");
        assert_eq!(u.groups, ["dev", "ops"]);
        assert_eq!(u.name, "alice");
        assert_eq!(u.usable(99), Ok(()));
        assert_eq!(u.usable(100), Err(Refused::Expired));
        assert!(!format!("{u:?}").contains("ghp_a"));
        let e = HubUser::from_hash(map, None, "d1").unwrap_err();
        assert!(e.contains("encrypted") && !e.contains("enc:v1"), "{e}");
        let mut inactive = HashMap::new();
        inactive.insert("user_id".to_string(), "bob".to_string());
        inactive.insert("active".to_string(), "false".to_string());
        assert_eq!(
            HubUser::from_hash(inactive, None, "d1").unwrap().usable(0),
            Err(Refused::Inactive)
        );
        assert!(HubUser::from_hash(HashMap::new(), None, "d1").is_err());
    }

    #[test]
    fn key_file() {
        let text = format!(
            "keys:\n  - key_sha256: {}\n    user_id: alice\n    groups: [dev]\n    expires_at: '2030-01-01T00:00:00Z'\n    tokens: {{GITHUB_TOKEN: ghp_a}}\n  - key_sha256: {}\n    user_id: bob\n    active: false\n",
            "a".repeat(64),
            "b".repeat(64)
        );
        let users = KeyFile::parse(&text, None).unwrap();
        assert_eq!(users[&"a".repeat(64)].expires_at, Some(1_893_456_000));
        assert!(!users[&"b".repeat(64)].active);
        assert!(KeyFile::parse("keys:\n  - {key_sha256: abc, user_id: x}\n", None).is_err());
        assert!(KeyFile::parse("keys:\n  - {key_sha256: abc, user: x}\n", None).is_err());
    }

    #[test]
    fn key_file_errors_do_not_quote_tokens() {
        let text = format!(
            "keys:\n  - {{key_sha256: {}, user_id: u, tokens: {{GITHUB_TOKEN: 98765432101234}}}}\n",
            "a".repeat(64)
        );
        let e = KeyFile::parse(&text, None).unwrap_err();
        assert!(
            !e.contains("98765432101234") && e.contains("invalid type"),
            "{e}"
        );
    }

    #[test]
    fn key_file_tokens_are_bound_to_their_entry() {
        let c = TokenCipher::from_hex(&"11".repeat(32)).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let token = c.encrypt("ghp_a", &a, "GITHUB_TOKEN");
        let file = |digest: &str| {
            format!("keys:\n  - {{key_sha256: {digest}, user_id: u, tokens: {{GITHUB_TOKEN: '{token}'}}}}\n")
        };
        let users = KeyFile::parse(&file(&a), Some(&c)).unwrap();
        assert_eq!(users[&a].tokens["GITHUB_TOKEN"], "ghp_a");
        let e = KeyFile::parse(&file(&b), Some(&c)).unwrap_err();
        assert!(
            e.starts_with("keys[0]: token GITHUB_TOKEN") && !e.contains("enc:"),
            "{e}"
        );
    }
}
