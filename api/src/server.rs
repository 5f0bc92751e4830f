//! The HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::TryStreamExt;
use rag_core::{Answer, DocumentRecord, Error, Hit, KeyRole, SearchFilter, SearchMode};
use rag_ingest::form;
use serde::Deserialize;
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::app::App;
use crate::jobs::Jobs;
use crate::keys::Caller;

/// Largest JSON body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Largest `k` a request may ask for.
pub const MAX_K: usize = 50;
/// Largest upload request, all files together.
const MAX_UPLOAD_BYTES: usize = 100 << 20;
/// Documents per page of `GET /v1/documents`.
const MAX_PAGE: usize = 500;
/// Upload jobs that may wait behind the running one.
const JOB_QUEUE: usize = 32;

/// The error body, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// The status in words: `bad_request`, `not_found`, ...
    code: String,
    /// What went wrong and what to do about it.
    message: String,
}

/// An error as the API reports it: `{"error": {"code", "message"}}`.
pub struct ApiError(pub StatusCode, pub String);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl ApiError {
    /// The error's body: `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        let code = self
            .0
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace(' ', "_");
        json!({"error": {"code": code, "message": self.1}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Seconds a client should wait before trying again.
        let retry_after = match self.0 {
            StatusCode::TOO_MANY_REQUESTS => Some("1"),
            StatusCode::SERVICE_UNAVAILABLE => Some("5"),
            _ => None,
        };
        let mut response = (self.0, Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(seconds),
            );
        }
        response
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
    fn query(&self, caller: &Caller) -> Result<crate::app::Query, ApiError> {
        if let Some(k) = self.k
            && (k == 0 || k > MAX_K)
        {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("k must be between 1 and {MAX_K}, got {k}"),
            ));
        }
        Ok(crate::app::Query {
            k: self.k,
            mode: self.mode,
            filter: SearchFilter {
                collection: self.collection.clone(),
                tags: self.tags.clone(),
                groups: caller.groups.clone(),
            },
            sampling: Default::default(),
        })
    }
}

/// Parses a JSON body; the error names the field at fault.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
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

#[utoipa::path(post, path = "/v1/ask", tag = "answers", request_body = AskRequest,
    responses((status = 200, description = "A grounded answer with citations, or the abstention", body = Answer),
        (status = 400, description = "Bad input; the message names the field", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 429, description = "Generation queue full; see Retry-After", body = ErrorBody), (status = 503, description = "A backend is down; see Retry-After", body = ErrorBody)))]
pub(crate) async fn ask(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let app = &state.app;
    let req: AskRequest = parse(&body)?;
    Ok(Json(app.ask(&req.question, &req.query(&caller)?).await?).into_response())
}

#[utoipa::path(post, path = "/v1/retrieve", tag = "answers", request_body = AskRequest,
    responses((status = 200, description = "Hits, best first", body = Vec<Hit>), (status = 400, description = "Bad input; the message names the field", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 503, description = "A backend is down; see Retry-After", body = ErrorBody)))]
pub(crate) async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let app = &state.app;
    let req: AskRequest = parse(&body)?;
    Ok(Json(app.retrieve(&req.question, &req.query(&caller)?).await?).into_response())
}

/// `GET /`: the chat page. One self-contained file: no CDN, no fonts to
/// fetch, so it works offline.
async fn page() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("page/index.html"),
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

/// `GET /v1/models`, in OpenAI's list shape: `rag` (grounded answers) and
/// the generator's own model.
#[utoipa::path(get, path = "/v1/models", tag = "answers",
    responses((status = 200, description = "`rag` and the generator's own model, in OpenAI's list shape")))]
pub(crate) async fn models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let generator = state.app.generator().await?;
    Ok(Json(json!({
        "object": "list",
        "data": [
            {"id": crate::chat::RAG_MODEL, "object": "model", "owned_by": "rag",
             "description": "answers from the documents, with citations"},
            {"id": generator.model_id(), "object": "model", "owned_by": "rag",
             "description": "the generator alone, without retrieval"},
        ],
    }))
    .into_response())
}

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

