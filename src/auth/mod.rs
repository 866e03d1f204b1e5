//! Claims and scoped tokens: who may touch what, through a signed token
//! (`docs/architecture.md` §10 Tokens and claims).
//!
//! Owns: the [`Claim`] grammar (DRP's `scope/action/specific` triple), the
//! signed token format (JWT, HS256, keyed by the store's own random secret),
//! token minting and verification on [`Store`], and [`Scoped`], a handle
//! whose every operation checks the token's claims before delegating to the
//! store. Must not: store anything (tokens are stateless; the only stored
//! thing is the secret, which the store creates and export never reads),
//! change what an unscoped [`Store`] handle may do (the library's caller owns
//! the store), or format for a front end.
//!
//! # Claims
//!
//! A claim is `scope/action/specific`; each part is `*` (anything) or a comma
//! list of names: `profiles/get,update/example`, `machines/*/*`, `*/*/*`.
//! The specific is everything after the second `/`, so a param name such as
//! `cluster/profile` can be named. Scopes and actions are checked against the
//! vocabulary below when a claim is parsed, so a typo is an error rather
//! than a claim that silently allows nothing.
//!
//! Scopes: `machines`, `profiles`, `params` (param definitions), and
//! `metrics`, which holds no objects: `metrics/get/*` lets a token read the
//! server's `GET /metrics`.
//!
//! | action      | operations                                                    |
//! |-------------|---------------------------------------------------------------|
//! | `get`       | `get`, `exists`, `params`, `get_param`                        |
//! | `list`      | `list`, `list_all`, `count`                                   |
//! | `create`    | `create`                                                      |
//! | `update`    | `replace`, `update` (merge), `update_from` (reference update) |
//! | `patch`     | `patch`, `patch_many` (each machine)                          |
//! | `param-set` | `set_param`, `set_param_if`, `remove_param`                   |
//! | `delete`    | `delete`                                                      |
//! | `token`     | minting a profile token for the profile named (see Minting)   |
//!
//! The specific is the object's key: a profile's or param's Name; for a
//! machine its Uuid or its Name (either matches). A machine address is read
//! exactly as the store reads it ([`crate::store`]'s `MachineAddr`:
//! `Uuid:`/`Key:` and a UUID, `Name:` and a name, a bare UUID in any form,
//! else a bare name) and the claims are checked on that identity — the
//! canonical UUID or the name — and, failing that, on the other identity of
//! the machine it resolves to. [`TokenClaims::authorize`] is that decision,
//! and the only one: the [`Scoped`] handles and the server both call it, so
//! `/api/v3/machines/Name:m1` and `scoped.machines().get("Name:m1")` are
//! judged alike. `list` and
//! `count` read many objects, so they are checked with the specific `*`: a
//! token needs `list` on `*` for that scope (a claim naming objects does not
//! let it list them). A wildcard in a request only matches a wildcard in a
//! claim.
//!
//! # Tokens
//!
//! [`Store::generate_profile_token`] mints DRP's profile token:
//! `profiles/get,update,patch,param-set/NAME`, valid for a TTL.
//! [`Store::generate_token`] mints any claims. An unscoped [`Store`] is the
//! owner (the library's caller, the server's admin key and users): it
//! mints anything, for any TTL.
//!
//! # Minting through a token
//!
//! A token cannot outgrow its parent. [`Scoped::generate_profile_token`]
//! (the server's `POST /api/v3/profiles/{id}/token` with a bearer token, and
//! `.GenerateProfileToken` in a template rendered through a token) needs
//! the claim `profiles/token/NAME` — a profile token does not carry it, so
//! by default a token mints nothing; every claim of the new token must be
//! covered by the caller's claims; and the new token expires no later than
//! the caller's: its `exp` is `min(now + ttl, parent exp)`. The TTL is
//! clamped rather than refused, as DRP narrows a token request that asks
//! for more than the caller has rather than failing it, and so that task
//! templates with a fixed TTL (`.GenerateProfileToken "p" 7200`) keep
//! rendering when the renderer's own token has less time left; the clamped
//! `exp` is in the new token's payload. A token is a JWT signed with
//! HMAC-SHA256 under the store's secret; its payload has `exp`, `iat`, `nbf`,
//! a unique `jti` and `claims` (the claim strings). Tokens of one store are
//! refused by every other store.
//!
//! A token that was signed with another key and a token whose payload was
//! changed after signing are indistinguishable to the verifier (the MAC does
//! not match either way); both are [`AuthError::BadSignature`]. So is a token
//! whose header names another known algorithm (`HS512`, `RS256`…); an unknown
//! one (`none`) does not parse and is [`AuthError::Malformed`].
//!
//! Clock skew: `exp` and `nbf` are honoured with a leeway of [`LEEWAY_SECS`]
//! seconds: a token that expired 2 s ago still works, one that expired 30 s
//! ago is refused.
//!
//! Tokens are not bound to the existence of what they name: a token minted
//! for a profile that is later deleted still verifies, and every operation on
//! the missing profile is [`Error::NotFound`] (as it would be for the owner);
//! if a profile of that name is created again, the token applies to it.
//!
//! A refused check reads and writes nothing.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::{Machine, ParamDef, Profile};
use crate::store::{GroupCount, ListOptions, MachineAddr, Store};

