//! `GET /openapi.json`: the API described from the handlers' own
//! annotations and the types they take and return (utoipa).

use axum::Json;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rag",
        description = "Grounded answers from your own documents, with citations. OpenAI-compatible chat at /v1/chat/completions."
    ),
    paths(
        super::chat::completions,
        super::answers::ask,
        super::answers::retrieve,
        super::answers::models,
        super::feedback::feedback,
        super::sources::list,
        super::sources::add,
        super::sources::remove,
        super::sources::sync,
        super::documents::upload,
        super::documents::list_documents,
        super::documents::get_document,
        super::documents::delete_document,
        super::documents::job,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics_text,
    ),
    modifiers(&BearerKeys),
    security(("api_key" = []))
)]
pub struct ApiDoc;

/// API keys travel as `Authorization: Bearer <key>`.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
