//! The HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rag_core::{Error, SearchFilter, SearchMode};
use serde::Deserialize;
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::app::{App, Query};

/// Largest JSON body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Largest `k` a request may ask for.
const MAX_K: usize = 50;

/// An error as the API reports it: `{"error": {"code", "message"}}`.
pub struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self
            .0
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace(' ', "_");
        (
            self.0,
            Json(json!({"error": {"code": code, "message": self.1}})),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub question: String,
    pub k: Option<usize>,
    /// `dense`, `sparse` or `hybrid`; the configured mode when absent.
    pub mode: Option<SearchMode>,
    pub collection: Option<String>,
    /// Only passages with any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl AskRequest {
    /// The retrieval part of the request, checked.
    fn query(&self) -> Result<Query, ApiError> {
        if let Some(k) = self.k
            && (k == 0 || k > MAX_K)
        {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("k must be between 1 and {MAX_K}, got {k}"),
            ));
        }
        Ok(Query {
            k: self.k,
            mode: self.mode,
            filter: SearchFilter {
                collection: self.collection.clone(),
                tags: self.tags.clone(),
                // Until API keys carry groups (the HTTP API issue), the open
                // mode serves every group, like the local CLI.
                groups: None,
            },
        })
    }
}

/// Parses a JSON body; the error names the field at fault.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body{at}: {}", e.inner()),
        )
    })
}

async fn ask(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: AskRequest = parse(&body)?;
    Ok(Json(app.ask(&req.question, &req.query()?).await?).into_response())
}

async fn retrieve(
    State(app): State<Arc<App>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: AskRequest = parse(&body)?;
    Ok(Json(app.retrieve(&req.question, &req.query()?).await?).into_response())
}

async fn healthz() -> &'static str {
    "ok"
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/ask", post(ask))
        .route("/v1/retrieve", post(retrieve))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

pub async fn serve(app: Arc<App>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