/// Seconds of clock skew allowed on a token's `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// The object scopes a claim may name (besides `*`): what export and
/// import cover.
pub const SCOPES: &[&str] = &["machines", "profiles", "params"];

/// Every scope a claim may name: [`SCOPES`] and `metrics`.
const CLAIM_SCOPES: &[&str] = &["machines", "profiles", "params", "metrics"];

/// The actions a claim may name (besides `*`); see the module doc.
pub const ACTIONS: &[&str] = &[
    "get",
    "list",
    "create",
    "update",
    "patch",
    "param-set",
    "delete",
    "token",
];

/// The claims of a profile token: everything a cluster member does to its
/// shared profile.
pub const PROFILE_ACTIONS: &str = "get,update,patch,param-set";

/// Why a token or a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token (not three base64url parts, bad base64, bad JSON, missing
    /// fields) or a claim string that does not parse.
    #[error("malformed: {reason}")]
    Malformed {
        /// What is wrong, and where.
        reason: String,
    },
    /// The signature does not match: the token was signed with another key
    /// (another store's, a forger's) or its contents were changed after
    /// signing; the two cannot be told apart.
    #[error("bad signature: not signed by this store, or changed after signing")]
    BadSignature,
    /// The token's `exp` (plus the leeway) has passed.
    #[error("expired at {expired_at} (unix seconds)")]
    Expired {
        /// The token's `exp`, in unix seconds.
        expired_at: u64,
    },
    /// The token's `nbf` (less the leeway) is still in the future.
    #[error("not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// The token's `nbf`, in unix seconds.
        not_before: u64,
    },
    /// No claim covers the scope at all.
    #[error("no claim on {scope}: needs {needed}")]
    WrongKind {
        /// The scope asked for.
        scope: String,
        /// The claim that would allow the request.
        needed: String,
    },
    /// Claims cover the scope, but none the action.
    #[error("may not {action}: needs {needed}")]
    WrongAction {
        /// The action asked for.
        action: String,
        /// The claim that would allow the request.
        needed: String,
    },
    /// Claims cover the scope and action, but for other objects.
    #[error("not for {specific}: needs {needed}")]
    WrongObject {
        /// The object asked for.
        specific: String,
        /// The claim that would allow the request.
        needed: String,
    },
}

impl AuthError {
    /// True for a valid token that lacks the claim (HTTP 403); false for a
    /// token that is not acceptable at all (HTTP 401).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            AuthError::WrongKind { .. }
                | AuthError::WrongAction { .. }
                | AuthError::WrongObject { .. }
        )
    }
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Auth(AuthError::Malformed {
        reason: reason.into(),
    })
}

/// One part of a claim: `*` or a list of names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    List(Vec<String>),
}

impl Part {
    fn allows(&self, v: &str) -> bool {
        match self {
            Part::Any => true,
            Part::List(l) => l.iter().any(|x| x == v),
        }
    }

    fn parse(claim: &str, which: &str, text: &str, vocab: Option<&[&str]>) -> Result<Part> {
        let mut items = Vec::new();
        for item in text.split(',') {
            if item.is_empty() {
                return Err(malformed(format!(
                    "claim {claim:?}: the {which} part {text:?} has an empty name"
                )));
            }
            if item == "*" {
                return Ok(Part::Any);
            }
            if item.chars().any(char::is_whitespace) {
                return Err(malformed(format!(
                    "claim {claim:?}: {which} {item:?} contains whitespace"
                )));
            }
            if let Some(vocab) = vocab {
                if !vocab.contains(&item) {
                    return Err(malformed(format!(
                        "claim {claim:?}: unknown {which} {item:?} (expected * or one of {})",
                        vocab.join(", ")
                    )));
                }
            }
            items.push(item.to_string());
        }
        Ok(Part::List(items))
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Any => f.write_str("*"),
            Part::List(l) => f.write_str(&l.join(",")),
        }
    }
}

