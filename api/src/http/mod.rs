//! The HTTP API: the router and what every handler shares. One module per
//! resource; errors are mapped to responses in [`error`] alone.

mod answers;
mod auth;
pub mod chat;
mod documents;
pub mod error;
pub(crate) mod feedback;
pub mod form;
mod guard;
mod health;
pub mod jobs;
mod openapi;
mod sources;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::app::App;
use jobs::Jobs;

/// Largest JSON body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Largest `k` a request may ask for.
pub const MAX_K: usize = 50;
/// Largest upload request, all files together.
const MAX_UPLOAD_BYTES: usize = 100 << 20;
/// Upload jobs that may wait behind the running one.
const JOB_QUEUE: usize = 32;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    /// No key needed (open mode): `rag serve` on loopback without keys, or
    /// `--open`.
    pub open: bool,
    pub jobs: Arc<Jobs>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Answers 504 when a request outlives `server.request_timeout_s`. Chat
/// completions are exempt: a stream lasts as long as its answer, and the
/// generator's own timeouts bound it.
async fn deadline(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // MCP sessions hold a stream open, `ask` takes as long as an answer, and
    // a sync as long as its source.
    let path = request.uri().path();
    if matches!(path, "/v1/chat/completions" | "/mcp")
        || (path.starts_with("/v1/sources/") && path.ends_with("/sync"))
    {
        return next.run(request).await;
    }
    let limit = std::time::Duration::from_secs_f64(state.app.settings.server.request_timeout_s);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than {} s (server.request_timeout_s); retry, or ask for less",
                limit.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// Counts every request and its latency by route (the route's pattern, so
/// ids do not make new series).
async fn track(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::metrics::http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

pub fn router(app: Arc<App>, open: bool) -> anyhow::Result<Router> {
    let jobs = Jobs::start(app.clone(), JOB_QUEUE);
    let mcp = crate::mcp::http_service(app.clone(), open);
    let metrics = crate::metrics::install()?;
    let state = AppState {
        app,
        open,
        jobs,
        metrics,
    };
    let documents = Router::new()
        .route(
            "/v1/documents",
            post(documents::upload).get(documents::list_documents),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES));
    Ok(Router::new()
        .route("/", get(health::page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics_text))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/models", get(answers::models))
        .route("/v1/ask", post(answers::ask))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/retrieve", post(answers::retrieve))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/v1/sources", get(sources::list).post(sources::add))
        .route("/v1/sources/{name}", axum::routing::delete(sources::remove))
        .route("/v1/sources/{name}/sync", post(sources::sync))
        .route("/v1/jobs/{id}", get(documents::job))
        .route(
            "/v1/documents/{id}",
            get(documents::get_document).delete(documents::delete_document),
        )
        .route_service("/mcp", mcp)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .merge(documents)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::same_origin,
        ))
        .route_layer(axum::middleware::from_fn(track))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(error::request_id))
        .with_state(state))
}

pub async fn serve(app: Arc<App>, addr: SocketAddr, open: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    axum::serve(listener, router(app, open)?)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what Kubernetes sends). Requests in flight, streams
/// included, finish before the process exits.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}
