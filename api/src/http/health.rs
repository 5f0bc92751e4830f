//! The chat page, probes and metrics: the routes anyone may call.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use rag_core::{SearchFilter, SearchMode};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// `GET /`: the chat page. One self-contained file: no CDN, no fonts to
/// fetch, so it works offline.
pub(super) async fn page() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../page/index.html"),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the generator is loaded and both stores answer,
/// else 503 with what is not ready.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Models loaded and stores reachable"), (status = 503, description = "A backend is down; see Retry-After", body = ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let app = &state.app;
    let documents = app.docs.document_count().await?;
    // A one-hit search reaches the vector store (an empty one answers too).
    app.vectors
        .search(&rag_core::VectorQuery {
            dense: vec![0.0; app.embedder.dimension()],
            text: String::new(),
            mode: SearchMode::Dense,
            fusion: Default::default(),
            filter: SearchFilter::default(),
            limit: 1,
            exact: false,
            hnsw_ef: None,
        })
        .await?;
    let generator = app.generator().await?;
    generator.check().await?;
    // Ready, but with something an operator should fix (a collection with
    // fewer replicas than configured).
    // (The store logs each warning once, when it appears.)
    let warnings = app.vectors.warnings().await;
    Ok(Json(json!({
        "status": "ready",
        "documents": documents,
        "generator": generator.model_id(),
        "embedder": app.embedder.model_id(),
        "warnings": warnings,
    }))
    .into_response())
}

/// `GET /metrics`, in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    crate::metrics::queue_depth(state.app.generations_in_flight());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