/// A claim `scope/action/specific`, each part `*` or a comma list.
///
/// ```
/// use fleetkv::auth::Claim;
/// let c: Claim = "profiles/get,update/example".parse().unwrap();
/// assert!(c.allows("profiles", "update", "example"));
/// assert!(!c.allows("profiles", "delete", "example"));
/// assert_eq!(c.to_string(), "profiles/get,update/example");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    scope: Part,
    action: Part,
    specific: Part,
}

impl Claim {
    /// Whether this claim allows `action` on object `specific` of `scope`.
    /// A `*` in the request matches only a `*` in the claim.
    pub fn allows(&self, scope: &str, action: &str, specific: &str) -> bool {
        self.scope.allows(scope) && self.action.allows(action) && self.specific.allows(specific)
    }

    /// The profile-token claim for `profile`: `profiles/get,update,patch,param-set/NAME`.
    pub fn profile(profile: &str) -> Result<Claim> {
        format!("profiles/{PROFILE_ACTIONS}/{profile}").parse()
    }
}

impl FromStr for Claim {
    type Err = Error;

    /// Parses `scope/action/specific`; errors are [`AuthError::Malformed`]
    /// naming the claim and the part at fault.
    fn from_str(s: &str) -> Result<Claim> {
        let mut parts = s.splitn(3, '/');
        let (Some(scope), Some(action), Some(specific)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(format!(
                "claim {s:?}: expected scope/action/specific (three parts separated by /)"
            )));
        };
        Ok(Claim {
            scope: Part::parse(s, "scope", scope, Some(CLAIM_SCOPES))?,
            action: Part::parse(s, "action", action, Some(ACTIONS))?,
            specific: Part::parse(s, "specific", specific, None)?,
        })
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.scope, self.action, self.specific)
    }
}

/// A verified token's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// What the token allows.
    pub claims: Vec<Claim>,
    /// `exp`: when it stops working (unix seconds, before the leeway).
    pub expires_at: u64,
    /// `iat`: when it was minted (unix seconds).
    pub issued_at: u64,
    /// `nbf`: when it starts working (unix seconds, before the leeway).
    pub not_before: Option<u64>,
    /// `jti`: the token's unique id.
    pub id: String,
}

impl TokenClaims {
    /// Whether some claim allows the request.
    pub fn allows(&self, scope: &str, action: &str, specific: &str) -> bool {
        self.claims
            .iter()
            .any(|c| c.allows(scope, action, specific))
    }

    /// `Ok` if some claim allows the request; otherwise the closest miss:
    /// [`AuthError::WrongObject`] (scope and action covered, for other
    /// objects), [`AuthError::WrongAction`] (scope covered, not the action),
    /// [`AuthError::WrongKind`] (scope not covered). Does not look at expiry
    /// (verification did).
    pub fn check(&self, scope: &str, action: &str, specific: &str) -> Result<()> {
        if self.allows(scope, action, specific) {
            return Ok(());
        }
        let needed = format!("{scope}/{action}/{specific}");
        let scoped = self.claims.iter().filter(|c| c.scope.allows(scope));
        let err = if scoped.clone().any(|c| c.action.allows(action)) {
            AuthError::WrongObject {
                specific: specific.to_string(),
                needed,
            }
        } else if scoped.count() > 0 {
            AuthError::WrongAction {
                action: action.to_string(),
                needed,
            }
        } else {
            AuthError::WrongKind {
                scope: scope.to_string(),
                needed,
            }
        };
        Err(err.into())
    }

    /// `Ok` if every request `claim` could make is allowed by these claims
    /// (each name in each part, with `*` matched only by `*`). Used to let a
    /// token mint only tokens narrower than itself.
    pub fn check_covers(&self, claim: &Claim) -> Result<()> {
        let names = |p: &Part| match p {
            Part::Any => vec!["*".to_string()],
            Part::List(l) => l.clone(),
        };
        for s in names(&claim.scope) {
            for a in names(&claim.action) {
                for o in names(&claim.specific) {
                    self.check(&s, &a, &o)?;
                }
            }
        }
        Ok(())
    }
}

