//! Service tokens at rest: AES-256-GCM under `auth.token_encryption_key` (32 bytes, as 64 hex
//! characters or base64).
//!
//! A stored value is `enc:v2:<nonce hex>:<ciphertext hex>`. Its associated data is the key
//! record's identity (the SHA-256 of the MCPHub key) and the token's name, so a ciphertext
//! copied to another user's record, or to another token name, does not decrypt.
//!
//! `enc:v1:` values (written before v2, without associated data) are still read, so an upgrade
//! keeps every user's tokens working; the sidecar warns when it meets one, and
//! `mcp-sidecar keys reencrypt` rewrites them as v2. Values without a prefix are plaintext (a
//! registry written before encryption was turned on keeps working).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use log::warn;
use std::sync::atomic::{AtomicBool, Ordering};

const V1: &str = "enc:v1:";
const V2: &str = "enc:v2:";

/// Encrypts and decrypts service tokens.
#[derive(Clone)]
pub struct TokenCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCipher(..)")
    }
}

/// Where a token is stored: the record (the key's SHA-256) and the token's name.
fn associated_data(record: &str, name: &str) -> Vec<u8> {
    format!("mcp-sidecar-token-v2\n{record}\n{name}").into_bytes()
}

/// The plaintext of a stored value, and whether it was in the unbound v1 format.
#[derive(Debug, PartialEq, Eq)]
pub struct Decrypted {
    pub plain: String,
    pub legacy: bool,
}

impl TokenCipher {
    /// From 32 bytes as 64 hex characters (`openssl rand -hex 32`) or base64
    /// (`openssl rand -base64 32`).
    pub fn from_hex(key: &str) -> Result<TokenCipher, String> {
        use base64::Engine;
        let key = key.trim();
        let bytes = hex::decode(key)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(key).ok())
            .filter(|b| b.len() == 32)
            .ok_or("must be 32 bytes as 64 hex characters or base64 (openssl rand -hex 32)")?;
        Ok(TokenCipher {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// The stored form of token `name` of the key record `record` (the key's SHA-256).
    pub fn encrypt(&self, plaintext: &str, record: &str, name: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(record, name);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a short token cannot fail");
        format!("{V2}{}:{}", hex::encode(nonce), hex::encode(ct))
    }

    /// The plaintext of token `name` stored in record `record`. Errors never include the value.
    pub fn decrypt(
        &self,
        stored: &str,
        record: &str,
        name: &str,
    ) -> Result<Decrypted, &'static str> {
        let (rest, aad, legacy) = if let Some(rest) = stored.strip_prefix(V2) {
            (rest, associated_data(record, name), false)
        } else if let Some(rest) = stored.strip_prefix(V1) {
            (rest, Vec::new(), true)
        } else {
            return Ok(Decrypted {
                plain: stored.to_string(),
                legacy: false,
            });
        };
        let (nonce, ct) = rest.split_once(':').ok_or("malformed encrypted token")?;
        let nonce = hex::decode(nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or("malformed encrypted token")?;
        let ct = hex::decode(ct).map_err(|_| "malformed encrypted token")?;
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad: &aad })
            .map_err(|_| match legacy {
                true => "encrypted token does not decrypt with auth.token_encryption_key",
                false => "encrypted token does not decrypt with auth.token_encryption_key for this key record and token name (was it copied from another?)",
            })?;
        Ok(Decrypted {
            plain: String::from_utf8(plain).map_err(|_| "decrypted token is not UTF-8")?,
            legacy,
        })
    }
}

/// Whether a stored value is encrypted (in any format).
pub fn is_encrypted(stored: &str) -> bool {
    stored.starts_with(V1) || stored.starts_with(V2)
}

/// Whether a stored value should be rewritten as v2: plaintext or v1.
pub fn needs_reencryption(stored: &str) -> bool {
    !stored.starts_with(V2)
}

static LEGACY_SEEN: AtomicBool = AtomicBool::new(false);

/// Says, once per process, that a v1 token was read (each lookup would repeat it every
/// `auth.cache_ttl`).
pub fn legacy_seen(record: &str, name: &str) {
    if !LEGACY_SEEN.swap(true, Ordering::Relaxed) {
        warn!(
            "hub key record {}…: token {name} is stored as enc:v1, which is not bound to its key record (further v1 tokens are not logged); rewrite them as enc:v2 with `mcp-sidecar keys reencrypt`",
            &record[..12.min(record.len())]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "aa11";
    const BOB: &str = "bb22";

    fn cipher() -> TokenCipher {
        TokenCipher::from_hex(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn round_trip_and_tamper() {
        let c = cipher();
        let e = c.encrypt("ghp_secret", ALICE, "GITHUB_TOKEN");
        assert!(is_encrypted(&e) && e.starts_with("enc:v2:"));
        assert!(!e.contains("ghp_secret"));
        assert_ne!(
            e,
            c.encrypt("ghp_secret", ALICE, "GITHUB_TOKEN"),
            "fresh nonce each time"
        );
        fn plain(d: Result<Decrypted, &'static str>) -> Result<String, &'static str> {
            d.map(|d| d.plain)
        }
        assert_eq!(
            plain(c.decrypt(&e, ALICE, "GITHUB_TOKEN")).unwrap(),
            "ghp_secret"
        );
        assert_eq!(plain(c.decrypt("plain", ALICE, "X")).unwrap(), "plain");
        let mut tampered = e.clone();
        tampered.pop();
        tampered.push(if e.ends_with('0') { '1' } else { '0' });
        assert!(c.decrypt(&tampered, ALICE, "GITHUB_TOKEN").is_err());
        let other = TokenCipher::from_hex(&"cd".repeat(32)).unwrap();
        assert!(other.decrypt(&e, ALICE, "GITHUB_TOKEN").is_err());
        assert!(TokenCipher::from_hex("abcd").is_err());
        let b64 = TokenCipher::from_hex("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap();
        assert_eq!(
            plain(b64.decrypt(&e, ALICE, "GITHUB_TOKEN")).unwrap(),
            "ghp_secret",
            "the same 32 bytes in base64"
        );
        assert!(TokenCipher::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_ciphertext_is_bound_to_its_record_and_token_name() {
        let c = cipher();
        let e = c.encrypt("ghp_alice", ALICE, "GITHUB_TOKEN");
        for (record, name) in [(BOB, "GITHUB_TOKEN"), (ALICE, "JIRA_TOKEN")] {
            let err = c.decrypt(&e, record, name).unwrap_err();
            assert!(err.contains("copied") && !err.contains("ghp"), "{err}");
        }
    }

    #[test]
    fn v1_values_are_still_read_and_marked_legacy() {
        let c = cipher();
        // a v1 value as the previous release wrote it: no associated data
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = c.cipher.encrypt(&nonce, b"ghp_old".as_ref()).unwrap();
        let v1 = format!("{V1}{}:{}", hex::encode(nonce), hex::encode(ct));
        assert!(is_encrypted(&v1) && needs_reencryption(&v1));
        assert_eq!(
            c.decrypt(&v1, ALICE, "GITHUB_TOKEN"),
            Ok(Decrypted {
                plain: "ghp_old".into(),
                legacy: true
            })
        );
        let v2 = c.encrypt("ghp_new", ALICE, "GITHUB_TOKEN");
        assert!(!needs_reencryption(&v2));
        assert!(needs_reencryption("plaintext"));
        assert!(!c.decrypt(&v2, ALICE, "GITHUB_TOKEN").unwrap().legacy);
    }
}
