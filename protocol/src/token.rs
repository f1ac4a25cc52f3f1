//! Signed bearer tokens for drivers, consumers and operators (Ed25519, verified locally).
//!
//! Format: `tl1.<claims>.<signature>`, both parts base64url without padding; the claims are
//! postcard-encoded [`Claims`] and the signature covers `tl1.<claims>`. Edges hold only public
//! keys, so a compromised PoP cannot mint tokens. `kid` selects the key, which makes rotation a
//! matter of adding the new public key everywhere before signing with it.

use crate::ids::{DeliveryId, DriverId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const PREFIX: &str = "tl1.";
/// Longest token accepted; longer input is rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 512;

/// Who a token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// A driver posting fixes.
    Driver(DriverId),
    /// A consumer watching one delivery.
    Tracking(DeliveryId),
    /// An operator of the region (all deliveries, anomalies).
    Operator,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Driver(d) => write!(f, "driver {d}"),
            Subject::Tracking(d) => write!(f, "tracking of delivery {d}"),
            Subject::Operator => write!(f, "operator"),
        }
    }
}

/// What a token asserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub kid: u32,
    pub sub: Subject,
    pub iat_s: u64,
    pub exp_s: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not in tl1 format")]
    Malformed,
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token signed with unknown key id {0}")]
    UnknownKey(u32),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired for {sub} at {exp_s} (now {now_s})")]
    Expired {
        sub: Subject,
        exp_s: u64,
        now_s: u64,
    },
    #[error("token for {0} is not valid here")]
    WrongSubject(Subject),
}

impl TokenError {
    /// Short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed | TokenError::TooLong => "malformed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::WrongSubject(_) => "wrong_subject",
        }
    }
}

/// Why a signing key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid Ed25519 signing key: {0}")]
pub struct KeyError(pub String);

/// Mints tokens. Lives with the order service (the hub plays that role in the demo).
pub struct TokenSigner {
    kid: u32,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Generates a new PKCS#8 Ed25519 key document.
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| KeyError(e.to_string()))
    }

    pub fn from_pkcs8(kid: u32, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self { kid, pair })
    }

    pub fn kid(&self) -> u32 {
        self.kid
    }

    /// The 32-byte public key verifiers need.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Signs a token for `sub`, valid from `now_s` for `ttl_s` seconds.
    pub fn sign(&self, sub: Subject, now_s: u64, ttl_s: u64) -> String {
        let claims = Claims {
            kid: self.kid,
            sub,
            iat_s: now_s,
            exp_s: now_s.saturating_add(ttl_s),
        };
        let body = B64.encode(postcard::to_stdvec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}{body}");
        let sig = B64.encode(self.pair.sign(signed.as_bytes()));
        format!("{signed}.{sig}")
    }
}

/// Verifies tokens with a set of public keys, without any network round trip.
#[derive(Clone, Debug, Default)]
pub struct TokenVerifier {
    keys: HashMap<u32, [u8; 32]>,
}

impl TokenVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_key(mut self, kid: u32, public_key: [u8; 32]) -> Self {
        self.keys.insert(kid, public_key);
        self
    }

    pub fn add_key(&mut self, kid: u32, public_key: [u8; 32]) {
        self.keys.insert(kid, public_key);
    }

    /// Checks format, key, signature and expiry; returns the claims.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (body, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let claims_bytes = B64.decode(body).map_err(|_| TokenError::Malformed)?;
        let claims: Claims =
            crate::wire::take_exact(&claims_bytes).map_err(|_| TokenError::Malformed)?;
        let key = self
            .keys
            .get(&claims.kid)
            .ok_or(TokenError::UnknownKey(claims.kid))?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        let signed_len = PREFIX.len() + body.len();
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&token.as_bytes()[..signed_len], &sig)
            .map_err(|_| TokenError::BadSignature)?;
        if claims.exp_s <= now_s {
            return Err(TokenError::Expired {
                sub: claims.sub,
                exp_s: claims.exp_s,
                now_s,
            });
        }
        Ok(claims)
    }

    /// Verifies and requires a driver token.
    pub fn verify_driver(&self, token: &str, now_s: u64) -> Result<(DriverId, Claims), TokenError> {
        let c = self.verify(token, now_s)?;
        match c.sub {
            Subject::Driver(id) => Ok((id, c)),
            other => Err(TokenError::WrongSubject(other)),
        }
    }

    /// Verifies a token that may watch `delivery` (its tracking token, or an operator's).
    pub fn verify_tracking(
        &self,
        token: &str,
        delivery: DeliveryId,
        now_s: u64,
    ) -> Result<Claims, TokenError> {
        let c = self.verify(token, now_s)?;
        match c.sub {
            Subject::Tracking(d) if d == delivery => Ok(c),
            Subject::Operator => Ok(c),
            other => Err(TokenError::WrongSubject(other)),
        }
    }
}