/// Answers 504 when a request outlives `server.request_timeout_s`. Chat
/// completions are exempt: a stream lasts as long as its answer, and the
/// generator's own timeouts bound it.
async fn deadline(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/v1/chat/completions" {
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

fn rejection(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// The file name of an upload, reduced to its last component: it names the
/// document and picks the loader, and is never used as a path.
/// `POST /v1/documents`: multipart with one or more files and the fields
/// `collection`, `tags` and `groups` (comma-separated or repeated). Each
/// file is checked now (type, size, readable); the good ones are queued as
/// one job (202), the bad ones are listed as rejected. Alone, a bad file
/// gets its own status: 413, 415 or 422.
#[utoipa::path(post, path = "/v1/documents", tag = "documents",
    request_body(content_type = "multipart/form-data", description = "`file` fields (one or more), and `collection`, `tags`, `groups`"),
    responses((status = 202, description = "Accepted as a job: {job_id, status_url, job}"), (status = 400, description = "Bad input; the message names the field", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 403, description = "The key's role does not allow it", body = ErrorBody),
        (status = 413, description = "A file or the request is too large", body = ErrorBody),
        (status = 415, description = "Unsupported file type, or not multipart", body = ErrorBody),
        (status = 422, description = "A file cannot be read (the reason is given)", body = ErrorBody), (status = 429, description = "Generation queue full; see Retry-After", body = ErrorBody)))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    caller.require(KeyRole::Uploader, "upload documents")?;
    let form_error = |e: form::FormError| {
        rejection(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.message,
        )
    };
    let content_type = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let boundary = form::boundary(content_type).map_err(form_error)?;
    let limits = state
        .app
        .settings
        .ingest
        .limits()
        .map_err(|e| ApiError::from(Error::internal(format!("{e:#}"))))?;
    // The server's body limit shows up as a stream error; the form reads
    // it as 413.
    let body = request.into_body().into_data_stream().map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Box::new(form::BodyTooLarge) as Box<dyn std::error::Error + Send + Sync>
        } else {
            Box::new(e)
        }
    });
    let form::Upload {
        mut options,
        inputs,
        rejected,
    } = form::read_form(body, &boundary, &limits)
        .await
        .map_err(form_error)?;
    if inputs.is_empty() {
        return Err(match rejected.first() {
            None => rejection(
                StatusCode::BAD_REQUEST,
                "no file in the request; send one or more `file` fields",
            ),
            Some(first) => rejection(
                StatusCode::from_u16(first.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.file, r.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        });
    }
    // A restricted key uploads into its own groups only, and replaces only
    // documents it covers (`rag_ingest::target`).
    options.writer_groups = caller.groups.clone();
    if let Some(mine) = &caller.groups {
        if options.groups.is_empty() {
            options.groups = mine.clone();
        } else if let Some(other) = options.groups.iter().find(|g| !mine.contains(g)) {
            return Err(rejection(
                StatusCode::FORBIDDEN,
                format!(
                    "this key cannot upload into group {other:?}; its groups: {}",
                    mine.join(", ")
                ),
            ));
        }
    }
    let job = state.jobs.submit(inputs, options, rejected)?;
    let body = json!({
        "job_id": job.id,
        "status_url": format!("/v1/jobs/{}", job.id),
        "job": job,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "documents", params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "State and per-document outcomes"), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 404, description = "No such thing", body = ErrorBody)))]
