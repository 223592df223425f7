//! The signed peer hop (`peer::HopClaims`, hop format v3; the header check in `proxy::hop` is
//! private, so the claims are built here as it builds them), the body claims and trailers, and
//! the replay guard.
//!
//! Properties: never panics; `sign` gives `v3:` and 64 lowercase hex digits, deterministically;
//! `verify` checks the hop count, then the signature, then the clock: claims with their own
//! signature answer by the hop count and the clock alone
//! (`TooManyHops` over `MAX_HOPS`, `Expired` outside [time - skew, time + transit + skew], else
//! `Ok` with the signature's tag); a signature made for claims C verifies for no claims that
//! differ from C in any one field nor under another secret; another format's prefix is
//! `Version`; an arbitrary signature verifies only if it decodes to the very MAC; a body
//! matches only its own `sha256=` claim; a trailer opens only on its own body and signature;
//! the replay guard admits a tag once.
//!
//! (This target found that the parts were once joined with `\n`, so that different claims
//! could share an encoding; they are length-prefixed now, and any one changed field is refused.)
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::peer::{
    body_claim, body_matches, constant_time_eq, open_trailer, trailer, HopClaims, HopError,
    ReplayGuard, HOP_TRANSIT_SECS, MAX_HOPS,
};

#[derive(Clone, Debug, PartialEq)]
struct Claims {
    hop: u32,
    time: u64,
    fields: [String; 8],
}

impl Claims {
    fn hop(&self) -> HopClaims<'_> {
        let f = &self.fields;
        HopClaims {
            hop: self.hop,
            time: self.time,
            nonce: &f[0],
            method: &f[1],
            path_and_query: &f[2],
            session_id: &f[3],
            from: &f[4],
            to: &f[5],
            user: &f[6],
            body: &f[7],
        }
    }

    fn in_window(&self, now: u64, skew: u64) -> bool {
        self.time <= now.saturating_add(skew)
            && now
                <= self
                    .time
                    .saturating_add(HOP_TRANSIT_SECS)
                    .saturating_add(skew)
    }

    fn expected(&self, now: u64, skew: u64) -> Result<(), HopError> {
        if self.hop > MAX_HOPS {
            Err(HopError::TooManyHops)
        } else if !self.in_window(now, skew) {
            Err(HopError::Expired)
        } else {
            Ok(())
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

fn text(u: &mut Unstructured) -> Result<String> {
    let s: &str = u.arbitrary()?;
    Ok(s.chars().take(64).collect())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let secret: Vec<u8> = {
        let n = u.int_in_range(1..=80)?;
        u.bytes(n)?.to_vec()
    };
    let now: u64 = u.arbitrary()?;
    let skew: u64 = u.int_in_range(0..=300)?;
    let mut fields: [String; 8] = Default::default();
    for f in &mut fields {
        *f = text(u)?;
    }
    let claims = Claims {
        hop: if u.arbitrary()? {
            u.int_in_range(0..=2)?
        } else {
            u.arbitrary()?
        },
        time: if u.arbitrary()? {
            now.wrapping_add(u.int_in_range(0..=700)?).wrapping_sub(350)
        } else {
            u.arbitrary()?
        },
        fields,
    };
    let sig = claims.hop().sign(&secret);
    let hex = sig.strip_prefix("v3:").expect("a v3 signature");
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{sig}"
    );
    assert_eq!(
        claims.hop().sign(&secret),
        sig,
        "signing is not deterministic"
    );

    let expected = claims.expected(now, skew);
    let verdict = claims.hop().verify(&secret, &sig, now, skew);
    assert_eq!(verdict.map(drop), expected);
    if let Ok(tag) = verdict {
        assert_eq!(to_hex(&tag), hex);
    }
    assert_eq!(
        claims
            .hop()
            .verify(&secret, &format!("v3:{}", hex.to_uppercase()), now, skew)
            .map(drop),
        expected,
        "the same MAC in upper case"
    );
    assert_eq!(
        claims
            .hop()
            .verify(&secret, &format!("v2:{hex}"), now, skew),
        Err(HopError::Version)
    );

    // one field changed: refused (checked where the hop and the clock would let it through)
    let mut other = claims.clone();
    let which = u.int_in_range(0..=10)?;
    match which {
        0 => other.hop = u.int_in_range(0..=MAX_HOPS)?,
        1 => other.time = now.wrapping_add(u.int_in_range(0..=60)?).wrapping_sub(30),
        2..=9 => other.fields[which - 2] = text(u)?,
        _ => {
            // another secret of the same length (HMAC pads short keys with zeros, so a key and
            // the same key with zeros appended are one key by design)
            let mut s2 = secret.clone();
            let i = u.choose_index(s2.len())?;
            s2[i] ^= u.int_in_range(1..=255)?;
            if other.expected(now, skew).is_ok() {
                assert_eq!(
                    other.hop().verify(&s2, &sig, now, skew).map(drop),
                    Err(HopError::BadSignature),
                    "a signature verified under another secret"
                );
            }
            return Ok(());
        }
    }
    // the signature is checked before the clock: different claims are refused as such,
    // whatever their time
    let verdict = other.hop().verify(&secret, &sig, now, skew).map(drop);
    if other.hop > MAX_HOPS {
        assert_eq!(verdict, Err(HopError::TooManyHops));
    } else if other == claims {
        assert_eq!(verdict, other.expected(now, skew));
    } else {
        assert_eq!(
            verdict,
            Err(HopError::BadSignature),
            "claims {claims:?} signed, {other:?} verified"
        );
    }

    // an arbitrary signature verifies only as the real MAC
    let forged = text(u)?;
    if claims.hop().verify(&secret, &forged, now, skew).is_ok() {
        let forged_hex = forged.strip_prefix("v3:").unwrap_or_default();
        assert_eq!(unhex(forged_hex), unhex(hex), "forged {forged:?} verified");
    }

    // bodies: a claim names one body; a trailer opens on its own body and signature only
    let body: &[u8] = u.arbitrary()?;
    let other_body: &[u8] = u.arbitrary()?;
    assert!(body_matches(&body_claim(body), body));
    assert_eq!(
        body_matches(&body_claim(body), other_body),
        body == other_body
    );
    let tag = claims.hop().tag(&secret);
    let mut sealed = body.to_vec();
    sealed.extend_from_slice(&trailer(&secret, &tag, body));
    assert_eq!(open_trailer(&secret, &tag, &sealed), Ok(body));
    let mut tampered = sealed.clone();
    let i = u.choose_index(tampered.len())?;
    tampered[i] ^= u.int_in_range(1..=255)?;
    assert_eq!(
        open_trailer(&secret, &tag, &tampered),
        Err(HopError::BodyDigest)
    );
    let unsealed: &[u8] = u.arbitrary()?;
    if let Ok(opened) = open_trailer(&secret, &tag, unsealed) {
        assert_eq!(&unsealed[..opened.len()], opened);
        assert_eq!(trailer(&secret, &tag, opened)[..], unsealed[opened.len()..]);
    }

    // the replay guard: once, then refused while the hop lives
    let guard = ReplayGuard::new(u.int_in_range(1..=4)?);
    if claims.in_window(now, skew) && guard.admit(tag, claims.time, skew, now).is_ok() {
        assert_eq!(
            guard.admit(tag, claims.time, skew, now),
            Err(HopError::Replayed)
        );
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
