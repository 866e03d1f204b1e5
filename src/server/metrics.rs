//! `GET /metrics`: the figures of [`crate::telemetry`] in Prometheus' text
//! format. (The server's front middleware counts and times every request
//! through [`telemetry::RequestRecorder`].)
//!
//! Owns: installing the process's Prometheus recorder (once), the
//! request method labels, the scrape handler on the main listener (claim `metrics/get/*`; the admin
//! key and users pass) and the router of the separate unauthenticated
//! listener (`--metrics-listen`). Must not: name metrics (see
//! [`crate::telemetry`]) or read the store other than through
//! [`telemetry::observe_store`].
//!
//! The exporter is `metrics-exporter-prometheus` built without its HTTP
//! listener and push gateway: it renders text; this server serves it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::api::{ApiResult, App, St};
use super::auth::Principal;
use super::error::{ApiError, ApiErrorBody};
use crate::telemetry;

/// The exposition format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histograms are drained when nobody scrapes (they buffer every
/// observation until then).
pub(crate) const UPKEEP: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use; `None` when
/// another recorder was installed first (an embedding application's).
pub(crate) fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(telemetry::DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(telemetry::WATCH_LAG.into()),
                        telemetry::LAG_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    eprintln!("fleetkv: metrics disabled: {e}");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    telemetry::describe();
                    Some(handle)
                }
                Err(_) => {
                    eprintln!(
                        "fleetkv: another metrics recorder is installed; GET /metrics is disabled"
                    );
                    None
                }
            }
        })
        .clone()
}

/// Method labels: a fixed list, so a client's invented method cannot add
/// series.
pub(crate) fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The metrics in Prometheus' text format.
#[utoipa::path(get, tag = "operations", path = "/metrics",
    responses(
        (status = 200, content_type = "text/plain", body = String,
            description = "Prometheus text format (version 0.0.4). Needs the claim `metrics/get/*` (the admin key and users pass). `serve --metrics-listen ADDR` serves the same without credentials on a separate address."),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 503, description = "Another metrics recorder is installed in this process", body = ApiErrorBody)))]
pub async fn scrape(State(app): St, Extension(who): Extension<Principal>) -> ApiResult {
    app.auth.authorize(&who, "metrics", "get", "")?;
    render(app).await
}

/// The separate listener's router: `GET /metrics` without credentials.
pub(crate) fn open_router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(app): St| async move { render(app).await.into_response() }),
        )
        .fallback(|| async {
            ApiError::not_found("no such endpoint; this listener serves /metrics")
        })
        .with_state(app)
}

async fn render(app: Arc<App>) -> ApiResult {
    let Some(handle) = app.metrics.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "another metrics recorder is installed in this process",
        ));
    };
    telemetry::observe_waiters(
        app.max_waiters
            .saturating_sub(app.waiters.available_permits()),
        app.max_waiters,
    );
    // Measuring the indexes walks them under the state's read lock: off the
    // async workers.
    let text = app
        .on_pool(move |store| {
            telemetry::observe_store(store);
            handle.run_upkeep();
            Ok::<_, ApiError>(handle.render())
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}