impl TokenClaims {
    /// The authorization decision for `action` on the object at `addr` in
    /// `scope`, shared by the [`Scoped`] handles and the server. Profiles and
    /// param definitions are named by their Name, as the store looks them
    /// up. A machine address is read as the store reads it (see the module
    /// doc): the claims are checked on the identity it names (the canonical
    /// UUID or the name); if they cover other objects only, on the other
    /// identity of the machine the address resolves to. An address naming no
    /// machine is refused unless its own identity is covered (the operation
    /// then answers not found), so a refusal never depends on whether an
    /// uncovered machine exists.
    pub fn authorize(&self, store: &Store, scope: &str, action: &str, addr: &str) -> Result<()> {
        if scope != M {
            return self.check(scope, action, addr);
        }
        let ident = match MachineAddr::parse(addr) {
            Ok(MachineAddr::Uuid(s) | MachineAddr::Name(s)) => s,
            // `Uuid:`/`Key:` without a UUID names no machine (the store
            // answers Invalid); the claims are judged on the text given.
            Err(_) => addr
                .split_once(':')
                .map_or(addr, |(_, rest)| rest)
                .to_string(),
        };
        let refused = match self.check(M, action, &ident) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if let Error::Auth(AuthError::WrongObject { .. }) = refused {
            // A claim may name the machine by its other identity.
            if let Ok(m) = store.machines().get(addr) {
                if self.allows(M, action, &m.uuid.to_string()) || self.allows(M, action, &m.name) {
                    return Ok(());
                }
            }
        }
        Err(refused)
    }

    /// The decision for creating an object named `name` in `scope` (a
    /// machine may instead be named by the `uuid` it is created with).
    pub fn authorize_new(&self, scope: &str, name: &str, uuid: Option<&Uuid>) -> Result<()> {
        match self.check(scope, "create", name) {
            Err(_)
                if uuid.is_some_and(|u| {
                    !u.is_nil() && self.allows(scope, "create", &u.to_string())
                }) =>
            {
                Ok(())
            }
            r => r,
        }
    }
}

/// The JWT payload.
#[derive(Serialize, Deserialize)]
struct Payload {
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    jti: String,
    claims: Vec<String>,
}

/// Now, in unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// DRP's `GenerateProfileToken`: a token allowing `get`, `update`,
    /// `patch` and `param-set` on profile `profile` for `ttl`.
    /// [`Error::NotFound`] if there is no such profile.
    pub fn generate_profile_token(&self, profile: &str, ttl: Duration) -> Result<String> {
        self.generate_profile_token_with(profile, ttl, &[])
    }

    /// [`Store::generate_profile_token`] with DRP's `ExtraClaims` added
    /// (e.g. `machines/*/*` for multi-machine cluster tasks).
    pub fn generate_profile_token_with(
        &self,
        profile: &str,
        ttl: Duration,
        extra: &[Claim],
    ) -> Result<String> {
        self.profiles().get(profile)?;
        let mut claims = vec![Claim::profile(profile)?];
        claims.extend_from_slice(extra);
        self.generate_token(&claims, ttl)
    }

    /// A token carrying `claims`, valid from now for `ttl`.
    pub fn generate_token(&self, claims: &[Claim], ttl: Duration) -> Result<String> {
        self.generate_token_at(claims, ttl, now_secs())
    }

    /// [`Store::generate_token`] with an explicit clock: `now` in unix
    /// seconds becomes `iat` and `nbf`, `now + ttl` (whole seconds) `exp`.
    pub fn generate_token_at(&self, claims: &[Claim], ttl: Duration, now: u64) -> Result<String> {
        self.sign(claims, now, now.saturating_add(ttl.as_secs()))
    }

    /// Signs `claims`, issued and valid from `now`, expiring at `exp`.
    fn sign(&self, claims: &[Claim], now: u64, exp: u64) -> Result<String> {
        let payload = Payload {
            exp,
            iat: now,
            nbf: Some(now),
            jti: Uuid::new_v4().to_string(),
            claims: claims.iter().map(Claim::to_string).collect(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &payload,
            &EncodingKey::from_secret(&self.secret()?),
        )
        .map_err(|e| malformed(format!("cannot sign token: {e}")))
    }

    /// Checks the token's signature, time window and claims; its contents.
    pub fn verify_token(&self, token: &str) -> Result<TokenClaims> {
        self.verify_token_at(token, now_secs())
    }

    /// [`Store::verify_token`] with an explicit clock (`now` in unix seconds).
    pub fn verify_token_at(&self, token: &str, now: u64) -> Result<TokenClaims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Payload>(
            token.trim(),
            &DecodingKey::from_secret(&self.secret()?),
            &v,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                Error::Auth(AuthError::BadSignature)
            }
            _ => malformed(format!("not a fleetkv token: {e}")),
        })?;
        let p = data.claims;
        if now > p.exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Expired { expired_at: p.exp }.into());
        }
        if let Some(nbf) = p.nbf {
            if now.saturating_add(LEEWAY_SECS) < nbf {
                return Err(AuthError::NotYetValid { not_before: nbf }.into());
            }
        }
        let claims = p
            .claims
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<Claim>>>()?;
        Ok(TokenClaims {
            claims,
            expires_at: p.exp,
            issued_at: p.iat,
            not_before: p.nbf,
            id: p.jti,
        })
    }

    /// Verifies `token` and returns a handle whose every operation is
    /// checked against its claims.
    pub fn with_token(&self, token: &str) -> Result<Scoped<'_>> {
        Ok(Scoped {
            store: self,
            claims: self.verify_token(token)?,
            lease: None,
            fence: None,
        })
    }

    /// A handle checked against already verified claims (e.g. from
    /// [`Store::verify_token_at`]).
    pub fn with_claims(&self, claims: TokenClaims) -> Scoped<'_> {
        Scoped {
            store: self,
            claims,
            lease: None,
            fence: None,
        }
    }
}

