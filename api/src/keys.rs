//! API keys: `rag keys create|list|revoke`, and who a request is.
//!
//! A key is 32 random bytes, shown once at creation; the database keeps its
//! SHA-256. A fast hash is enough here, unlike for passwords: the keys are
//! random and long, so there is nothing to guess from the hash.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rag_core::{ApiKeyRecord, DocumentRecord, DocumentStore, KeyRole};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::server::{ApiError, AppState};

/// The group that stands for every group: a key with it sees every
/// document, group-less ones included.
pub const ALL_GROUPS: &str = "*";

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates and stores a key; returns it (the only time it is shown).
pub async fn create(
    docs: &dyn DocumentStore,
    name: &str,
    role: KeyRole,
    groups: Vec<String>,
) -> anyhow::Result<(String, ApiKeyRecord)> {
    anyhow::ensure!(!name.trim().is_empty(), "give the key a --name");
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("rag_{}", hex::encode(bytes));
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        name: name.trim().to_string(),
        key_hash: hash(&key),
        role,
        groups,
        created_at: chrono::Utc::now().to_rfc3339(),
        revoked_at: None,
    };
    docs.create_key(&record).await?;
    Ok((key, record))
}

/// Who is calling: a key's role and the groups whose documents it sees
/// (`None`: every document).
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: KeyRole,
    pub groups: Option<Vec<String>>,
}

impl Caller {
    /// Open mode: no key, everything allowed.
    pub fn open() -> Self {
        Caller {
            role: KeyRole::Admin,
            groups: None,
        }
    }

    fn of(key: &ApiKeyRecord) -> Self {
        let unrestricted = key.role == KeyRole::Admin || key.groups.iter().any(|g| g == ALL_GROUPS);
        Caller {
            role: key.role,
            groups: (!unrestricted).then(|| key.groups.clone()),
        }
    }

    /// 403 unless the key's role is at least `role`.
    pub fn require(&self, role: KeyRole, to: &str) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "this key's role is {}; to {to} it needs {} or above",
                self.role.as_str(),
                role.as_str()
            ),
        ))
    }

    /// Whether the caller may see this document.
    pub fn sees(&self, doc: &DocumentRecord) -> bool {
        self.sees_groups(&doc.groups)
    }

    /// Whether the caller may replace or delete this document: an
    /// unrestricted caller always; a restricted one when it has every one
    /// of the document's groups (the rule `rag_ingest::target` applies to
    /// uploads).
    pub fn covers(&self, doc: &DocumentRecord) -> bool {
        match &self.groups {
            None => true,
            Some(mine) => !doc.groups.is_empty() && doc.groups.iter().all(|g| mine.contains(g)),
        }
    }

    /// Whether something shared with `groups` is visible to this caller:
    /// always for an unrestricted one, else when a group is in common.
    pub fn sees_groups(&self, groups: &[String]) -> bool {
        match &self.groups {
            None => true,
            Some(mine) => groups.iter().any(|g| mine.contains(g)),
        }
    }
}

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
