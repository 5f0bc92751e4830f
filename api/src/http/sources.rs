//! Sources over HTTP, for admin keys only (like `rag sources` and `rag
//! sync`): `GET|POST /v1/sources`, `DELETE /v1/sources/{name}` and `POST
//! /v1/sources/{name}/sync`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rag_core::{Error, KeyRole, SourceRecord};
use rag_ingest::sources::SourceConfig;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ErrorBody, parse};
use crate::keys::Caller;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSource {
    pub name: String,
    /// `{"kind": "git", "url", "branch"?, "path"?, "url_template"?}` or
    /// `{"kind": "web", "start_url", "prefix"?, "max_pages"?, "delay_ms"?}`.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    #[serde(default = "default_collection")]
    pub collection: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_collection() -> String {
    "default".into()
}

fn view(record: &SourceRecord) -> serde_json::Value {
    json!({
        "name": record.name,
        "kind": record.kind,
        "config": SourceConfig::of(record).map(|c| c.shown()).unwrap_or_default(),
        "collection": record.collection,
        "groups": record.groups,
        "tags": record.tags,
        "created_at": record.created_at,
        "synced_at": record.synced_at,
    })
}

#[utoipa::path(get, path = "/v1/sources", tag = "sources",
    responses((status = 200, description = "Every source"), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Result<Response, ApiError> {
    caller.require(KeyRole::Admin, "list sources")?;
    let sources = state.app.docs.sources().await?;
    Ok(Json(sources.iter().map(view).collect::<Vec<_>>()).into_response())
}

#[utoipa::path(post, path = "/v1/sources", tag = "sources", request_body = NewSource,
    responses((status = 201, description = "The source, not synced yet"), (status = 400, description = "Bad input; the message says what to fix", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub(crate) async fn add(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(KeyRole::Admin, "add sources")?;
    let req: NewSource = parse(&body)?;
    rag_ingest::sources::validate_name(&req.name)?;
    let config: SourceConfig =
        serde_json::from_value(req.config).map_err(|e| Error::invalid(format!("config: {e}")))?;
    config.validate()?;
    config.check_host_allowed(&state.app.settings.sources.allowed_hosts)?;
    if let SourceConfig::Git(git) = &config
        && !git.remote()
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "over the API a git source is a remote repository (https://host/repo or \
             ssh://host/repo, or user@host:repo); a local path or file:// reads the server's \
             own disk, so only `rag sources add` on the server takes one"
                .into(),
        ));
    }
    let record = SourceRecord {
        name: req.name,
        kind: config.kind().into(),
        config: config.to_json(),
        collection: req.collection,
        tags: req.tags,
        groups: req.groups,
        state: String::new(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        synced_at: None,
    };
    state.app.docs.add_source(&record).await?;
    Ok((StatusCode::CREATED, Json(view(&record))).into_response())
}

#[utoipa::path(delete, path = "/v1/sources/{name}", tag = "sources", params(("name" = String, Path, description = "source name")),
    responses((status = 200, description = "Removed, with its documents"), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 403, description = "Not an admin key", body = ErrorBody), (status = 404, description = "No such source", body = ErrorBody), (status = 409, description = "Another process is syncing or removing the source; retry when it has finished", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(KeyRole::Admin, "remove sources")?;
    // One writer at a time: a removal never interleaves with a sync or an
    // upload, which could write documents of the source it removes.
    let _writes = state.jobs.writes.lock().await;
    let ingestor = ingestor(&state)?;
    let cache = state.app.settings.data_dir.join("sources").join(&name);
    let documents = rag_ingest::sources::remove(&ingestor, &name, &cache).await?;
    Ok(Json(json!({ "removed": name, "documents": documents })).into_response())
}

/// `?force=true`: delete what the source no longer holds even past
/// `sources.max_delete_fraction`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncParams {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(post, path = "/v1/sources/{name}/sync", tag = "sources", params(("name" = String, Path, description = "source name"), ("force" = Option<bool>, Query, description = "delete what the source no longer holds even past sources.max_delete_fraction")),
    responses((status = 200, description = "What the sync did: {source, added, updated, unchanged, deleted, forbidden, failed, failures, seconds}"), (status = 400, description = "The source cannot be read now; the message says why", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 403, description = "Not an admin key", body = ErrorBody), (status = 404, description = "No such source", body = ErrorBody), (status = 409, description = "Another process is syncing or removing the source; retry when it has finished", body = ErrorBody)))]
pub(crate) async fn sync(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(name): Path<String>,
    Query(params): Query<SyncParams>,
) -> Result<Response, ApiError> {
    caller.require(KeyRole::Admin, "sync sources")?;
    let Some(record) = state.app.docs.source(&name).await? else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no source named {name:?}"),
        ));
    };
    // One writer at a time (see `remove`); uploads wait for the sync.
    let _writes = state.jobs.writes.lock().await;
    let mut ingestor = ingestor(&state)?;
    if params.force {
        ingestor.limits.max_delete_fraction = f64::INFINITY;
    }
    let cache = state.app.settings.data_dir.join("sources").join(&name);
    let allowed = &state.app.settings.sources.allowed_hosts;
    let report = rag_ingest::sources::sync(&ingestor, &record, &cache, allowed, &|_| {}).await?;
    Ok(Json(report).into_response())
}

fn ingestor(state: &AppState) -> Result<rag_ingest::Ingestor, ApiError> {
    Ok(state
        .app
        .ingestor()
        .map_err(|e| Error::internal("making the ingestor").with_source(e))?)
}
