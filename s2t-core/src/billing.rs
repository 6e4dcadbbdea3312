//! Signed billing events: `t=<unix seconds>,v1=<hex HMAC-SHA256>`, where the
//! MAC covers `"<t>.<payload>"`. Binding the time into the MAC and refusing
//! old times stops a captured event from being replayed later; the event id
//! (checked by the database) stops it being applied twice.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header must look like t=<unix seconds>,v1=<hex HMAC-SHA256>")]
    Malformed,
    #[error("the signature is {0} s away from the server's clock (more than the tolerance)")]
    Stale(i64),
    #[error("the signature does not match the payload")]
    Mismatch,
}

/// The header value for `payload` signed at `at` (what a billing provider,
/// or a test, sends).
pub fn sign(secret: &[u8], payload: &[u8], at: i64) -> String {
    format!(
        "t={at},v1={}",
        hex(&mac(secret, at, payload).finalize().into_bytes())
    )
}

/// Checks a header made by [`sign`]: well formed, within `tolerance_secs`
/// of `now`, and matching in constant time.
pub fn verify(
    secret: &[u8],
    payload: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut at = None;
    let mut given = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => at = v.parse::<i64>().ok(),
            Some(("v1", v)) => given = unhex(v),
            _ => {}
        }
    }
    let (Some(at), Some(given)) = (at, given) else {
        return Err(SignatureError::Malformed);
    };
    let skew = now.saturating_sub(at);
    if skew.abs() > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    mac(secret, at, payload)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

fn mac(secret: &[u8], at: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(format!("{at}.").as_bytes());
    m.update(payload);
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    #[test]
    fn accepts_its_own_signature() {
        let header = sign(SECRET, b"{\"a\":1}", 1000);
        assert_eq!(verify(SECRET, b"{\"a\":1}", &header, 1010, 300), Ok(()));
    }

    #[test]
    fn rejects_tampering_other_secrets_and_old_times() {
        let header = sign(SECRET, b"{\"plan\":\"FREE\"}", 1000);
        assert_eq!(
            verify(SECRET, b"{\"plan\":\"ENTERPRISE\"}", &header, 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another-secret",
                b"{\"plan\":\"FREE\"}",
                &header,
                1000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, b"{\"plan\":\"FREE\"}", &header, 1400, 300),
            Err(SignatureError::Stale(400))
        );
        // The time is inside the MAC: moving it forward breaks the match.
        let moved = header.replace("t=1000", "t=1350");
        assert_eq!(
            verify(SECRET, b"{\"plan\":\"FREE\"}", &moved, 1400, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        for h in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=0g", "t=1,v1=abc"] {
            assert_eq!(
                verify(SECRET, b"x", h, 1, 300),
                Err(SignatureError::Malformed),
                "{h}"
            );
        }
    }
}
