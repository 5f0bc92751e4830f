//! API keys (`rag keys create|list|revoke`) and what a caller may see and
//! change. `http::auth` resolves a request's caller.
//!
//! A key is 32 random bytes, shown once at creation; the database keeps its
//! SHA-256. A fast hash is enough here, unlike for passwords: the keys are
//! random and long, so there is nothing to guess from the hash.

use axum::http::StatusCode;

use crate::http::ApiError;
use rag_core::{ApiKeyRecord, DocumentRecord, DocumentStore, KeyRole};
use rand::RngCore;
use sha2::{Digest, Sha256};

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
    /// The key's id; `None` in open mode. Answers are rated by the key
    /// that asked.
    pub key_id: Option<String>,
}

impl Caller {
    /// Open mode: no key, everything allowed.
    pub fn open() -> Self {
        Caller {
            role: KeyRole::Admin,
            groups: None,
            key_id: None,
        }
    }

    pub fn of(key: &ApiKeyRecord) -> Self {
        let unrestricted = key.role == KeyRole::Admin || key.groups.iter().any(|g| g == ALL_GROUPS);
        Caller {
            role: key.role,
            groups: (!unrestricted).then(|| key.groups.clone()),
            key_id: Some(key.id.clone()),
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
