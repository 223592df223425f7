//! The static key file (`auth.keys_file`): users by key digest, read before the store's
//! registry (`registry.rs`). Values may use `${VAR}` as in the configuration file; parser
//! messages never quote the file's values, which include tokens.

use super::crypto::TokenCipher;
use super::user::{open_token, HubUser};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

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

#[cfg(test)]
mod tests {
    use super::*;

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
