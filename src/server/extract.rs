//! The preamble every `/api/v3/{kind}…` handler shares, done once by axum
//! extractors: the collection from `{kind}`, the object key from `{id}`
//! (checked), a param name from `{*key}`, and the caller's claims for the
//! handler's action ([`Target`]); the collection alone for list and count
//! ([`Listing`]).
//!
//! Owns: the order of those checks (kind, key, params-of, claims), so every
//! handler refuses the same request the same way. Must not: read bodies or
//! query strings (handlers do, after the claims).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::api::{check_key_of, kind_of, with_params, App};
use super::auth::Principal;
use super::error::ApiError;
use crate::Kind;

/// What a handler does to its object, as a claim's action.
pub(crate) trait Action: Send + Sync + 'static {
    /// The claim's action word.
    const NAME: &'static str;
    /// The handler works on an object's params (definitions have none).
    const PARAMS: bool = false;
}

macro_rules! actions {
    ($($ty:ident = $name:literal $(, params $p:literal)?;)*) => {$(
        #[doc = concat!("The `", $name, "` action.")]
        pub(crate) struct $ty;
        impl Action for $ty {
            const NAME: &'static str = $name;
            $(const PARAMS: bool = $p;)?
        }
    )*};
}

actions! {
    Get = "get";
    Update = "update";
    Patch = "patch";
    Delete = "delete";
    ParamsGet = "get", params true;
    ParamsPatch = "patch", params true;
    ParamSet = "param-set", params true;
}

/// The caller, as the authentication layer found it.
fn caller(parts: &Parts) -> Result<Principal, ApiError> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("no credentials"))
}

async fn path_params(
    parts: &mut Parts,
    app: &Arc<App>,
) -> Result<HashMap<String, String>, ApiError> {
    Path::<HashMap<String, String>>::from_request_parts(parts, app)
        .await
        .map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// One object of a collection, its caller authorized for action `A`.
pub(crate) struct Target<A> {
    pub(crate) kind: Kind,
    /// The object's key or address (`{id}`).
    pub(crate) id: String,
    /// `{*key}`: a param's name, on the routes that have one.
    pub(crate) key: String,
    action: PhantomData<A>,
}

impl<A: Action> FromRequestParts<Arc<App>> for Target<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let mut p = path_params(parts, app).await?;
        let kind = kind_of(p.get("kind").map_or("", String::as_str))?;
        let id = p.remove("id").unwrap_or_default();
        check_key_of(kind, &id)?;
        if A::PARAMS {
            with_params(kind)?;
        }
        app.auth
            .authorize(&caller(parts)?, kind.plural(), A::NAME, &id)?;
        Ok(Target {
            kind,
            id,
            key: p.remove("key").unwrap_or_default(),
            action: PhantomData,
        })
    }
}

/// A whole collection (list, count), its caller authorized to list it.
pub(crate) struct Listing {
    pub(crate) kind: Kind,
}

impl FromRequestParts<Arc<App>> for Listing {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let p = path_params(parts, app).await?;
        let kind = kind_of(p.get("kind").map_or("", String::as_str))?;
        app.auth
            .authorize(&caller(parts)?, kind.plural(), "list", "")?;
        Ok(Listing { kind })
    }
}
