//! The signed peer hop (`peer::HopClaims`; the header check in `proxy::hop` is private, so
//! the claims are built here as it builds them).
//!
//! Properties: never panics; `sign` gives 64 lowercase hex digits; `verify` of claims with
//! their own signature answers by the hop count and the clock alone (`TooManyHops` over
//! `MAX_HOPS`, `Stale` past 30 s of skew, else `Ok`); a signature made for claims C verifies
//! for no claims that differ from C in any one field (hop, time, method, path and query,
//! session, from, user) nor under another secret; an arbitrary signature string verifies only
//! if it decodes to the very MAC `sign` makes.
//!
//! Known and reported: the signed parts are joined with `\n`, so claims whose fields contain
//! `\n` can share an encoding with different claims (path `/m\nx` + session `` and path `/m`
//! + session `x\n`...). HTTP header values and request targets cannot carry `\n`, so the
//! target checks the property for newline-free fields only (what reaches `verify` from the
//! wire) and, for the rest, that a collision really is an encoding collision.
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::peer::{constant_time_eq, HopClaims, HopError, MAX_HOPS};

#[derive(Clone, Debug, PartialEq)]
struct Claims {
    hop: u32,
    time: u64,
    method: String,
    path: String,
    session: String,
    from: String,
    user: String,
}

impl Claims {
    fn hop(&self) -> HopClaims<'_> {
        HopClaims {
            hop: self.hop,
            time: self.time,
            method: &self.method,
            path_and_query: &self.path,
            session_id: &self.session,
            from: &self.from,
            user: &self.user,
        }
    }

    /// What the MAC is computed over.
    fn encoding(&self) -> String {
        format!(
            "mcp-sidecar-hop-v2\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.hop, self.time, self.method, self.path, self.session, self.from, self.user
        )
    }

    fn has_newline(&self) -> bool {
        [
            &self.method,
            &self.path,
            &self.session,
            &self.from,
            &self.user,
        ]
        .iter()
        .any(|s| s.contains('\n'))
    }
}

fn text(u: &mut Unstructured) -> Result<String> {
    let s: &str = u.arbitrary()?;
    Ok(s.chars().take(64).collect())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn run(u: &mut Unstructured) -> Result<()> {
    let secret: Vec<u8> = {
        let n = u.int_in_range(1..=80)?;
        u.bytes(n)?.to_vec()
    };
    let now: u64 = u.arbitrary()?;
    let claims = Claims {
        hop: if u.arbitrary()? {
            u.int_in_range(0..=2)?
        } else {
            u.arbitrary()?
        },
        time: if u.arbitrary()? {
            now.wrapping_add(u.int_in_range(0..=70)?).wrapping_sub(35)
        } else {
            u.arbitrary()?
        },
        method: text(u)?,
        path: text(u)?,
        session: text(u)?,
        from: text(u)?,
        user: text(u)?,
    };
    let sig = claims.hop().sign(&secret);
    assert_eq!(sig.len(), 64);
    assert!(
        sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{sig}"
    );
    assert_eq!(
        claims.hop().sign(&secret),
        sig,
        "signing is not deterministic"
    );

    let expected = if claims.hop > MAX_HOPS {
        Err(HopError::TooManyHops)
    } else if now.abs_diff(claims.time) > 30 {
        Err(HopError::Stale)
    } else {
        Ok(())
    };
    assert_eq!(claims.hop().verify(&secret, &sig, now), expected);
    assert_eq!(
        claims.hop().verify(&secret, &sig.to_uppercase(), now),
        expected,
        "the same MAC in upper case"
    );

    // one field changed: refused (checked where the hop and the clock would let it through)
    let mut other = claims.clone();
    match u.int_in_range(0..=7)? {
        0 => other.hop = u.int_in_range(0..=MAX_HOPS)?,
        1 => other.time = now.wrapping_add(u.int_in_range(0..=60)?).wrapping_sub(30),
        2 => other.method = text(u)?,
        3 => other.path = text(u)?,
        4 => other.session = text(u)?,
        5 => other.from = text(u)?,
        6 => other.user = text(u)?,
        _ => {
            // another secret of the same length: HMAC pads short keys with zeros, so a key and
            // the same key with zeros appended are one key by design
            let mut s2 = secret.clone();
            let i = u.choose_index(s2.len())?;
            s2[i] ^= u.int_in_range(1..=255)?;
            if other.hop <= MAX_HOPS && now.abs_diff(other.time) <= 30 {
                assert_eq!(
                    other.hop().verify(&s2, &sig, now),
                    Err(HopError::BadSignature),
                    "a signature verified under another secret"
                );
            }
            return Ok(());
        }
    }
    let verdict = other.hop().verify(&secret, &sig, now);
    if other.hop > MAX_HOPS {
        assert_eq!(verdict, Err(HopError::TooManyHops));
    } else if now.abs_diff(other.time) > 30 {
        assert_eq!(verdict, Err(HopError::Stale));
    } else if other == claims {
        assert_eq!(verdict, Ok(()));
    } else if !claims.has_newline() && !other.has_newline() {
        assert_eq!(
            verdict,
            Err(HopError::BadSignature),
            "claims {claims:?} signed, {other:?} verified"
        );
    } else {
        // the known ambiguity: only an identical encoding may verify
        assert_eq!(
            verdict.is_ok(),
            other.encoding() == claims.encoding(),
            "{claims:?} / {other:?}"
        );
    }

    // an arbitrary signature verifies only as the real MAC
    let forged = text(u)?;
    if claims.hop().verify(&secret, &forged, now).is_ok() {
        assert_eq!(unhex(&forged), unhex(&sig), "forged {forged:?} verified");
    }
    let a: &[u8] = u.arbitrary()?;
    let b: &[u8] = u.arbitrary()?;
    assert_eq!(constant_time_eq(a, b), a == b);
    assert!(constant_time_eq(a, a));
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
