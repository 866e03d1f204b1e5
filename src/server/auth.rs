//! Who is calling, and may they do this.
//!
//! Credentials: the admin key (`DIR/admin.key`, made 0600 on first start) as
//! `Authorization: Bearer KEY` or basic `admin:KEY`; users added with
//! `fleetkv serve --add-user NAME:PASS` (argon2 hashes in `DIR/users`, 0600)
//! as basic `NAME:PASS` (drpcli's `RS_KEY`); and JWTs as `Bearer TOKEN`,
//! judged in [`Authenticator::authorize`] — the one place that plugs in the
//! store's token check.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::HeaderMap;
use parking_lot::Mutex;

use super::error::ApiError;
use crate::Store;

pub use crate::wire::ADMIN_KEY_FILE;
/// The users' file name (`NAME:ARGON2-HASH` lines), inside the store directory.
pub const USERS_FILE: &str = "users";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin key: may do everything.
    Admin,
    /// A user from the users file: may do everything.
    User(String),
    /// A bearer token (JWT), not yet verified: its claims decide.
    Token(String),
}

/// Checks credentials and claims.
pub struct Authenticator {
    store: Store,
    admin_key: String,
    users: HashMap<String, String>,
    /// `user:pass` pairs that verified once: argon2 is slow on purpose.
    verified: Mutex<HashSet<String>>,
}

impl Authenticator {
    /// Loads the admin key (creating it, and returning it for printing once,
    /// when absent) and the users file from `dir`.
    pub fn load(store: Store, dir: &Path) -> std::io::Result<(Self, Option<String>)> {
        let key_path = dir.join(ADMIN_KEY_FILE);
        let (admin_key, created) = match std::fs::read_to_string(&key_path) {
            Ok(s) => (s.trim().to_string(), None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key();
                write_private(&key_path, &format!("{key}\n"))?;
                (key.clone(), Some(key))
            }
            Err(e) => return Err(e),
        };
        if admin_key.is_empty() {
            return Err(std::io::Error::other(format!(
                "{} is empty",
                key_path.display()
            )));
        }
        let users = read_users(&dir.join(USERS_FILE))?;
        let auth = Authenticator {
            store,
            admin_key,
            users,
            verified: Mutex::new(HashSet::new()),
        };
        Ok((auth, created))
    }

    /// Who sent these headers; 401 when nobody we know.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("no credentials: send Authorization"))?
            .to_str()
            .map_err(|_| ApiError::unauthorized("Authorization is not text"))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.bearer(rest);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64_decode(rest)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::unauthorized("malformed basic credentials"))?;
            return self.user_pass(&raw);
        }
        Err(ApiError::unauthorized(format!(
            "unsupported authorization scheme {scheme:?}"
        )))
    }

    /// Who a credential typed into the UI's login form is: `user:password`
    /// (or `admin:KEY`) as basic auth, anything else as a bearer (the admin
    /// key or a token).
    pub fn login(&self, credential: &str) -> Result<Principal, ApiError> {
        let credential = credential.trim();
        if credential.contains(':') {
            self.user_pass(credential)
        } else {
            self.bearer(credential)
        }
    }

    fn bearer(&self, rest: &str) -> Result<Principal, ApiError> {
        if eq_ct(rest, &self.admin_key) {
            return Ok(Principal::Admin);
        }
        if rest.is_empty() {
            return Err(ApiError::unauthorized("empty bearer token"));
        }
        Ok(Principal::Token(rest.to_string()))
    }

    /// `raw` is `user:pass`.
    fn user_pass(&self, raw: &str) -> Result<Principal, ApiError> {
        let (user, pass) = raw
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized("malformed basic credentials"))?;
        if user == "admin" && eq_ct(pass, &self.admin_key) {
            return Ok(Principal::Admin);
        }
        if self.verified.lock().contains(raw) {
            return Ok(Principal::User(user.to_string()));
        }
        let ok = self.users.get(user).is_some_and(|h| {
            PasswordHash::new(h)
                .map(|h| {
                    Argon2::default()
                        .verify_password(pass.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        });
        if ok {
            self.verified.lock().insert(raw.to_string());
            return Ok(Principal::User(user.to_string()));
        }
        Err(ApiError::unauthorized("wrong user or password"))
    }

    /// May `principal` do `action` on `scope` (`addr`: the object's address
    /// as the path gives it, or empty for collection calls)? Token claims
    /// are judged by the library's one decision,
    /// [`crate::TokenClaims::authorize`], which reads a machine address
    /// (`Name:…`, `Uuid:…`, a bare UUID) as the store does — the same check
    /// a [`crate::Scoped`] handle makes.
    pub fn authorize(
        &self,
        principal: &Principal,
        scope: &str,
        action: &str,
        addr: &str,
    ) -> Result<(), ApiError> {
        match principal {
            Principal::Admin | Principal::User(_) => Ok(()),
            // 401 for a bad token, 403 for a missing claim (see `ApiError`'s
            // mapping of `Error::Auth`). Collection calls are `*`.
            Principal::Token(t) => {
                let claims = self.store.verify_token(t)?;
                if addr.is_empty() {
                    claims.check(scope, action, "*")?;
                } else {
                    claims.authorize(&self.store, scope, action, addr)?;
                }
                Ok(())
            }
        }
    }

    /// May `principal` create an object named `name` (or, for a machine,
    /// with Uuid `uuid`) in `scope`? As [`crate::TokenClaims::authorize_new`],
    /// the check of the scoped handles' `create`.
    pub fn authorize_new(
        &self,
        principal: &Principal,
        scope: &str,
        name: &str,
        uuid: Option<&uuid::Uuid>,
    ) -> Result<(), ApiError> {
        match principal {
            Principal::Admin | Principal::User(_) => Ok(()),
            Principal::Token(t) => {
                self.store
                    .verify_token(t)?
                    .authorize_new(scope, name, uuid)?;
                Ok(())
            }
        }
    }
}

/// Adds (or replaces) user `name` with password `pass` in `dir`'s users file.
pub fn add_user(dir: &Path, name: &str, pass: &str) -> std::io::Result<()> {
    if name.is_empty() || name == "admin" || name.contains([':', '\n']) || pass.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "expected NAME:PASS with a non-empty NAME other than admin and a non-empty PASS",
        ));
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(USERS_FILE);
    let mut users = read_users(&path)?;
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(pass.as_bytes(), &salt)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    users.insert(name.to_string(), hash.to_string());
    let mut names: Vec<_> = users.into_iter().collect();
    names.sort();
    let text: String = names.iter().map(|(n, h)| format!("{n}:{h}\n")).collect();
    write_private(&path, &text)
}

fn read_users(path: &PathBuf) -> std::io::Result<HashMap<String, String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e),
    }
}

/// 256 random bits as hex.
fn new_key() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    a + &b
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Constant-time string equality.
fn eq_ct(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Standard base64 (padding optional).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = ((acc << 6) | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round() {
        assert_eq!(
            base64_decode("YWRtaW46a2V5").as_deref(),
            Some(&b"admin:key"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn ct_eq() {
        assert!(eq_ct("abc", "abc"));
        assert!(!eq_ct("abc", "abd"));
        assert!(!eq_ct("abc", "ab"));
    }
}
