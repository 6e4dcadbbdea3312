//! Credentials: argon2id password hashes, short-lived access JWTs (HS256
//! only) and opaque refresh tokens, of which the database keeps a SHA-256.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id with default parameters hashes any input")
        .to_string()
}

/// False for a wrong password and for a hash that is not argon2.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the login is unknown, so that unknown
/// users take as long as wrong passwords.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not a real password"))
}

/// 256 random bits, URL-safe.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// API keys are recognisable by their prefix, so the bearer extractor knows
/// not to parse them as JWTs.
pub const API_KEY_PREFIX: &str = "s2t_";

pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", new_refresh_token())
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    /// Always "access": a refresh token is never a JWT.
    pub typ: String,
}

const ISSUER: &str = "pg_s2t";

/// Why a bearer token was refused; the message goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired; refresh it at /auth/refresh")]
    Expired,
    #[error("the access token's signature is not valid")]
    BadSignature,
    #[error("tokens signed with {0:?} are not accepted; only HS256")]
    Algorithm(String),
    #[error("the access token is malformed")]
    Malformed,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Keys the derivation of a refresh token's successor (see
    /// [`JwtKeys::successor`]); separate from the signing key by domain.
    successor_key: Vec<u8>,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> JwtKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        let mut successor_key = Sha256::new();
        successor_key.update(b"pg_s2t refresh successor\0");
        successor_key.update(secret);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            successor_key: successor_key.finalize().to_vec(),
        }
    }

    /// The refresh token that replaces `spent`: a MAC of it under the
    /// server's secret. Deterministic on purpose, so that two tabs (or a
    /// retry after a timeout) presenting the same token within the grace
    /// window get the same successor back instead of tripping reuse
    /// detection; unguessable without the secret, and different for every
    /// token, since each chain starts from 256 random bits.
    pub fn successor(&self, spent: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.successor_key)
            .expect("HMAC accepts keys of any length");
        mac.update(spent.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    pub fn issue(&self, user: Uuid, now: i64, ttl_secs: i64) -> String {
        let claims = Claims {
            sub: user,
            iat: now,
            exp: now + ttl_secs,
            iss: ISSUER.into(),
            typ: "access".into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        // Name the algorithm in the refusal ("none" included): jsonwebtoken
        // only says it could not parse the header.
        let header = token.split('.').next().unwrap_or_default();
        let alg = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_string))
            .ok_or(TokenError::Malformed)?;
        if alg != "HS256" {
            return Err(TokenError::Algorithm(alg));
        }
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?;
        if data.claims.typ != "access" {
            return Err(TokenError::Malformed);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn a_fresh_token_verifies_and_names_its_user() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let user = Uuid::new_v4();
        let claims = keys.verify(&keys.issue(user, now(), 900)).unwrap();
        assert_eq!(claims.sub, user);
    }

    #[test]
    fn each_bad_token_gets_its_own_reason() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let other = JwtKeys::new(b"another secret of thirty-two b..");
        let user = Uuid::new_v4();
        let expired = keys.issue(user, now() - 1000, 900);
        assert_eq!(keys.verify(&expired).unwrap_err(), TokenError::Expired);
        let forged = other.issue(user, now(), 900);
        assert_eq!(keys.verify(&forged).unwrap_err(), TokenError::BadSignature);
        let body = keys.issue(user, now(), 900);
        let payload = body.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert_eq!(
            keys.verify(&none).unwrap_err(),
            TokenError::Algorithm("none".into())
        );
        assert_eq!(keys.verify("abc").unwrap_err(), TokenError::Malformed);
        assert_eq!(keys.verify("").unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn refresh_tokens_are_random_and_hash_to_32_bytes() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a).len(), 32);
    }
}
