//! A hub user as the key registry describes it, read from a Redis hash or the static key
//! file. Tokens are held decrypted in memory only.

use super::crypto::TokenCipher;
use crate::store::unix_now;
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
pub(super) fn open_token(
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
}
