//! DRP-shaped error responses: `{"Model","Key","Type","Messages":[..],"Code"}`.
//!
//! Every failure the server answers with goes through [`ApiError`], including
//! axum's and tower's own rejections (see `shape`), so a client never
//! sees a bare text body or a 500 for something it sent.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;

/// DRP's error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ApiErrorBody {
    /// The collection the request was about (`machines`, `profiles`, `params`).
    pub model: String,
    /// The object key, or empty.
    pub key: String,
    /// The kind of failure (`NotFound`, `Conflict`, `Invalid`, `Unauthorized`...).
    #[serde(rename = "Type")]
    pub typ: String,
    /// Human-readable explanations; the first is the main one.
    pub messages: Vec<String>,
    /// The HTTP status code.
    pub code: u16,
}

/// An error answer: a status plus DRP's body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ApiErrorBody,
}

impl ApiError {
    /// An error with one message.
    pub fn new(status: StatusCode, typ: &str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ApiErrorBody {
                model: String::new(),
                key: String::new(),
                typ: typ.to_string(),
                messages: vec![msg.into()],
                code: status.as_u16(),
            },
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Invalid", msg)
    }

    /// 401: no or bad credentials.
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", msg)
    }

    /// 403: a valid credential without the claim.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", msg)
    }

    /// 404.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", msg)
    }

    /// 415: wrong content type.
    pub fn media_type(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            msg,
        )
    }

    /// Names the model and key the error is about.
    pub fn about(mut self, model: &str, key: &str) -> Self {
        self.body.model = model.to_string();
        self.body.key = key.to_string();
        self
    }

    /// Replaces the main (first) message, keeping status and type.
    pub fn with_message(mut self, msg: impl Into<String>) -> Self {
        match self.body.messages.first_mut() {
            Some(m) => *m = msg.into(),
            None => self.body.messages.push(msg.into()),
        }
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, one message per line of DRP's `Messages`.
    pub fn messages(&self) -> &[String] {
        &self.body.messages
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, typ) = match &e {
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            Error::Conflict { .. } | Error::RevisionMismatch { .. } => {
                (StatusCode::CONFLICT, "Conflict")
            }
            Error::InUse { .. } => (StatusCode::CONFLICT, "InUse"),
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "Invalid"),
            Error::Schema { .. } => (StatusCode::BAD_REQUEST, "Schema"),
            Error::Filter(_) => (StatusCode::BAD_REQUEST, "Filter"),
            Error::Template(_) => (StatusCode::BAD_REQUEST, "Template"),
            Error::Compacted { .. } => (StatusCode::BAD_REQUEST, "Compacted"),
            Error::Timeout => (StatusCode::REQUEST_TIMEOUT, "Timeout"),
            Error::Stalled { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Stalled"),
            // etcd unreachable or without a leader: retry; never a guess.
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            // The write may have been applied: neither 409 nor 2xx.
            Error::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "OutcomeUnknown"),
            // The disk is full: the server keeps serving reads and accepts
            // writes again by itself once space returns (`super::recover`).
            Error::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage"),
            Error::Auth(a) if a.is_forbidden() => (StatusCode::FORBIDDEN, "Forbidden"),
            Error::Auth(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        };
        let mut err = ApiError::new(status, typ, e.to_string());
        match &e {
            Error::NotFound { kind, key } | Error::AlreadyExists { kind, key } => {
                err = err.about(kind.plural(), key);
            }
            Error::Conflict {
                path,
                expected,
                actual,
            } => {
                let show = |v: &Option<Box<serde_json::Value>>| match v {
                    Some(v) => v.to_string(),
                    None => "absent".to_string(),
                };
                err.body.messages.push(format!("path: {path}"));
                err.body
                    .messages
                    .push(format!("expected: {}", show(expected)));
                err.body.messages.push(format!("actual: {}", show(actual)));
            }
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer, Basic realm=\"fleetkv\""),
            );
        }
        r
    }
}

/// Rewrites an error response that is not JSON (axum's extractor
/// rejections, the router's 404/405, the body limit's 413) into DRP's
/// shape, keeping its status and text; the answer to a HEAD stays bodiless.
pub(crate) async fn shape(resp: Response, is_head: bool) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // The UI's pages (HTML) keep their own error pages.
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if status.as_u16() < 400 || is_json || is_html {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let typ = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "TooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::REQUEST_TIMEOUT => "Timeout",
        _ => "Invalid",
    };
    let mut out = ApiError::new(status, typ, text).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    if is_head {
        *out.body_mut() = Body::empty();
    }
    out
}
