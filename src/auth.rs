//! Authentication: argon2id password hashes and HS256 JWTs with the claims sub, email, role,
//! permissions, iat, exp and jti; the token secret and how a request proves who it is.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use chrono::{DateTime, Utc};
use convene_actors::model::User;
use convene_actors::rules::{Principal, role_permissions};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, decode, encode};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The role of service tokens; no account has it, so such a token never acts as a user.
pub const SERVICE_ROLE: &str = "service";
/// What a service token allows.
pub const COMMANDS_SEND: &str = "commands:send";
/// How a service token's subject starts.
const SERVICE_SUBJECT: &str = "service:";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id, as a string.
    pub sub: String,
    /// The user's e-mail address.
    pub email: String,
    /// The user's role.
    pub role: String,
    /// What the token allows.
    pub permissions: Vec<String>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Unique token id, the handle for revocation.
    pub jti: String,
}

impl Claims {
    /// The user these claims speak for; `None` for a service token.
    pub fn principal(&self) -> Option<Principal> {
        if self.is_service() {
            return None;
        }
        Some(Principal {
            user_id: self.sub.parse().ok()?,
            permissions: self.permissions.clone(),
        })
    }

    /// Whether this is a service token.
    pub fn is_service(&self) -> bool {
        self.role == SERVICE_ROLE && self.sub.starts_with(SERVICE_SUBJECT)
    }

    /// When the token expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_else(Utc::now)
    }
}

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Expired.
    #[error("the token has expired")]
    Expired,
    /// Malformed, wrongly signed, or of another algorithm.
    #[error("the token is invalid")]
    Invalid,
}

/// Issues and checks tokens, hashes and verifies passwords.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: i64,
    argon2: Argon2<'static>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Tokens signed with `secret`, valid `ttl_secs`; passwords hashed with argon2id using
    /// `memory_kib` KiB and `iterations` passes.
    pub fn new(
        secret: &[u8],
        ttl_secs: i64,
        memory_kib: u32,
        iterations: u32,
    ) -> anyhow::Result<Self> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
    }

    /// How long a token lives, in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// A new access token for `user`.
    pub fn issue(&self, user: &User) -> anyhow::Result<(String, Claims)> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.id.to_string(),
            email: user.email.clone(),
            role: user.role.as_str().to_owned(),
            permissions: role_permissions(user.role)
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            iat: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = encode(&Header::default(), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// A token for another service to send commands over the buses: role `service`, the
    /// permission `commands:send`, subject `service:<name>`, valid `ttl_secs`.
    pub fn issue_service(&self, name: &str, ttl_secs: i64) -> anyhow::Result<(String, Claims)> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: format!("{SERVICE_SUBJECT}{name}"),
            email: String::new(),
            role: SERVICE_ROLE.to_owned(),
            permissions: vec![COMMANDS_SEND.to_owned()],
            iat: now,
            exp: now + ttl_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = encode(&Header::default(), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// The claims of a token signed by us with HS256 and not expired; any other algorithm,
    /// `none` included, is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        decode::<Claims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// The PHC string of an argon2id hash of `password` with a fresh salt. CPU-heavy: call it
    /// from a blocking thread.
    pub fn hash_password(&self, password: &str) -> anyhow::Result<String> {
        let hash: PasswordHash = self
            .argon2
            .hash_password(password.as_bytes())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
        Ok(hash.to_string())
    }

    /// Whether `password` matches the stored `hash`. CPU-heavy: call it from a blocking thread.
    pub fn verify_password(&self, password: &str, hash: &str) -> bool {
        PasswordHash::new(hash)
            .is_ok_and(|h| self.argon2.verify_password(password.as_bytes(), &h).is_ok())
    }
}

/// The token secret under `data_dir`, created with 64 random bytes on first start.
pub fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("jwt_secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => Ok(secret),
        Ok(_) => anyhow::bail!("{} is shorter than 32 bytes", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; 64];
            rand::rng().fill_bytes(&mut secret);
            write_private(&path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use convene_actors::model::Role;

    fn auth(secret: &[u8]) -> Auth {
        Auth::new(secret, 60, 1024, 1).unwrap()
    }

    fn user() -> User {
        User {
            id: 5,
            email: "ada@example.com".into(),
            name: "Ada".into(),
            role: Role::User,
            profile: serde_json::json!({}),
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_token_carries_the_seed_claims() {
        let a = auth(b"0123456789abcdef0123456789abcdef");
        let (token, claims) = a.issue(&user()).unwrap();
        let back = a.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.permissions, vec!["events:read", "events:create"]);
        assert_eq!(back.exp - back.iat, 60);
    }

    #[test]
    fn a_service_token_sends_commands_and_speaks_for_no_user() {
        let a = auth(b"0123456789abcdef0123456789abcdef");
        let (token, _) = a.issue_service("billing", 3600).unwrap();
        let claims = a.verify(&token).unwrap();
        assert!(claims.is_service());
        assert_eq!(claims.permissions, [COMMANDS_SEND]);
        assert_eq!(claims.exp - claims.iat, 3600);
        assert!(claims.principal().is_none());
        let (user_token, _) = a.issue(&user()).unwrap();
        assert!(!a.verify(&user_token).unwrap().is_service());
    }

    #[test]
    fn a_token_of_another_secret_is_invalid() {
        let (token, _) = auth(b"0123456789abcdef0123456789abcdef")
            .issue(&user())
            .unwrap();
        assert_eq!(
            auth(b"another secret of 32 bytes at least!").verify(&token),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let a = auth(b"0123456789abcdef0123456789abcdef");
        let hash = a.hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(a.verify_password("correct horse", &hash));
        assert!(!a.verify_password("wrong horse", &hash));
        assert!(!a.verify_password("correct horse", "not a hash"));
    }
}
