//! The auth cache: driver tokens verified locally once, then answered from memory until they expire.

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use protocol::token::{Subject, TokenError, TokenVerifier};
use protocol::wire::CloseCode;
use protocol::DriverId;
use std::collections::HashMap;

/// SHA-256 of a token: the cache key (a collision would let one token pass for another, so a
/// fast non-cryptographic hash is not good enough here).
type TokenHash = [u8; 32];

#[derive(Clone, Copy, Debug)]
struct Cached {
    driver: DriverId,
    exp_s: u64,
}

/// A verified driver token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverAuth {
    pub driver: DriverId,
    /// Unix seconds the token stops being valid.
    pub exp_s: u64,
}

/// Verifies driver tokens with [`TokenVerifier`] and remembers the good ones, so neither a
/// fix nor a connection costs a signature check or a round trip once its token is known.
#[derive(Debug)]
pub struct AuthCache {
    verifier: TokenVerifier,
    entries: Mutex<HashMap<TokenHash, Cached>>,
    capacity: usize,
    hits: Counter,
    misses: Counter,
}

impl AuthCache {
    /// `hits` / `misses` are the counters to bump (see [`crate::metrics::EdgeMetrics`]).
    pub fn new(verifier: TokenVerifier, capacity: usize, hits: Counter, misses: Counter) -> Self {
        Self {
            verifier,
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            hits,
            misses,
        }
    }

    /// Tokens currently cached.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a driver token at `now_s`. Expiry is enforced on every lookup, cached or not.
    /// Refused tokens are not cached.
    pub fn verify_driver(&self, token: &str, now_s: u64) -> Result<DriverAuth, TokenError> {
        let key = hash(token);
        {
            let mut entries = self.entries.lock();
            if let Some(c) = entries.get(&key).copied() {
                self.hits.inc();
                if c.exp_s <= now_s {
                    entries.remove(&key);
                    return Err(TokenError::Expired {
                        sub: Subject::Driver(c.driver),
                        exp_s: c.exp_s,
                        now_s,
                    });
                }
                return Ok(DriverAuth {
                    driver: c.driver,
                    exp_s: c.exp_s,
                });
            }
        }
        self.misses.inc();
        let (driver, claims) = self.verifier.verify_driver(token, now_s)?;
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, c| c.exp_s > now_s);
            if entries.len() >= self.capacity {
                // Still full of live tokens: drop an arbitrary one; it is re-verified on next use.
                if let Some(k) = entries.keys().next().copied() {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            key,
            Cached {
                driver,
                exp_s: claims.exp_s,
            },
        );
        Ok(DriverAuth {
            driver,
            exp_s: claims.exp_s,
        })
    }
}

/// The QUIC close code for a refused token.
pub fn close_code(err: &TokenError) -> CloseCode {
    match err {
        TokenError::Expired { .. } => CloseCode::TokenExpired,
        TokenError::WrongSubject(_) => CloseCode::WrongTokenKind,
        _ => CloseCode::BadToken,
    }
}

/// The `edge_sessions_rejected_total` label for a refused token.
pub fn reject_label(err: &TokenError) -> &'static str {
    match err {
        TokenError::Expired { .. } => "expired",
        TokenError::WrongSubject(_) => "wrong_kind",
        _ => "bad_token",
    }
}

fn hash(token: &str) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::token::TokenSigner;

    fn setup(capacity: usize) -> (TokenSigner, AuthCache) {
        let signer = TokenSigner::from_pkcs8(1, &TokenSigner::generate_pkcs8().expect("keygen"))
            .expect("signer");
        let verifier = TokenVerifier::new().with_key(1, signer.public_key());
        (
            signer,
            AuthCache::new(verifier, capacity, Counter::default(), Counter::default()),
        )
    }

    #[test]
    fn second_lookup_of_a_token_is_a_cache_hit() {
        let (s, cache) = setup(10);
        let t = s.sign(Subject::Driver(DriverId(42)), 1000, 60);
        assert_eq!(
            cache.verify_driver(&t, 1001).map(|a| a.driver),
            Ok(DriverId(42))
        );
        assert_eq!(
            cache.verify_driver(&t, 1002).map(|a| a.driver),
            Ok(DriverId(42))
        );
        assert_eq!((cache.hits.get(), cache.misses.get()), (1, 1));
    }

    #[test]
    fn a_cached_token_still_expires() {
        let (s, cache) = setup(10);
        let t = s.sign(Subject::Driver(DriverId(42)), 1000, 60);
        assert!(cache.verify_driver(&t, 1001).is_ok());
        let err = cache.verify_driver(&t, 1060).expect_err("expired");
        assert_eq!(close_code(&err), CloseCode::TokenExpired);
        assert!(err.to_string().contains("driver 42"), "{err}");
        assert!(cache.is_empty());
    }

    #[test]
    fn refuses_other_token_kinds_and_forgeries_without_caching_them() {
        let (s, cache) = setup(10);
        let t = s.sign(Subject::Operator, 1000, 60);
        let err = cache.verify_driver(&t, 1001).expect_err("operator");
        assert_eq!(close_code(&err), CloseCode::WrongTokenKind);
        let err = cache
            .verify_driver("tl1.garbage", 1001)
            .expect_err("garbage");
        assert_eq!(close_code(&err), CloseCode::BadToken);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let (s, cache) = setup(3);
        for d in 0..10 {
            let t = s.sign(Subject::Driver(DriverId(d)), 1000, 60);
            assert!(cache.verify_driver(&t, 1001).is_ok());
        }
        assert_eq!(cache.len(), 3);
    }
}
