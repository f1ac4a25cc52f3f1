//! Compact JWTs signed with ring: ES256 provider tokens for APNs, RS256 assertions for the
//! Google OAuth2 service-account flow, and the sans-IO caches that decide when to renew them.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;

use crate::error::{PushError, SetupError};

/// APNs provider tokens are renewed after this many seconds (Apple: refresh no more than
/// once every 20 minutes and no less than once an hour).
pub const APNS_TOKEN_REFRESH_S: u64 = 50 * 60;
/// Lifetime requested for the OAuth2 assertion (`exp - iat`, Google's maximum).
pub const OAUTH_ASSERTION_LIFETIME_S: u64 = 3600;
/// An access token is renewed this many seconds before it expires.
pub const ACCESS_TOKEN_MARGIN_S: u64 = 60;
/// OAuth2 scope for FCM HTTP v1.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Reads the PKCS#8 DER of the first private key in a PEM string; `source` names it in errors.
fn pkcs8_der(pem: &str, source: &Path) -> Result<Vec<u8>, SetupError> {
    let key =
        certs::parse_key_pem(pem, &source.display().to_string()).map_err(|e| SetupError::Key {
            path: source.to_path_buf(),
            reason: e.to_string(),
        })?;
    match key {
        PrivateKeyDer::Pkcs8(der) => Ok(der.secret_pkcs8_der().to_vec()),
        _ => Err(SetupError::Key {
            path: source.to_path_buf(),
            reason: "not a PKCS#8 key (expected -----BEGIN PRIVATE KEY-----)".to_string(),
        }),
    }
}

/// Signs APNs provider tokens: ES256 with the `.p8` auth key.
pub struct Es256Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    team_id: String,
}

impl std::fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Es256Signer")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl Es256Signer {
    /// Parses a PEM PKCS#8 P-256 key (the `.p8` file's text); `source` names it in errors.
    pub fn from_pem(
        pem: &str,
        source: &Path,
        key_id: &str,
        team_id: &str,
    ) -> Result<Self, SetupError> {
        let der = pkcs8_der(pem, source)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(
            |e| SetupError::Key {
                path: source.to_path_buf(),
                reason: format!(
                    "not a usable P-256 PKCS#8 key ({e}); the key must include its public key"
                ),
            },
        )?;
        Ok(Self {
            key,
            rng,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
        })
    }

    /// A provider token issued at `iat_s`: header `{"alg":"ES256","kid"}`, claims
    /// `{"iss": team id, "iat"}`, signature `r || s` base64url.
    pub fn provider_token(&self, iat_s: u64) -> Result<String, PushError> {
        let header = json!({ "alg": "ES256", "kid": self.key_id });
        let claims = json!({ "iss": self.team_id, "iat": iat_s });
        let input = signing_input(&header, &claims);
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| PushError::Sign {
                what: "APNs provider token",
            })?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

/// When to renew the APNs provider token: sans-IO, `now` comes in.
#[derive(Debug, Default)]
pub struct ProviderTokenCache {
    current: Option<(u64, String)>,
}

impl ProviderTokenCache {
    /// The token to use at `now_s`: the cached one while it is younger than
    /// [`APNS_TOKEN_REFRESH_S`], else a new one from `signer`.
    pub fn token(&mut self, now_s: u64, signer: &Es256Signer) -> Result<String, PushError> {
        if let Some((iat, token)) = &self.current {
            // A clock that went backwards also renews the token.
            if now_s >= *iat && now_s - iat < APNS_TOKEN_REFRESH_S {
                return Ok(token.clone());
            }
        }
        let token = signer.provider_token(now_s)?;
        self.current = Some((now_s, token.clone()));
        Ok(token)
    }

    /// Forgets the cached token (after APNs answered `ExpiredProviderToken`).
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    /// The `iat` of the cached token, if any.
    pub fn issued_at(&self) -> Option<u64> {
        self.current.as_ref().map(|(iat, _)| *iat)
    }
}

/// Signs OAuth2 JWT-bearer assertions with a service account's RSA key (RS256).
pub struct Rs256Signer {
    key: RsaKeyPair,
    rng: SystemRandom,
    client_email: String,
}

impl std::fmt::Debug for Rs256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rs256Signer")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl Rs256Signer {
    /// Parses a PEM PKCS#8 RSA key (a service account's `private_key`); `source` names it.
    pub fn from_pem(pem: &str, source: &Path, client_email: &str) -> Result<Self, SetupError> {
        let der = pkcs8_der(pem, source)?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| SetupError::Key {
            path: source.to_path_buf(),
            reason: format!("not a usable RSA PKCS#8 key ({e})"),
        })?;
        Ok(Self {
            key,
            rng: SystemRandom::new(),
            client_email: client_email.to_string(),
        })
    }

    /// The assertion for `aud` (the token URI) issued at `iat_s`, valid for an hour.
    pub fn assertion(&self, aud: &str, iat_s: u64) -> Result<String, PushError> {
        let header = json!({ "alg": "RS256", "typ": "JWT" });
        let claims = json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": aud,
            "iat": iat_s,
            "exp": iat_s + OAUTH_ASSERTION_LIFETIME_S,
        });
        let input = signing_input(&header, &claims);
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut sig)
            .map_err(|_| PushError::Sign {
                what: "OAuth2 assertion",
            })?;
        Ok(format!("{input}.{}", b64(&sig)))
    }
}