/// Encodes a public key for config files and the `keygen` command.
pub fn encode_public_key(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// Parses a public key written by [`encode_public_key`].
pub fn decode_public_key(s: &str) -> Result<[u8; 32], KeyError> {
    let v = B64.decode(s.trim()).map_err(|e| KeyError(e.to_string()))?;
    v.try_into()
        .map_err(|_| KeyError("public key must be 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer(kid: u32) -> TokenSigner {
        TokenSigner::from_pkcs8(kid, &TokenSigner::generate_pkcs8().expect("keygen")).expect("load")
    }

    #[test]
    fn a_signed_driver_token_verifies_until_it_expires() {
        let s = signer(3);
        let v = TokenVerifier::new().with_key(3, s.public_key());
        let t = s.sign(Subject::Driver(DriverId(42)), 1000, 60);
        assert!(t.len() < 200, "{}", t.len());
        assert_eq!(v.verify_driver(&t, 1059).map(|x| x.0), Ok(DriverId(42)));
        assert_eq!(
            v.verify(&t, 1060),
            Err(TokenError::Expired {
                sub: Subject::Driver(DriverId(42)),
                exp_s: 1060,
                now_s: 1060
            })
        );
        assert_eq!(
            v.verify(&t, 1060).expect_err("expired").to_string(),
            "token expired for driver 42 at 1060 (now 1060)"
        );
    }

    #[test]
    fn rejects_tampered_claims_foreign_keys_and_wrong_subjects() {
        let s = signer(1);
        let v = TokenVerifier::new().with_key(1, s.public_key());
        let t = s.sign(Subject::Tracking(DeliveryId(5)), 0, 100);
        // Swap the claims for another delivery's, keep the signature.
        let other = s.sign(Subject::Tracking(DeliveryId(6)), 0, 100);
        let forged = format!(
            "{}.{}",
            other.rsplit_once('.').expect("dot").0,
            t.rsplit_once('.').expect("dot").1
        );
        assert_eq!(v.verify(&forged, 1), Err(TokenError::BadSignature));
        assert!(v.verify_tracking(&t, DeliveryId(5), 1).is_ok());
        assert_eq!(
            v.verify_tracking(&t, DeliveryId(6), 1),
            Err(TokenError::WrongSubject(Subject::Tracking(DeliveryId(5))))
        );
        assert!(matches!(
            v.verify_driver(&t, 1),
            Err(TokenError::WrongSubject(_))
        ));
        let stranger = signer(1).sign(Subject::Tracking(DeliveryId(5)), 0, 100);
        assert_eq!(v.verify(&stranger, 1), Err(TokenError::BadSignature));
        let unknown = signer(9).sign(Subject::Operator, 0, 100);
        assert_eq!(v.verify(&unknown, 1), Err(TokenError::UnknownKey(9)));
    }

    #[test]
    fn operator_tokens_may_watch_any_delivery() {
        let s = signer(1);
        let v = TokenVerifier::new().with_key(1, s.public_key());
        assert!(v
            .verify_tracking(&s.sign(Subject::Operator, 0, 10), DeliveryId(77), 1)
            .is_ok());
    }

    #[test]
    fn public_keys_round_trip_through_text() {
        let k = signer(1).public_key();
        assert_eq!(
            decode_public_key(&encode_public_key(&k)).expect("decode"),
            k
        );
        assert!(decode_public_key("abc").is_err());
    }

    proptest! {
        #[test]
        fn verifying_arbitrary_strings_never_panics(s in ".{0,600}") {
            let v = TokenVerifier::new().with_key(1, [7u8; 32]);
            let _ = v.verify(&s, 0);
            let _ = v.verify(&format!("tl1.{s}"), 0);
        }
    }
}
