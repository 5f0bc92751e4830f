//! `POST /v1/ask`, `POST /v1/retrieve` and `GET /v1/models`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rag_core::{Answer, Hit, SearchFilter, SearchMode};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorBody, parse};
use super::{AppState, MAX_K};
use crate::keys::Caller;

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

#[utoipa::path(post, path = "/v1/ask", tag = "answers", request_body = AskRequest,
    responses((status = 200, description = "A grounded answer with citations, or the abstention, and its `answer_id` (for POST /v1/feedback)", body = Answer),
        (status = 400, description = "Bad input; the message names the field", body = ErrorBody), (status = 401, description = "No or unknown API key", body = ErrorBody), (status = 429, description = "Generation queue full; see Retry-After", body = ErrorBody), (status = 503, description = "A backend is down; see Retry-After", body = ErrorBody)))]
pub(crate) async fn ask(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let app = &state.app;
    let req: AskRequest = parse(&body)?;
    let answer = app.ask(&req.question, &req.query(&caller)?).await?;
    let id = super::chat::answer_id();
    super::feedback::remember(app, &caller, &id, &req.question, &answer).await;
    let mut body = serde_json::to_value(&answer).map_err(|e| {
        ApiError::from(rag_core::Error::internal("serialising an answer").with_source(e))
    })?;
    body["answer_id"] = id.into();
    Ok(Json(body).into_response())
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

/// `GET /v1/models`, in OpenAI's list shape: `rag` (grounded answers) and
/// the generator's own model.
#[utoipa::path(get, path = "/v1/models", tag = "answers",
    responses((status = 200, description = "`rag` and the generator's own model, in OpenAI's list shape")))]
pub(crate) async fn models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let generator = state.app.generator().await?;
    Ok(Json(json!({
        "object": "list",
        "data": [
            {"id": super::chat::RAG_MODEL, "object": "model", "owned_by": "rag",
             "description": "answers from the documents, with citations"},
            {"id": generator.model_id(), "object": "model", "owned_by": "rag",
             "description": "the generator alone, without retrieval"},
        ],
    }))
    .into_response())
}
