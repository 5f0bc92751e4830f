//! Who a request is: the key it presents, resolved to a [`Caller`] in the
//! request's extensions.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::keys::{Caller, hash};

/// Paths anyone may call: the page (it asks for a key itself), probes and
/// metrics.
fn public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/favicon.ico" | "/healthz" | "/readyz" | "/metrics" | "/openapi.json"
    )
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError(StatusCode::UNAUTHORIZED, message.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Resolves the caller from `Authorization: Bearer <key>` (or `X-Api-Key`)
/// and puts it in the request's extensions. Without a key: the open caller
/// in open mode, else 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if public(request.uri().path()) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(|k| k.trim().to_string())
        // OpenAI clients send a placeholder key even when none is needed.
        .filter(|k| !state.open || k.starts_with("rag_"));
    let caller = match presented {
        None if state.open => Caller::open(),
        None => {
            return unauthorized(
                "this server needs an API key: send `Authorization: Bearer <key>` (an admin creates one with `rag keys create`)",
            );
        }
        Some(key) => match state.app.docs.key_by_hash(&hash(&key)).await {
            Ok(Some(record)) if record.revoked_at.is_none() => Caller::of(&record),
            Ok(Some(_)) => return unauthorized("this API key was revoked"),
            Ok(None) => return unauthorized("unknown API key"),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    request.extensions_mut().insert(Arc::new(caller));
    next.run(request).await
}