/// The cached OAuth2 access token: sans-IO, `now` comes in.
#[derive(Debug, Default)]
pub struct AccessTokenCache {
    current: Option<(String, u64)>,
}

impl AccessTokenCache {
    /// The cached token if it is still good at `now_s` for at least
    /// [`ACCESS_TOKEN_MARGIN_S`] more seconds.
    pub fn valid(&self, now_s: u64) -> Option<&str> {
        match &self.current {
            Some((token, expires_at)) if now_s + ACCESS_TOKEN_MARGIN_S < *expires_at => {
                Some(token.as_str())
            }
            _ => None,
        }
    }

    /// Stores a token fetched at `now_s` that lives `expires_in_s` seconds.
    pub fn store(&mut self, token: String, now_s: u64, expires_in_s: u64) {
        self.current = Some((token, now_s.saturating_add(expires_in_s)));
    }

    /// Forgets the token (after FCM answered 401).
    pub fn invalidate(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn signer() -> (Es256Signer, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let s = Es256Signer::from_pem(&pem, Path::new("test.p8"), "KEY1234567", "TEAM123456")
            .expect("key");
        let public = s.key.public_key().as_ref().to_vec();
        (s, public)
    }

    #[test]
    fn apple_shaped_p8_with_curve_parameters_is_accepted() {
        // Apple's AuthKey_*.p8 files carry the optional [0] curve parameters and the [1]
        // public key; ring's generated PKCS#8 has only the latter. Rebuild Apple's shape.
        let rng = SystemRandom::new();
        let ring_der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let d = ring_der.as_ref();
        assert_eq!(d.len(), 138, "ring's P-256 PKCS#8 layout");
        let mut apple = vec![0x30, 0x81, 0x93, 0x02, 0x01, 0x00];
        apple.extend_from_slice(&d[6..27]); // AlgorithmIdentifier
        apple.extend_from_slice(&[0x04, 0x79, 0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
        apple.extend_from_slice(&d[36..68]); // private scalar
        apple.extend_from_slice(&[
            0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]);
        apple.extend_from_slice(&d[68..]); // [1] public key
        let b64 = base64::engine::general_purpose::STANDARD.encode(&apple);
        assert!(
            b64.starts_with("MIGTAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHkwdwIBAQQg"),
            "same prefix as every Apple .p8: {b64}"
        );
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let signer =
            Es256Signer::from_pem(&pem, Path::new("AuthKey.p8"), "KEY1234567", "TEAM123456")
                .expect("Apple-shaped key loads");
        signer.provider_token(1).expect("signs");
    }

    #[test]
    fn a_p8_without_its_public_key_is_refused_with_a_clear_error() {
        // PKCS#8 of a P-256 key whose ECPrivateKey omits the optional public key.
        let rng = SystemRandom::new();
        let ring_der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let d = ring_der.as_ref();
        let mut der = vec![0x30, 0x41, 0x02, 0x01, 0x00];
        der.extend_from_slice(&d[6..27]);
        der.extend_from_slice(&[0x04, 0x27, 0x30, 0x25, 0x02, 0x01, 0x01, 0x04, 0x20]);
        der.extend_from_slice(&d[36..68]);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let err = Es256Signer::from_pem(&pem, Path::new("nopub.p8"), "KEY1234567", "TEAM123456")
            .expect_err("ring needs the public key");
        let text = err.to_string();
        assert!(
            text.contains("nopub.p8") && text.contains("must include its public key"),
            "{text}"
        );
    }

    #[test]
    fn provider_token_is_reused_for_fifty_minutes_then_renewed() {
        let (s, _) = signer();
        let mut cache = ProviderTokenCache::default();
        let t0 = cache.token(1_000_000, &s).expect("sign");
        assert_eq!(
            cache
                .token(1_000_000 + APNS_TOKEN_REFRESH_S - 1, &s)
                .expect("sign"),
            t0
        );
        let t1 = cache
            .token(1_000_000 + APNS_TOKEN_REFRESH_S, &s)
            .expect("sign");
        assert_ne!(t1, t0);
        assert_eq!(cache.issued_at(), Some(1_000_000 + APNS_TOKEN_REFRESH_S));
    }

    #[test]
    fn provider_token_is_renewed_when_the_clock_goes_backwards_or_after_invalidate() {
        let (s, _) = signer();
        let mut cache = ProviderTokenCache::default();
        cache.token(2_000, &s).expect("sign");
        cache.token(1_000, &s).expect("sign");
        assert_eq!(cache.issued_at(), Some(1_000));
        cache.invalidate();
        assert_eq!(cache.issued_at(), None);
    }

    #[test]
    fn provider_token_signature_verifies_with_the_public_key() {
        let (s, public) = signer();
        let token = s.provider_token(42).expect("sign");
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
        assert_eq!(sig.len(), 64, "raw r||s");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(input.as_bytes(), &sig)
            .expect("valid signature");
    }

    #[test]
    fn access_token_expires_a_minute_early() {
        let mut cache = AccessTokenCache::default();
        assert_eq!(cache.valid(0), None);
        cache.store("tok".into(), 1000, 3600);
        assert_eq!(
            cache.valid(1000 + 3600 - ACCESS_TOKEN_MARGIN_S - 1),
            Some("tok")
        );
        assert_eq!(cache.valid(1000 + 3600 - ACCESS_TOKEN_MARGIN_S), None);
        cache.store("tok".into(), 1000, 3600);
        cache.invalidate();
        assert_eq!(cache.valid(1000), None);
    }
}
