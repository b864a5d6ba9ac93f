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
//! Verification is `jsonwebtoken`'s: the algorithm is checked first, then the signature (in
//! constant time), and only then are the claims read; `exp` is required and has no leeway.

use crate::channel::glob_matches;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
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
    /// The header names another algorithm than HS256.
    Algorithm,
    BadSignature,
    Expired,
    NotYetValid,
    /// Well signed, but `sub` names no MemoriesDB user (checked by the caller, see
    /// [`crate::users`]).
    UnknownUser,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => write!(f, "authentication required: pass a token (?token=... or Authorization: Bearer ...)"),
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::Algorithm => write!(f, "token algorithm refused: alg must be HS256"),
            AuthError::BadSignature => write!(f, "token signature does not verify"),
            AuthError::Expired => write!(f, "token expired"),
            AuthError::NotYetValid => write!(f, "token not valid yet (nbf)"),
            AuthError::UnknownUser => write!(f, "the token's user (sub) does not exist"),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
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
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// `secret` must not be empty (the configuration refuses anything under 32 bytes).
    pub fn new(secret: Vec<u8>) -> Authenticator {
        let key = DecodingKey::from_secret(&secret).expect("the configuration refuses empty secrets");
        let mut validation = Validation::new(Algorithm::HS256);
        // expiry to the second, as the connection's own expiry timer enforces it
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator { key, validation }
    }

    /// The grant a token carries, if it is well formed, HS256, signed with our secret and
    /// current. Whether `sub` exists is the caller's question.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("too long"));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| match error.into_kind() {
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                    AuthError::Algorithm
                }
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    AuthError::Malformed("bad claims (need sub and an integer exp)")
                }
                // an unknown alg such as "none" fails here, while the header is read
                _ => AuthError::Malformed("expected header.claims.signature in base64url JSON, alg HS256"),
            })?
            .claims;
        let user = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::Malformed("sub must be a user uuid"))?;
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp.min(1_000_000_000_000));
        Ok(Grant { user, expires_at, read: claims.channels.read, write: claims.channels.write })
    }
}

/// Sign claims as an HS256 token. The hub only verifies; this is for tests, the benchmark and
/// operators' scripts.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_secret(secret).expect("a non-empty secret");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("HS256 signs any JSON claims")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
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

    /// A token signed like `sign_hs256` does (valid HS256 over header and claims), but with the
    /// given header.
    fn signed_with_header(header: &str, claims: &serde_json::Value) -> String {
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    /// Issue 14, defect 8: the signature over these tokens is valid HS256, so only the algorithm
    /// check can reject them; the control token, identical but for saying HS256, passes.
    #[test]
    fn the_algorithm_check_rejects_headers_that_do_not_say_hs256() {
        let auth = Authenticator::new(SECRET.to_vec());
        let claims = json!({"sub": USER, "exp": future()});
        let control = signed_with_header(r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
        assert_eq!(auth.verify(&control).unwrap().user.to_string(), USER, "same signing, HS256 header: accepted");
        for header in [r#"{"alg":"HS512","typ":"JWT"}"#, r#"{"alg":"HS384"}"#, r#"{"alg":"RS256"}"#] {
            let error = auth.verify(&signed_with_header(header, &claims)).expect_err(header);
            assert_eq!(error, AuthError::Algorithm, "{header}");
        }
        // algorithms jsonwebtoken does not know at all ("none", a misspelling) fail while the
        // header is read, before any signature is looked at
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"hs256"}"#] {
            let error = auth.verify(&signed_with_header(header, &claims)).expect_err(header);
            assert!(matches!(error, AuthError::Malformed(why) if why.contains("alg HS256")), "{header}: {error}");
        }
    }
}
