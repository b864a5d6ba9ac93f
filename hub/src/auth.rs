//! Optional authentication: HS256 JSON Web Tokens.
//!
//! A token names the MemoriesDB user (`sub`, a uuid that exists in the `users` table), when it
//! expires (`exp`, required) and which channels it may read (subscribe to) and write (publish
//! to, or send chat messages on), as glob patterns:
//!
//! ```json
//! {"sub": "0190...", "exp": 1767225600,
//!  "channels": {"read": ["chat_updates_*", "updates"], "write": ["chat_updates_*"]}}
//! ```
//!
//! Only HS256 is accepted (the header's `alg` must say so: no `none`, no algorithm confusion).
//! The signature is checked in constant time before anything in the payload is trusted.

use crate::channel::glob_matches;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Longest token accepted (bytes); bounds the work an attacker can make us do.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a verified token allows.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user: Uuid,
    pub expires_at: SystemTime,
    read: Vec<String>,
    write: Vec<String>,
}

impl Grant {
    pub fn can_read(&self, channel: &str) -> bool {
        self.read.iter().any(|pattern| glob_matches(pattern, channel))
    }

    pub fn can_write(&self, channel: &str) -> bool {
        self.write.iter().any(|pattern| glob_matches(pattern, channel))
    }

    /// Time left before the token expires (zero once it has).
    pub fn remaining(&self) -> Duration {
        self.expires_at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(&'static str),
    BadSignature,
    Expired,
    NotYetValid,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => write!(f, "authentication required: pass a token (?token=... or Authorization: Bearer ...)"),
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::BadSignature => write!(f, "token signature does not verify"),
            AuthError::Expired => write!(f, "token expired"),
            AuthError::NotYetValid => write!(f, "token not valid yet (nbf)"),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    channels: ChannelClaims,
}

#[derive(Deserialize, Default)]
struct ChannelClaims {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

/// Verifies tokens with one shared secret.
pub struct Authenticator {
    secret: Vec<u8>,
}

impl Authenticator {
    pub fn new(secret: Vec<u8>) -> Authenticator {
        Authenticator { secret }
    }

    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = decode_json(header_b64).ok_or(AuthError::Malformed("bad header"))?;
        if header.alg != "HS256" {
            return Err(AuthError::Malformed("alg must be HS256"));
        }
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).map_err(|_| AuthError::BadSignature)?;
        mac.update(header_b64.as_bytes());
        mac.update(b".");
        mac.update(payload_b64.as_bytes());
        mac.verify_slice(&signature).map_err(|_| AuthError::BadSignature)?;

        let claims: Claims = decode_json(payload_b64).ok_or(AuthError::Malformed("bad claims (need sub and exp)"))?;
        let user = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::Malformed("sub must be a user uuid"))?;
        let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        if !claims.exp.is_finite() || claims.exp <= now_secs {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if nbf > now_secs {
                return Err(AuthError::NotYetValid);
            }
        }
        let expires_at = UNIX_EPOCH + Duration::from_secs_f64(claims.exp.min(1e12));
        Ok(Grant { user, expires_at, read: claims.channels.read, write: claims.channels.write })
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Sign claims as an HS256 token. The hub only verifies; this is for tests, the benchmark and
/// operators' scripts.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";
    const USER: &str = "0190abcd-0000-7000-8000-000000000001";

    fn future() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
    }

    #[test]
    fn valid_token_grants_its_patterns() {
        let token = sign_hs256(
            SECRET,
            &json!({"sub": USER, "exp": future(), "channels": {"read": ["chat_updates_*"], "write": ["updates"]}}),
        );
        let grant = Authenticator::new(SECRET.to_vec()).verify(&token).unwrap();
        assert_eq!(grant.user.to_string(), USER);
        assert!(grant.can_read("chat_updates_abc"));
        assert!(!grant.can_read("updates"));
        assert!(grant.can_write("updates"));
        assert!(!grant.can_write("chat_updates_abc"));
        assert!(grant.remaining() > Duration::from_secs(3500));
    }

    #[test]
    fn rejections() {
        let auth = Authenticator::new(SECRET.to_vec());
        let good = json!({"sub": USER, "exp": future()});
        assert_eq!(auth.verify("").unwrap_err(), AuthError::Missing);
        assert!(matches!(auth.verify("a.b").unwrap_err(), AuthError::Malformed(_)));
        assert!(matches!(auth.verify("!!.??.##").unwrap_err(), AuthError::Malformed(_)));
        assert_eq!(auth.verify(&sign_hs256(b"other", &good)).unwrap_err(), AuthError::BadSignature);
        let expired = json!({"sub": USER, "exp": 1000});
        assert_eq!(auth.verify(&sign_hs256(SECRET, &expired)).unwrap_err(), AuthError::Expired);
        let no_exp = json!({"sub": USER});
        assert!(matches!(auth.verify(&sign_hs256(SECRET, &no_exp)).unwrap_err(), AuthError::Malformed(_)));
        let bad_sub = json!({"sub": "alice", "exp": future()});
        assert!(matches!(auth.verify(&sign_hs256(SECRET, &bad_sub)).unwrap_err(), AuthError::Malformed(_)));
        let later = json!({"sub": USER, "exp": future(), "nbf": future()});
        assert_eq!(auth.verify(&sign_hs256(SECRET, &later)).unwrap_err(), AuthError::NotYetValid);
        // alg "none" with an empty signature must not pass
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(good.to_string());
        assert!(auth.verify(&format!("{header}.{payload}.")).is_err());
        // tampered payload
        let token = sign_hs256(SECRET, &good);
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(json!({"sub": USER, "exp": future() + 1}).to_string());
        parts[1] = &forged;
        assert_eq!(auth.verify(&parts.join(".")).unwrap_err(), AuthError::BadSignature);
    }
}
