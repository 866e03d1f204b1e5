//! Browser sessions for the UI: who is logged in, and the CSRF token their
//! forms carry.
//!
//! Owns: the session table (in memory: a restart logs everyone out), the
//! cookies' names and flags, random session ids and CSRF tokens. Must not:
//! check credentials (the [`Authenticator`](crate::server::auth::Authenticator)
//! does) or decide what a principal may read (its claims do, per request).
//!
//! Cookies are `HttpOnly` (no script reads them), `SameSite=Strict` (no
//! other site's page sends them) and scoped to `/ui`; the login form's CSRF
//! token is bound to a cookie of its own (double submit), a session's forms
//! to the session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use parking_lot::Mutex;

use crate::server::auth::Principal;

/// The session cookie's name.
pub(super) const SESSION_COOKIE: &str = "fleetkv_session";
/// The login form's CSRF cookie.
pub(super) const LOGIN_COOKIE: &str = "fleetkv_login";
/// How long a session lasts from its login.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held: the oldest go first beyond it.
const MOST: usize = 4096;

/// A logged-in browser.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) who: Principal,
    /// What the session's forms must send back.
    pub(super) csrf: String,
    since: Instant,
}

/// The session table.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session for `who`; returns its id (the cookie's value).
    pub(super) fn start(&self, who: Principal) -> String {
        let id = random_token();
        let mut all = self.by_id.lock();
        all.retain(|_, s| s.since.elapsed() < LIFETIME);
        if all.len() >= MOST {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.since)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(
            id.clone(),
            Session {
                who,
                csrf: random_token(),
                since: Instant::now(),
            },
        );
        id
    }

    /// The live session the request's cookie names.
    pub(super) fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut all = self.by_id.lock();
        match all.get(&id) {
            Some(s) if s.since.elapsed() < LIFETIME => Some(s.clone()),
            Some(_) => {
                all.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Ends the request's session.
    pub(super) fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.by_id.lock().remove(&id);
        }
    }
}

/// 256 random bits as hex (two v4 UUIDs' 122 random bits each, from the
/// OS's generator).
pub(super) fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A `Set-Cookie` value with the UI's flags; `None` clears the cookie.
pub(super) fn set_cookie(name: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{name}={v}; Path=/ui; HttpOnly; SameSite=Strict"),
        None => format!("{name}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// Cookie `name`'s value in the request.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Compares two tokens in time independent of where they differ.
pub(super) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends() {
        let s = Sessions::default();
        let id = s.start(Principal::Admin);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("other=1; {SESSION_COOKIE}={id}").parse().unwrap(),
        );
        let found = s.of(&h).unwrap();
        assert_eq!(found.who, Principal::Admin);
        assert_eq!(found.csrf.len(), 64);
        s.end(&h);
        assert!(s.of(&h).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
