//! `POST /v1/feedback`: a reader rates an answer it was given. Every
//! grounded answer is kept under its id (the `id` of a chat completion,
//! `answer_id` of `/v1/ask`), with the key that asked; only that key may
//! rate it, and another key's answer reads as missing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rag_core::{Answer, AnswerRecord};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ErrorBody, parse};
use crate::app::App;
use crate::keys::Caller;

/// The longest comment kept.
const MAX_COMMENT: usize = 2000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The answer's id: `id` of the chat completion, `answer_id` of /v1/ask.
    pub answer_id: String,
    /// `up` or `down`.
    pub rating: String,
    /// What was wrong or right, in the reader's words.
    pub comment: Option<String>,
}

/// Keeps an answer so that it can be rated. A database that cannot keep
/// it costs the rating, not the answer: the failure is logged.
pub(crate) async fn remember(
    app: &App,
    caller: &Caller,
    id: &str,
    question: &str,
    answer: &Answer,
) {
    let record = AnswerRecord {
        id: id.to_string(),
        key_id: caller.key_id.clone(),
        question: question.to_string(),
        answer: answer.answer.clone(),
        citations: serde_json::to_string(&answer.citations).unwrap_or_else(|_| "[]".into()),
        abstained: answer.abstained,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ..Default::default()
    };
    if let Err(e) = app.docs.record_answer(&record).await {
        tracing::warn!(answer = id, error = %e.chain(), "the answer could not be kept for feedback");
    }
}

#[utoipa::path(post, path = "/v1/feedback", tag = "answers", request_body = FeedbackRequest,
    responses((status = 200, description = "The rating is stored with the question, the answer and its citations"),
        (status = 400, description = "Bad input; the message names the field", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 404, description = "No answer of this key has that id", body = ErrorBody),
        (status = 503, description = "The database is down; see Retry-After", body = ErrorBody)))]
pub(crate) async fn feedback(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: FeedbackRequest = parse(&body)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    if !matches!(req.rating.as_str(), "up" | "down") {
        return Err(bad(format!(
            "rating must be \"up\" or \"down\", got {:?}",
            req.rating
        )));
    }
    let comment = req
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if comment.is_some_and(|c| c.chars().count() > MAX_COMMENT) {
        return Err(bad(format!(
            "comment is longer than {MAX_COMMENT} characters"
        )));
    }
    let id = req.answer_id.trim();
    let rated = !id.is_empty()
        && id.len() <= 128
        && state
            .app
            .docs
            .rate_answer(
                id,
                caller.key_id.as_deref(),
                &req.rating,
                comment,
                &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .await?;
    if !rated {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no answer {id:?} to rate (an answer is rated with the key that asked for it)"),
        ));
    }
    Ok(Json(json!({ "answer_id": id, "rating": req.rating })).into_response())
}
