//! Service tokens at rest: AES-256-GCM under `auth.token_encryption_key` (32 bytes, as 64 hex
//! characters or base64). A stored value is `enc:v1:<nonce hex>:<ciphertext hex>`; values without the
//! prefix are plaintext (a registry written before encryption was turned on keeps working).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};

const PREFIX: &str = "enc:v1:";

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

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("AES-GCM encryption of a short token cannot fail");
        format!("{PREFIX}{}:{}", hex::encode(nonce), hex::encode(ct))
    }

    /// The plaintext of a stored value. Errors never include the value.
    pub fn decrypt(&self, stored: &str) -> Result<String, &'static str> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (nonce, ct) = rest.split_once(':').ok_or("malformed encrypted token")?;
        let nonce = hex::decode(nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or("malformed encrypted token")?;
        let ct = hex::decode(ct).map_err(|_| "malformed encrypted token")?;
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&nonce), ct.as_ref())
            .map_err(|_| "encrypted token does not decrypt with auth.token_encryption_key")?;
        String::from_utf8(plain).map_err(|_| "decrypted token is not UTF-8")
    }
}

/// Whether a stored value is encrypted.
pub fn is_encrypted(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let c = TokenCipher::from_hex(&"ab".repeat(32)).unwrap();
        let e = c.encrypt("ghp_secret");
        assert!(is_encrypted(&e));
        assert!(!e.contains("ghp_secret"));
        assert_ne!(e, c.encrypt("ghp_secret"), "fresh nonce each time");
        assert_eq!(c.decrypt(&e).unwrap(), "ghp_secret");
        assert_eq!(c.decrypt("plain").unwrap(), "plain");
        let mut tampered = e.clone();
        tampered.pop();
        tampered.push(if e.ends_with('0') { '1' } else { '0' });
        assert!(c.decrypt(&tampered).is_err());
        let other = TokenCipher::from_hex(&"cd".repeat(32)).unwrap();
        assert!(other.decrypt(&e).is_err());
        assert!(TokenCipher::from_hex("abcd").is_err());
        let b64 = TokenCipher::from_hex("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap();
        assert_eq!(
            b64.decrypt(&e).unwrap(),
            "ghp_secret",
            "the same 32 bytes in base64"
        );
        assert!(TokenCipher::from_hex(&"zz".repeat(32)).is_err());
    }
}
