//! `[ingest]`: what one document may cost, in the units a person sets.

use std::time::Duration;

use rag_core::{Error, Result};
use serde::Deserialize;

use crate::Limits;

/// What one document may cost: over a limit, that document fails with the
/// reason and the run goes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    pub max_document_mb: f64,
    pub max_pages: usize,
    pub max_text_mb: f64,
    pub parse_timeout_s: f64,
    /// Embed and index each chunk under its document's title and heading
    /// path (on; off only to measure what that brings: BENCHMARKS.md). A
    /// data directory keeps the vectors it was built with.
    pub context_header: bool,
}

const MIB: f64 = (1 << 20) as f64;

impl Default for IngestSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_document_mb: limits.max_bytes as f64 / MIB,
            max_pages: limits.max_pages,
            max_text_mb: limits.max_text_bytes as f64 / MIB,
            parse_timeout_s: limits.parse_timeout.as_secs_f64(),
            context_header: true,
        }
    }
}

impl IngestSettings {
    /// The limits these settings describe, checked.
    pub fn limits(&self) -> Result<Limits> {
        let bytes = |mb: f64, key: &str| {
            if mb > 0.0 && mb.is_finite() {
                Ok((mb * MIB) as usize)
            } else {
                Err(Error::invalid(format!(
                    "ingest.{key} must be a positive number of MiB"
                )))
            }
        };
        if self.max_pages == 0 {
            return Err(Error::invalid("ingest.max_pages must be at least 1"));
        }
        if !(self.parse_timeout_s > 0.0 && self.parse_timeout_s.is_finite()) {
            return Err(Error::invalid(
                "ingest.parse_timeout_s must be a positive number of seconds",
            ));
        }
        Ok(Limits {
            max_bytes: bytes(self.max_document_mb, "max_document_mb")?,
            max_pages: self.max_pages,
            max_text_bytes: bytes(self.max_text_mb, "max_text_mb")?,
            parse_timeout: Duration::from_secs_f64(self.parse_timeout_s),
            ..Limits::default()
        })
    }
}

/// `[sources]`: how long a sync may wait on a source.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesSettings {
    /// Seconds one network operation may take: a git clone or fetch (git
    /// also gives up on a transfer slower than 1 KB/s for this long), one
    /// HTTP request of a crawl. A source that runs out fails alone, with
    /// the reason.
    pub timeout_s: f64,
    /// The largest share of a source's documents one sync may delete: a
    /// start page that now answers with a login page, or a repository
    /// emptied by mistake, stops the sync instead (`rag sync --force`).
    pub max_delete_fraction: f64,
    /// The only hosts sources may come from (web sites, git remotes);
    /// empty: any host the network rule allows.
    pub allowed_hosts: Vec<String>,
}

impl Default for SourcesSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            timeout_s: limits.source_timeout.as_secs_f64(),
            max_delete_fraction: limits.max_delete_fraction,
            allowed_hosts: Vec::new(),
        }
    }
}

impl SourcesSettings {
    /// `limits` with this deadline, checked.
    pub fn apply(&self, limits: Limits) -> Result<Limits> {
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(Error::invalid(
                "sources.timeout_s must be a positive number of seconds",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_delete_fraction) {
            return Err(Error::invalid(
                "sources.max_delete_fraction must be between 0 and 1",
            ));
        }
        Ok(Limits {
            source_timeout: Duration::from_secs_f64(self.timeout_s),
            max_delete_fraction: self.max_delete_fraction,
            ..limits
        })
    }
}