/// A store seen through a token: every operation checks the claims first.
pub struct Scoped<'a> {
    store: &'a Store,
    claims: TokenClaims,
    lease: Option<crate::store::LeaseId>,
    fence: Option<crate::store::Fence>,
}

impl<'a> Scoped<'a> {
    /// The store behind the claims (the crate's own callers only).
    pub(crate) fn store(&self) -> &'a Store {
        self.store
    }

    /// The claims check of `action` on `id` in `scope` (`*`: the
    /// collection).
    pub(crate) fn check(&self, scope: &str, action: &str, id: &str) -> Result<()> {
        match id {
            "*" => self.claims.check(scope, action, "*"),
            _ => self.claims.authorize(self.store, scope, action, id),
        }
    }

    /// Machine writes through this handle are made under lease `lease` and
    /// only while `fence` holds (see [`crate::store::Machines::with_lease`],
    /// [`crate::store::Machines::with_fence`]).
    pub fn machine_writes(
        mut self,
        lease: Option<crate::store::LeaseId>,
        fence: Option<crate::store::Fence>,
    ) -> Self {
        self.lease = lease;
        self.fence = fence;
        self
    }

    /// The token's verified claims.
    pub fn claims(&self) -> &TokenClaims {
        &self.claims
    }

    /// The store itself, once `scope/action/specific` is allowed: for
    /// coarse operations (cluster elections, workflows on many machines)
    /// that are authorized as a whole.
    pub fn authorize(&self, scope: &str, action: &str, specific: &str) -> Result<&'a Store> {
        self.claims.check(scope, action, specific)?;
        Ok(self.store)
    }

    /// A profile token minted through this token (see "Minting through a
    /// token" in the module doc): needs `profiles/token/PROFILE`, the
    /// caller's claims must cover the profile token's, and it expires no
    /// later than the caller's token. [`Error::NotFound`] if there is no
    /// such profile (checked after the claims, so a refused caller learns
    /// nothing about the store).
    pub fn generate_profile_token(&self, profile: &str, ttl: Duration) -> Result<String> {
        self.generate_profile_token_with(profile, ttl, &[])
    }

    /// [`Scoped::generate_profile_token`] with extra claims, each of which
    /// the caller's claims must cover.
    pub fn generate_profile_token_with(
        &self,
        profile: &str,
        ttl: Duration,
        extra: &[Claim],
    ) -> Result<String> {
        self.generate_profile_token_at(profile, ttl, extra, now_secs())
    }

    /// [`Scoped::generate_profile_token_with`] with an explicit clock (`now`
    /// in unix seconds).
    pub fn generate_profile_token_at(
        &self,
        profile: &str,
        ttl: Duration,
        extra: &[Claim],
        now: u64,
    ) -> Result<String> {
        self.claims.check(P, "token", profile)?;
        let mut claims = vec![Claim::profile(profile)?];
        claims.extend_from_slice(extra);
        for c in &claims {
            self.claims.check_covers(c)?;
        }
        self.store.profiles().get(profile)?;
        let exp = now
            .saturating_add(ttl.as_secs())
            .min(self.claims.expires_at);
        self.store.sign(&claims, now, exp)
    }

    /// The collection of `kind` as JSON documents, checked against scope
    /// `kind.plural()`; machine writes carry this handle's lease and fence.
    pub fn objects(&self, kind: crate::model::Kind) -> Result<ScopedObjects<'_>> {
        Ok(ScopedObjects {
            store: self.store,
            claims: &self.claims,
            objects: self
                .store
                .objects(kind)?
                .with_lease(self.lease)
                .with_fence(self.fence.clone()),
        })
    }

    /// Machines, checked against scope `machines`.
    pub fn machines(&self) -> ScopedMachines<'_> {
        self.kind(crate::model::Kind::Machine)
    }

    /// Profiles, checked against scope `profiles`.
    pub fn profiles(&self) -> ScopedProfiles<'_> {
        self.kind(crate::model::Kind::Profile)
    }

    /// Param definitions, checked against scope `params`.
    pub fn params(&self) -> ScopedParams<'_> {
        self.kind(crate::model::Kind::Param)
    }

    fn kind<T>(&self, kind: crate::model::Kind) -> ScopedKind<'_, T> {
        ScopedKind {
            objects: ScopedObjects {
                store: self.store,
                claims: &self.claims,
                objects: self
                    .store
                    .objects_unchecked(kind)
                    .with_lease(self.lease)
                    .with_fence(self.fence.clone()),
            },
            kind: std::marker::PhantomData,
        }
    }
}

