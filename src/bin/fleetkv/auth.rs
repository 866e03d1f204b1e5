//! `-T TOKEN` / `$RS_TOKEN` and `profiles token`.
//!
//! Every verb runs through a [`Scoped`] handle: the token's when one is
//! given, else the owner's, whose one claim is `*/*/*` (the local CLI opened
//! the store's files, so it is the store's owner and every check passes).
//! A refused token exits 6 (see `Failure`).

use std::time::Duration;

use fleetkv::auth::now_secs;
use fleetkv::{Claim, Error, Kind, Scoped, Store, TokenClaims};

use crate::{Failure, Out};

/// The handle verbs use: checked against the token, or the owner's.
pub fn access<'a>(store: &'a Store, token: Option<&str>) -> Out<Scoped<'a>> {
    match token {
        Some(t) => Ok(store.with_token(t)?),
        None => Ok(store.with_claims(owner()?)),
    }
}

/// The owner's claims: everything, never expiring.
fn owner() -> Out<TokenClaims> {
    Ok(TokenClaims {
        claims: vec!["*/*/*".parse::<Claim>()?],
        expires_at: u64::MAX,
        issued_at: now_secs(),
        not_before: None,
        id: "owner".into(),
    })
}

/// Import and export touch everything: a token needs `list` on `*` of every
/// scope to export, and `create` and `update` on `*` of every scope to import.
pub fn check_bulk(s: &Scoped, import: bool) -> Out {
    let actions: &[&str] = if import {
        &["create", "update"]
    } else {
        &["list"]
    };
    for scope in fleetkv::auth::SCOPES {
        for action in actions {
            s.claims().check(scope, action, "*")?;
        }
    }
    Ok(())
}

/// `profiles token NAME [--ttl SECONDS] [--claims CLAIM ...]`: prints a
/// profile token with the extra claims. Through a token, it needs
/// `profiles/token/NAME`, hands on only claims that token holds, and expires
/// no later than it.
pub fn mint(
    store: &Store,
    token: Option<&str>,
    kind: Kind,
    name: &str,
    ttl: u64,
    claims: &[String],
) -> Out {
    profiles_only(kind)?;
    let extra = claims
        .iter()
        .map(|c| c.parse::<Claim>())
        .collect::<Result<Vec<_>, Error>>()
        .map_err(|e| Failure::input(format!("--claims: {e}")))?;
    let ttl = Duration::from_secs(ttl);
    // Through a token, the library's minting rule: the `token` claim, every
    // claim covered, no later expiry than the token's own.
    let token = match token {
        Some(t) => store
            .with_token(t)?
            .generate_profile_token_with(name, ttl, &extra)?,
        None => store.generate_profile_token_with(name, ttl, &extra)?,
    };
    outln!("{token}");
    Ok(())
}

/// `token` mints profile tokens only (embedded and remote alike).
pub fn profiles_only(kind: Kind) -> Out {
    if kind != Kind::Profile {
        return Err(Failure::input(format!(
            "token is a profiles verb, not one for {}",
            kind.plural()
        )));
    }
    Ok(())
}
