//! The HTTP health endpoint: `/healthz`, `/readyz` and `/metrics`.
//!
//! It is off unless `health.listen` is set. `/healthz` returns 200 while
//! the process serves requests. `/readyz` returns 200 only when flupd is
//! connected, every subscription is granted and no sink is stuck, and
//! otherwise 503 with one reason per line. `/metrics` renders the metrics in
//! the Prometheus text format on each request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::mqtt::LinkState;
use crate::service::{Monitor, ServiceError};

/// The content type of the Prometheus text format, version 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Shared {
    monitor: Arc<Monitor>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `addr` and serves the endpoint until `shutdown` fires. Binding
/// happens before this returns, so a taken port fails the start.
pub async fn serve(
    addr: SocketAddr,
    monitor: Arc<Monitor>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServiceError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let shared = Shared { monitor, metrics: crate::metrics::install() };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    tracing::info!(addr = %bound, "health endpoint listening");
    tracker.spawn(
        async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::error!(%error, "health endpoint failed");
            }
        }
        .instrument(tracing::info_span!("health")),
    );
    Ok(())
}

async fn healthz() -> &'static str {
    "alive\n"
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let problems = shared.monitor.readiness_problems();
    if problems.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut body = String::from("not ready:\n");
    for problem in problems {
        body.push_str(&problem);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let Some(handle) = &shared.metrics else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed\n").into_response();
    };
    let sinks = shared.monitor.sinks();
    let views: Vec<crate::metrics::SinkView<'_>> =
        sinks.iter().map(|(name, stats)| crate::metrics::SinkView { name, stats }).collect();
    let state = shared.monitor.link_state();
    let connected = matches!(state, Some(LinkState::Connected { .. } | LinkState::Subscribed));
    let subscribed = state == Some(LinkState::Subscribed);
    let body = crate::metrics::render(handle, &views, connected, subscribed);
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], body).into_response()
}