/// [`crate::store::Objects`] (one collection as JSON documents) behind a
/// claims check: the scope is the kind's plural, the actions are those of
/// the typed scoped handles.
pub struct ScopedObjects<'a> {
    store: &'a Store,
    claims: &'a TokenClaims,
    objects: crate::store::Objects<'a>,
}

impl ScopedObjects<'_> {
    fn scope(&self) -> &'static str {
        self.objects.kind().plural()
    }

    fn check(&self, action: &str, id: &str) -> Result<()> {
        self.claims.authorize(self.store, self.scope(), action, id)
    }

    /// `get`.
    pub fn get(&self, id: &str) -> Result<Value> {
        self.check("get", id)?;
        self.objects.get(id)
    }
    /// `get`.
    pub fn exists(&self, id: &str) -> Result<bool> {
        self.check("get", id)?;
        self.objects.exists(id)
    }
    /// `create` on the new object's Name (or a machine's Uuid).
    pub fn create(&self, doc: Value) -> Result<Value> {
        let name = doc.get("Name").and_then(Value::as_str).unwrap_or_default();
        let uuid = doc
            .get("Uuid")
            .and_then(Value::as_str)
            .and_then(|u| u.parse::<Uuid>().ok());
        let uuid = uuid.filter(|_| self.objects.kind() == crate::model::Kind::Machine);
        self.claims
            .authorize_new(self.scope(), name, uuid.as_ref())?;
        self.objects.create(doc)
    }
    /// `update`.
    pub fn replace(&self, id: &str, doc: Value) -> Result<Value> {
        self.check("update", id)?;
        self.objects.replace(id, doc)
    }
    /// `update`.
    pub fn merge(&self, id: &str, merge: &Value) -> Result<Value> {
        self.check("update", id)?;
        self.objects.merge(id, merge)
    }
    /// `update`.
    pub fn update_from(&self, id: &str, reference: &Value, desired: &Value) -> Result<Value> {
        self.check("update", id)?;
        self.objects.update_from(id, reference, desired)
    }
    /// `patch`.
    pub fn patch(&self, id: &str, ops: &Value) -> Result<Value> {
        self.check("patch", id)?;
        self.objects.patch(id, ops)
    }
    /// `delete`.
    pub fn delete(&self, id: &str) -> Result<Value> {
        self.check("delete", id)?;
        self.objects.delete(id)
    }
    /// `list` on `*`.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        self.claims.check(self.scope(), "list", "*")?;
        self.objects.list(filter, opts)
    }
    /// `list` on `*`.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        self.claims.check(self.scope(), "list", "*")?;
        self.objects.count(filter)
    }
    /// `list` on `*`.
    pub fn group_count(&self, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        self.claims.check(self.scope(), "list", "*")?;
        self.objects.group_count(filter, by)
    }
    /// `get`.
    pub fn params(&self, id: &str, aggregate: bool) -> Result<Map<String, Value>> {
        self.check("get", id)?;
        self.objects.params(id, aggregate)
    }
    /// `get`.
    pub fn get_param(&self, id: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        self.check("get", id)?;
        self.objects.get_param(id, key, aggregate)
    }
    /// `param-set`.
    pub fn set_param(
        &self,
        id: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value> {
        self.check("param-set", id)?;
        self.objects.set_param(id, key, expected, value)
    }
    /// `param-set`, answering the value written
    /// ([`Objects::set_param_value`](crate::Objects::set_param_value)).
    pub fn set_param_value(
        &self,
        id: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value> {
        self.check("param-set", id)?;
        self.objects.set_param_value(id, key, expected, value)
    }
    /// `param-set`.
    pub fn remove_param(&self, id: &str, key: &str) -> Result<Option<Value>> {
        self.check("param-set", id)?;
        self.objects.remove_param(id, key)
    }
}

/// One collection behind a claims check, with the typed objects of kind `T`
/// ([`Machine`], [`Profile`], [`ParamDef`]): [`ScopedObjects`] with each
/// document read as `T`.
pub struct ScopedKind<'a, T> {
    objects: ScopedObjects<'a>,
    kind: std::marker::PhantomData<T>,
}

