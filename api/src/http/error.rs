//! Errors as the API reports them, mapped from [`rag_core::Error`] in one
//! place: `{"error": {"code", "message", "request_id"}}`. A client's own
//! mistake gets a message that says what to fix; an internal error is
//! logged with its whole chain and the request id, and the client gets the
//! id and a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rag_core::{Error, ErrorKind};
use serde_json::json;
use tracing::Instrument;

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
    /// This request's id, also in the `x-request-id` header: the server's
    /// log has the details of an internal error under it.
    request_id: Option<String>,
}

/// An error as the API reports it: `{"error": {"code", "message",
/// "request_id"}}`.
pub struct ApiError(pub StatusCode, pub String);

tokio::task_local! {
    /// The id of the request being handled (see [`request_id`]).
    static REQUEST_ID: String;
}

/// The id of the request this task handles, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(String::clone).ok()
}

/// `work` carrying this request's id, for a task spawned to finish the
/// request (a stream): task-locals do not cross `tokio::spawn`.
pub fn in_this_request<F: std::future::Future>(
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    let id = current_request_id().unwrap_or_default();
    REQUEST_ID.scope(id, work.instrument(tracing::Span::current()))
}

/// Gives every request an id of our own (a caller's `x-request-id` is
/// logged beside it, never trusted as ours: it could name another
/// request). Handlers run inside a span carrying it, at a level every
/// filter keeps, and the response carries it back.
pub async fn request_id(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let client = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .unwrap_or_default()
        .to_string();
    let span = tracing::error_span!("request", request_id = %id, client_request_id = %client);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request).instrument(span))
        .await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

impl From<Error> for ApiError {
    /// The one place errors become statuses. A caller's mistake keeps its
    /// message; a backend's is logged with its chain and keeps only our
    /// own message; an internal error is logged and answered generically.
    fn from(e: Error) -> Self {
        let id = current_request_id().unwrap_or_default();
        match e.kind() {
            ErrorKind::InvalidInput => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            ErrorKind::NotFound => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            ErrorKind::Busy => ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            ErrorKind::Conflict => ApiError(StatusCode::CONFLICT, e.to_string()),
            ErrorKind::Unavailable => {
                tracing::warn!(request_id = %id, error = %e.chain(), "a backend is unavailable");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ErrorKind::Internal => {
                tracing::error!(request_id = %id, error = %e.chain(), "internal error");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "internal error; the server's log has the details under request id {id}"
                    ),
                )
            }
        }
    }
}

impl ApiError {
    /// The error's body: `{"error": {"code", "message", "request_id"}}`.
    pub fn body(&self) -> serde_json::Value {
        let code = self
            .0
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace(' ', "_");
        json!({"error": {"code": code, "message": self.1, "request_id": current_request_id()}})
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

pub fn rejection(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_reach_the_client_as_an_id_and_never_as_their_text() {
        let error = Error::internal("the chunk table is corrupt").with_source(
            std::io::Error::other("/var/lib/rag/meta.db: disk I/O error"),
        );
        let api = REQUEST_ID
            .scope("req-1".to_string(), async { ApiError::from(error) })
            .await;
        assert_eq!(api.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(api.1.contains("req-1"), "{}", api.1);
        assert!(
            !api.1.contains("corrupt") && !api.1.contains("meta.db"),
            "{}",
            api.1
        );

        let caller = ApiError::from(Error::invalid("k must be between 1 and 50"));
        assert_eq!(caller.0, StatusCode::BAD_REQUEST);
        assert_eq!(caller.1, "k must be between 1 and 50");
        let busy = ApiError::from(Error::busy("queue full"));
        assert_eq!(busy.0, StatusCode::TOO_MANY_REQUESTS);
    }
}