pub(crate) async fn job(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Another group's job is answered like a missing one: its file names
    // are not the caller's to see, nor is its existence.
    let job = state
        .jobs
        .get(&id)
        .filter(|job| caller.sees_groups(&job.groups))
        .ok_or_else(|| rejection(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    Ok(Json(job).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    collection: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `GET /v1/documents?collection=&offset=&limit=`, ordered by collection
/// and source.
#[utoipa::path(get, path = "/v1/documents", tag = "documents",
    params(("collection" = Option<String>, Query, description = "only this collection"),
        ("offset" = Option<usize>, Query, description = "skip this many"),
        ("limit" = Option<usize>, Query, description = "page size, 1 to 500 (50)")),
    responses((status = 200, description = "{documents, total, offset, limit}"), (status = 400, description = "Bad input; the message names the field", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody)))]
pub(crate) async fn list_documents(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| rejection(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(rejection(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}, got {limit}"),
        ));
    }
    let (documents, total) = if caller.groups.is_none() {
        state
            .app
            .docs
            .documents_page(q.collection.as_deref(), q.offset, limit)
            .await?
    } else {
        // A restricted key pages through its groups' documents only, and
        // `total` counts those. Groups are a list per row, so the filter
        // runs here rather than in SQL (one statement for SQLite and
        // Postgres alike); rows are small.
        let visible: Vec<_> = state
            .app
            .docs
            .documents(q.collection.as_deref())
            .await?
            .into_iter()
            .filter(|d| caller.sees(d))
            .collect();
        let total = visible.len();
        let page = visible.into_iter().skip(q.offset).take(limit).collect();
        (page, total)
    };
    Ok(Json(json!({
        "documents": documents, "total": total, "offset": q.offset, "limit": limit,
    }))
    .into_response())
}

/// The document `id`, or 404.
async fn find_document(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<DocumentRecord, ApiError> {
    state
        .app
        .docs
        .document(id)
        .await?
        // Another group's document does not exist, as far as the caller knows.
        .filter(|d| caller.sees(d))
        .ok_or_else(|| rejection(StatusCode::NOT_FOUND, format!("no document {id}")))
}

#[utoipa::path(get, path = "/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "document id")),
    responses((status = 200, description = "The document", body = DocumentRecord), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 404, description = "No such thing", body = ErrorBody)))]
pub(crate) async fn get_document(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(find_document(&state, &caller, &id).await?).into_response())
}

/// `DELETE /v1/documents/{id}`: rows first (gone from answers at once),
/// then vectors.
#[utoipa::path(delete, path = "/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "document id")),
    responses((status = 200, description = "{deleted, source, chunks}: rows and vectors are gone"), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 403, description = "The key's role does not allow it", body = ErrorBody), (status = 404, description = "No such thing", body = ErrorBody)))]
pub(crate) async fn delete_document(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(KeyRole::Uploader, "delete documents")?;
    let _writes = state.jobs.writes.lock().await;
    let doc = find_document(&state, &caller, &id).await?;
    if !caller.covers(&doc) {
        return Err(rejection(
            StatusCode::FORBIDDEN,
            "this document is shared with groups this key does not have; a key with all of \
             its groups, or an admin key, can delete it",
        ));
    }
    state
        .app
        .ingestor()
        .map_err(|e| Error::internal(format!("{e:#}")))?
        .delete(&doc.id)
        .await?;
    Ok(
        Json(json!({"deleted": doc.id, "source": doc.source, "chunks": doc.chunk_count}))
            .into_response(),
    )
}

pub fn router(app: Arc<App>, open: bool) -> anyhow::Result<Router> {
    let jobs = Jobs::start(app.clone(), JOB_QUEUE);
    let metrics = crate::metrics::install()?;
    let state = AppState {
        app,
        open,
        jobs,
        metrics,
    };
    let documents = Router::new()
        .route("/v1/documents", post(upload).get(list_documents))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES));
    Ok(Router::new()
        .route("/", get(page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/v1/models", get(models))
        .route("/v1/ask", post(ask))
        .route("/v1/chat/completions", post(crate::chat::completions))
        .route("/v1/retrieve", post(retrieve))
        .route("/v1/jobs/{id}", get(job))
        .route(
            "/v1/documents/{id}",
            get(get_document).delete(delete_document),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .merge(documents)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::keys::authenticate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
        .route_layer(axum::middleware::from_fn(track))
        .layer(TraceLayer::new_for_http())
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