/// Machines behind a claims check.
pub type ScopedMachines<'a> = ScopedKind<'a, Machine>;
/// Profiles behind a claims check.
pub type ScopedProfiles<'a> = ScopedKind<'a, Profile>;
/// Param definitions behind a claims check.
pub type ScopedParams<'a> = ScopedKind<'a, ParamDef>;

const M: &str = "machines";
const P: &str = "profiles";

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Corrupt {
        key: "object".into(),
        reason: e.to_string(),
    })
}

fn json_of<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> ScopedKind<'_, T> {
    /// `create` on the new object's Name (or a machine's Uuid).
    pub fn create(&self, obj: T) -> Result<T> {
        typed(self.objects.create(json_of(&obj))?)
    }
    /// `get`.
    pub fn get(&self, id: &str) -> Result<T> {
        typed(self.objects.get(id)?)
    }
    /// `get`.
    pub fn exists(&self, id: &str) -> Result<bool> {
        self.objects.exists(id)
    }
    /// `list` on `*`.
    pub fn list_all(&self) -> Result<Vec<T>> {
        let all = self.objects.list(&Filter::all(), &ListOptions::default())?;
        all.into_iter().map(typed).collect()
    }
    /// `list` on `*`.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        self.objects.count(filter)
    }
    /// `list` on `*`.
    pub fn group_count(&self, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        self.objects.group_count(filter, by)
    }
    /// `list` on `*`.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        self.objects.list(filter, opts)
    }
    /// `update`.
    pub fn replace(&self, id: &str, obj: T) -> Result<T> {
        typed(self.objects.replace(id, json_of(&obj))?)
    }
    /// `update`.
    pub fn update(&self, id: &str, merge: &Value) -> Result<T> {
        typed(self.objects.merge(id, merge)?)
    }
    /// `update`.
    pub fn update_from(&self, id: &str, reference: &Value, desired: &Value) -> Result<T> {
        typed(self.objects.update_from(id, reference, desired)?)
    }
    /// `patch`.
    pub fn patch(&self, id: &str, ops: &Value) -> Result<T> {
        typed(self.objects.patch(id, ops)?)
    }
    /// `param-set`.
    pub fn set_param(&self, id: &str, key: &str, value: Value) -> Result<T> {
        typed(self.objects.set_param(id, key, None, value)?)
    }
    /// `param-set`.
    pub fn set_param_if(
        &self,
        id: &str,
        key: &str,
        expected: Option<&Value>,
        value: Value,
    ) -> Result<T> {
        typed(self.objects.set_param(id, key, Some(expected), value)?)
    }
    /// `param-set`.
    pub fn remove_param(&self, id: &str, key: &str) -> Result<Option<Value>> {
        self.objects.remove_param(id, key)
    }
    /// `get`.
    pub fn params(&self, id: &str, aggregate: bool) -> Result<Map<String, Value>> {
        self.objects.params(id, aggregate)
    }
    /// `get`.
    pub fn get_param(&self, id: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        self.objects.get_param(id, key, aggregate)
    }
    /// `delete`.
    pub fn delete(&self, id: &str) -> Result<T> {
        typed(self.objects.delete(id)?)
    }
}

