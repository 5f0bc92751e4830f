//! Documents and upload jobs: `POST /v1/documents` (multipart, answered
//! with a job), `GET /v1/jobs/{id}`, `GET|DELETE /v1/documents/{id}` and
//! the paged list.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::TryStreamExt;
use rag_core::{DocumentRecord, Error, KeyRole};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorBody, rejection};
use super::{AppState, form};
use crate::keys::Caller;

/// Documents per page of `GET /v1/documents`.
const MAX_PAGE: usize = 500;

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
        .map_err(|e| ApiError::from(Error::internal("the ingest limits").with_source(e)))?;
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
        .map_err(|e| Error::internal("making the ingestor").with_source(e))?
        .delete(&doc.id)
        .await?;
    Ok(
        Json(json!({"deleted": doc.id, "source": doc.source, "chunks": doc.chunk_count}))
            .into_response(),
    )
}