impl ScopedKind<'_, Machine> {
    /// Writes under lease `id` ([`crate::store::Machines::with_lease`]).
    pub fn with_lease(mut self, id: crate::store::LeaseId) -> Self {
        self.objects.objects = self.objects.objects.with_lease(Some(id));
        self
    }

    /// Writes only while `fence` holds ([`crate::store::Machines::with_fence`]).
    pub fn with_fence(mut self, fence: crate::store::Fence) -> Self {
        self.objects.objects = self.objects.objects.with_fence(Some(fence));
        self
    }

    /// `patch` on every machine named (all checked before anything is written).
    pub fn patch_many(&self, patches: &[(String, Value)]) -> Result<Vec<Machine>> {
        for (addr, _) in patches {
            self.objects.check("patch", addr)?;
        }
        self.objects.objects.patch_many(patches)
    }
}

/// `.GenerateProfileToken` in templates: the store's owner may mint any
/// profile token.
impl crate::template::TokenMinter for Store {
    fn profile_token(&self, profile: &str, ttl_secs: u64) -> Result<String> {
        self.generate_profile_token(profile, Duration::from_secs(ttl_secs))
    }
}

/// `.GenerateProfileToken` through a token: the minting rule of
/// [`Scoped::generate_profile_token`] (the `token` claim, claims covered,
/// expiry clamped to the caller's).
impl crate::template::TokenMinter for Scoped<'_> {
    fn profile_token(&self, profile: &str, ttl_secs: u64) -> Result<String> {
        self.generate_profile_token(profile, Duration::from_secs(ttl_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Claim {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "profiles/get,update/example",
            "machines/*/*",
            "*/*/*",
            "params/get/cluster/profile",
        ] {
            assert_eq!(c(s).to_string(), s);
        }
        // A `*` in a list makes the part a wildcard.
        assert_eq!(c("profiles/get,*/x").to_string(), "profiles/*/x");
    }

    #[test]
    fn parse_errors_say_what_and_where() {
        let cases = [
            ("profiles/get", "three parts"),
            ("", "three parts"),
            ("profiles//x", "action part"),
            ("profiles/get,/x", "action part"),
            ("machnes/get/x", "unknown scope \"machnes\""),
            ("profiles/fetch/x", "unknown action \"fetch\""),
            ("profiles/get/", "specific part"),
            ("profiles/get/a b", "whitespace"),
        ];
        for (s, want) in cases {
            let e = s.parse::<Claim>().unwrap_err();
            assert!(
                matches!(e, Error::Auth(AuthError::Malformed { .. })),
                "{s}: {e:?}"
            );
            assert!(e.to_string().contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn allows_and_closest_miss() {
        let t = TokenClaims {
            claims: vec![c("profiles/get,update/example")],
            expires_at: 0,
            issued_at: 0,
            not_before: None,
            id: String::new(),
        };
        assert!(t.check("profiles", "get", "example").is_ok());
        let miss = |s, a, o| match t.check(s, a, o) {
            Err(Error::Auth(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            miss("profiles", "get", "other"),
            AuthError::WrongObject { .. }
        ));
        assert!(matches!(
            miss("profiles", "delete", "example"),
            AuthError::WrongAction { .. }
        ));
        assert!(matches!(
            miss("machines", "get", "m1"),
            AuthError::WrongKind { .. }
        ));
        assert!(matches!(
            miss("profiles", "list", "*"),
            AuthError::WrongAction { .. }
        ));
        assert_eq!(
            miss("profiles", "update", "other").to_string(),
            "not for other: needs profiles/update/other"
        );
        assert!(t.check_covers(&c("profiles/get/example")).is_ok());
        assert!(t.check_covers(&c("profiles/get/*")).is_err());
        assert!(t.check_covers(&c("profiles/get,delete/example")).is_err());
    }
}
