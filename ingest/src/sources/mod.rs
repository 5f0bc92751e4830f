//! Sources: places documents are synced from, one module per kind (a Git
//! repository, a web site), each a [`Source`]. [`sync`] brings a source's
//! documents up to date through the [`Ingestor`], so each added or
//! changed document is written like any ingest (crash-safe, one at a
//! time), and documents the source no longer has are deleted.
//!
//! A new connector is one module: a config struct, a [`Source`] that
//! turns the state of the last sync into a [`Scan`], and a variant of
//! [`SourceConfig`].

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rag_core::{Error, Result, SourceRecord};
use serde::{Deserialize, Serialize};

use crate::{DocumentOutcome, IngestOptions, Ingestor, Input, Limits, Progress};

mod git;
mod network;
mod web;

pub use git::GitConfig;
pub use network::Network;
pub use web::WebConfig;

/// A connector's settings, as `rag sources add` takes them and the
/// database stores them (`SourceRecord::config`, by kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    Git(GitConfig),
    Web(WebConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Git(_) => "git",
            SourceConfig::Web(_) => "web",
        }
    }

    /// Checks what can be checked before the first sync (the URL's form,
    /// the template), with a message that says what to fix.
    pub fn validate(&self) -> Result<()> {
        match self {
            SourceConfig::Git(c) => c.validate(),
            SourceConfig::Web(c) => c.validate(),
        }
    }

    /// The settings as stored: JSON without the kind (the record has it).
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("settings serialise");
        if let Some(map) = value.as_object_mut() {
            map.remove("kind");
        }
        value.to_string()
    }

    /// The settings of a stored source.
    pub fn of(record: &SourceRecord) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(&record.config).map_err(|e| {
            Error::internal(format!("source {:?}: stored settings", record.name)).with_source(e)
        })?;
        if let Some(map) = value.as_object_mut() {
            map.insert("kind".into(), record.kind.clone().into());
        }
        serde_json::from_value(value).map_err(|e| {
            Error::internal(format!("source {:?}: stored settings", record.name)).with_source(e)
        })
    }

    /// The host a sync connects to (lowercase); `None` for a local
    /// repository.
    pub fn host(&self) -> Option<String> {
        match self {
            SourceConfig::Git(c) => c.remote_host().ok().flatten().map(|(host, _)| host),
            SourceConfig::Web(c) => reqwest::Url::parse(c.start_url.trim())
                .ok()
                .and_then(|u| u.host_str().map(str::to_string)),
        }
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
    }

    /// Refuses a source whose host is not in `allowed` (the server's
    /// `sources.allowed_hosts`; empty: any host). A local repository has
    /// no host and is the CLI's alone.
    pub fn check_host_allowed(&self, allowed: &[String]) -> Result<()> {
        if allowed.is_empty() {
            return Ok(());
        }
        let local = match self {
            SourceConfig::Git(c) => c.remote_host()?.is_none(),
            SourceConfig::Web(_) => false,
        };
        match self.host() {
            Some(host) if allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)) => Ok(()),
            None if local => Ok(()),
            host => Err(Error::invalid(format!(
                "{} is not among the hosts sources may come from here \
                 (sources.allowed_hosts: {})",
                host.as_deref().unwrap_or("a source without a host"),
                allowed.join(", ")
            ))),
        }
    }

    /// Where a sync reads from, for listings: without any password or
    /// token in the URL.
    pub fn location(&self) -> String {
        match self {
            SourceConfig::Git(c) => git::redact(&c.url),
            SourceConfig::Web(c) => git::redact(&c.start_url),
        }
    }

    /// The settings to show (listings, `GET /v1/sources`): URLs without
    /// their user information.
    pub fn shown(&self) -> serde_json::Value {
        let mut shown = self.clone();
        match &mut shown {
            SourceConfig::Git(c) => c.url = git::redact(&c.url),
            SourceConfig::Web(c) => c.start_url = git::redact(&c.start_url),
        }
        serde_json::from_str(&shown.to_json()).expect("settings serialise")
    }

    fn open(&self, cache: &Path) -> Box<dyn Source> {
        match self {
            SourceConfig::Git(c) => Box::new(git::GitSource::new(c.clone(), cache)),
            SourceConfig::Web(c) => Box::new(web::WebSource::new(c.clone())),
        }
    }
}

/// What a connector found since the last sync.
#[derive(Debug, Default)]
pub struct Scan {
    /// Documents that are new or changed (or may be: their content hash
    /// decides), as `Input::Fetched`.
    pub documents: Vec<Input>,
    /// Documents known to be unchanged (a `304 Not Modified`).
    pub unchanged: Vec<String>,
    /// Documents known to be gone (deleted in the repository, a 404, a
    /// page that now answers 401 or 403).
    pub deleted: Vec<String>,
    /// Of `deleted`, the pages that now answer 401 or 403.
    pub forbidden: Vec<String>,
    /// Documents that could not be read this time, with the reason; their
    /// last version stays.
    pub failed: Vec<(String, String)>,
    /// When true, `documents`, `unchanged` and `failed` name every document
    /// the source has now: any other document of this origin is gone.
    pub complete: bool,
    /// What to store once the sync is done, for the next scan to start
    /// from.
    pub state: serde_json::Value,
}

/// A place documents come from.
#[async_trait]
pub trait Source: Send + Sync {
    /// What changed since `state` (what the last completed sync stored;
    /// `Null` before the first). `retry` names the documents that failed
    /// last time, to be read again if they are still there; `known`, the
    /// source's documents the store holds now: one the source has and the
    /// store lacks (deleted by hand, or never written) is read again
    /// whatever `state` says. An error means nothing can be said of the
    /// source now (unreachable, not a repository, robots.txt forbids it):
    /// the sync changes nothing.
    async fn scan(
        &self,
        state: &serde_json::Value,
        retry: &[String],
        known: &HashSet<String>,
        limits: &Limits,
    ) -> Result<Scan>;
}

/// What a sync stores for the next: the connector's own state, and the
/// documents that failed (read again next time).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    connector: serde_json::Value,
    #[serde(default)]
    retry: Vec<String>,
}

/// What one sync did, as `rag sync --json` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
    /// Of `deleted`, pages removed because they now answer 401 or 403:
    /// their readers lost access upstream.
    pub forbidden: usize,
    pub failed: usize,
    /// Each failed document with its reason.
    pub failures: Vec<Failure>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub document: String,
    pub reason: String,
}

/// Brings `record`'s documents up to date. `cache` is the source's own
/// folder (a Git source keeps its clone there). The new state is stored
/// only after every change is committed: a sync that stops half way is
/// done again from the old state, and what it had committed reads as
/// unchanged.
///
/// One writer per source: the sync claims its source in the metadata
/// database first (see [`claimed`]), so a sync or removal of the same
/// source in another process is refused (`Conflict`), and it reads the
/// source's record again under the claim, checking it against
/// `allowed_hosts` (the server's `sources.allowed_hosts`; empty: any).
pub async fn sync(
    ingestor: &Ingestor,
    record: &SourceRecord,
    cache: &Path,
    allowed_hosts: &[String],
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<SyncReport> {
    claimed(ingestor, &record.name, async {
        let Some(record) = ingestor.docs.source(&record.name).await? else {
            return Err(Error::not_found(format!(
                "no source named {:?}; `rag sources list` shows them",
                record.name
            )));
        };
        SourceConfig::of(&record)?.check_host_allowed(allowed_hosts)?;
        sync_claimed(ingestor, &record, cache, progress).await
    })
    .await
}

/// How long a source claim lasts unless renewed; [`claimed`] renews it
/// three times as often, so only a holder that died (or lost the database
/// for that long) lets it lapse.
const CLAIM_TTL_S: i64 = 60;

/// A claim taken; released when [`Claim::release`] is not reached (the
/// work was dropped: a client gone, a request deadline), from a task of
/// its own, so that the source is not held until the claim lapses.
struct Claim {
    docs: std::sync::Arc<dyn rag_core::DocumentStore>,
    name: String,
    holder: String,
    released: bool,
}

impl Claim {
    async fn release(mut self) {
        self.released = true;
        if let Err(e) = self.docs.release_source(&self.name, &self.holder).await {
            // It lapses by itself.
            tracing::warn!(source = %self.name, error = %e.chain(), "releasing a source claim");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (docs, name, holder) = (
                self.docs.clone(),
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.holder),
            );
            runtime.spawn(async move { docs.release_source(&name, &holder).await });
        }
    }
}

/// Runs `work` while this process holds the claim on source `name`: taken
/// first (refused with `Conflict` while another holder's claim lasts),
/// renewed as `work` runs, released after (or when `work` is dropped).
/// A holder that cannot renew its claim stops `work` (dropping it, as a
/// crash would: the ingest is crash-safe) well before the claim could
/// lapse, since another process may take the source then.
async fn claimed<T>(
    ingestor: &Ingestor,
    name: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4());
    if !ingestor
        .docs
        .claim_source(name, &holder, CLAIM_TTL_S)
        .await?
    {
        return Err(Error::conflict(format!(
            "source {name:?} is being synced or removed by another process; retry when it \
             has finished (the claim of a process that died lapses within {CLAIM_TTL_S} s)"
        )));
    }
    let claim = Claim {
        docs: ingestor.docs.clone(),
        name: name.to_string(),
        holder: holder.clone(),
        released: false,
    };
    let ttl = Duration::from_secs(CLAIM_TTL_S as u64);
    let renew = async {
        // When the claim was last confirmed (asked before the answer, so
        // the database's new expiry is no earlier than this plus the TTL).
        let mut confirmed = Instant::now();
        let mut pause = ttl / 3;
        loop {
            tokio::time::sleep(pause).await;
            let asked = Instant::now();
            let renewed = tokio::time::timeout(
                ttl / 12,
                ingestor.docs.claim_source(name, &holder, CLAIM_TTL_S),
            )
            .await;
            match renewed {
                Ok(Ok(true)) => {
                    confirmed = asked;
                    pause = ttl / 3;
                    continue;
                }
                Ok(Ok(false)) => {
                    return Error::conflict(format!(
                        "source {name:?}: another process took it over while this one \
                         synced (its claim had lapsed); this one stopped"
                    ));
                }
                Ok(Err(e)) => {
                    tracing::warn!(source = name, error = %e.chain(), "renewing a source claim")
                }
                Err(_) => tracing::warn!(source = name, "renewing a source claim timed out"),
            }
            // Retried sooner; given up while a quarter of the TTL is left.
            pause = ttl / 12;
            if confirmed.elapsed() >= ttl * 3 / 4 {
                return Error::unavailable(format!(
                    "source {name:?}: its claim could not be renewed for {} s (the metadata \
                     database does not answer); stopped before another process may take it",
                    confirmed.elapsed().as_secs()
                ));
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        lost = renew => Err(lost),
    };
    claim.release().await;
    result
}

async fn sync_claimed(
    ingestor: &Ingestor,
    record: &SourceRecord,
    cache: &Path,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<SyncReport> {
    let started = Instant::now();
    let config = SourceConfig::of(record)?;
    let stored: Stored = if record.state.is_empty() {
        Stored::default()
    } else {
        serde_json::from_str(&record.state).map_err(|e| {
            Error::internal(format!("source {:?}: stored state", record.name)).with_source(e)
        })?
    };
    let current = ingestor.docs.documents_of_origin(&record.name).await?;
    let known: HashSet<String> = current.iter().map(|d| d.source.clone()).collect();
    let scan = config
        .open(cache)
        .scan(&stored.connector, &stored.retry, &known, &ingestor.limits)
        .await
        .map_err(|e| match e.kind() {
            rag_core::ErrorKind::Internal => e,
            _ => Error::invalid(format!("source {:?}: {e}", record.name)),
        })?;
    // A complete scan that names nothing, of a source that has documents,
    // is a site behind a login or an emptied repository far more often
    // than a wiki deleted on purpose: refused, so nothing is lost.
    if scan.complete
        && scan.documents.is_empty()
        && scan.unchanged.is_empty()
        && scan.failed.is_empty()
        && !ingestor
            .docs
            .documents_of_origin(&record.name)
            .await?
            .is_empty()
    {
        return Err(Error::invalid(format!(
            "source {:?} lists no documents now; nothing was deleted (`rag sources remove {}` \
             deletes its documents)",
            record.name, record.name
        )));
    }
    // What this sync would delete, decided before it writes anything: more
    // than `max_delete_fraction` of the source stops it.
    let gone: HashSet<&str> = scan.deleted.iter().map(String::as_str).collect();
    let present: HashSet<&str> = scan
        .documents
        .iter()
        .map(Input::source)
        .chain(scan.unchanged.iter().map(String::as_str))
        .chain(scan.failed.iter().map(|(d, _)| d.as_str()))
        .collect();
    let doomed = |source: &str| {
        (gone.contains(source) && !present.contains(source))
            || (scan.complete && !present.contains(source))
    };
    // Net of what it adds: a renamed file is deleted under its old name
    // and added under its new one, and loses nothing.
    let deleting = current.iter().filter(|d| doomed(&d.source)).count();
    let known: HashSet<&str> = current.iter().map(|d| d.source.as_str()).collect();
    let adding = scan
        .documents
        .iter()
        .filter(|d| !known.contains(d.source()))
        .count();
    let lost = deleting.saturating_sub(adding);
    let most = ingestor.limits.max_delete_fraction;
    if lost > 0 && most <= 1.0 && lost as f64 > most * current.len() as f64 {
        return Err(Error::invalid(format!(
            "source {:?}: this sync would delete {deleting} of its {} documents, more than \
             sources.max_delete_fraction ({most}) allows: a start page that now shows a login \
             or maintenance page, or a repository emptied by mistake, looks like this; nothing \
             was changed (`rag sync --force {}` deletes them)",
            record.name,
            current.len(),
            record.name
        )));
    }
    let options = IngestOptions {
        collection: record.collection.clone(),
        tags: record.tags.clone(),
        groups: record.groups.clone(),
        writer_groups: None,
        origin: Some(record.name.clone()),
    };
    let ingested = ingestor
        .ingest_inputs(&scan.documents, &options, progress)
        .await?;
    let mut report = SyncReport {
        source: record.name.clone(),
        added: ingested.added,
        updated: ingested.updated,
        ..Default::default()
    };
    for outcome in &ingested.outcomes {
        if let DocumentOutcome::Failed { source, reason } = outcome {
            report.failures.push(Failure {
                document: source.clone(),
                reason: reason.clone(),
            });
        }
    }
    for (document, reason) in &scan.failed {
        report.failures.push(Failure {
            document: document.clone(),
            reason: reason.clone(),
        });
    }
    report.failed = report.failures.len();

    // Deletions: what the source says is gone, and, after a complete
    // scan, whatever it no longer names. A document that failed keeps its
    // last version; one skipped (no text) was removed by the ingest.
    // What this sync wrote or could not read is not "unchanged".
    let touched: HashSet<&str> = ingested
        .outcomes
        .iter()
        .filter_map(|o| match o {
            DocumentOutcome::Added { source, .. } | DocumentOutcome::Updated { source, .. } => {
                Some(source.as_str())
            }
            _ => None,
        })
        .chain(report.failures.iter().map(|f| f.document.as_str()))
        .collect();
    let before = ingestor.docs.documents_of_origin(&record.name).await?;
    for doc in &before {
        let source = doc.source.as_str();
        if doomed(source) {
            ingestor.delete(&doc.id).await?;
            report.deleted += 1;
            report.forbidden += usize::from(scan.forbidden.iter().any(|f| f == source));
        } else if !touched.contains(source) {
            report.unchanged += 1;
        }
    }
    // Removed while it ran (by another process): what it wrote is deleted,
    // so no document is left that no source lists.
    if ingestor.docs.source(&record.name).await?.is_none() {
        for doc in ingestor.docs.documents_of_origin(&record.name).await? {
            ingestor.delete(&doc.id).await?;
        }
        return Err(Error::not_found(format!(
            "source {:?} was removed while it synced; what the sync wrote was deleted",
            record.name
        )));
    }
    let stored = Stored {
        connector: scan.state,
        retry: report.failures.iter().map(|f| f.document.clone()).collect(),
    };
    let stored = serde_json::to_string(&stored).expect("state serialises");
    ingestor
        .docs
        .set_source_state(&record.name, &stored, &now())
        .await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Deletes every document of a source, then the source and its cache
/// folder. Its state is cleared first: a removal that stops half way
/// leaves a source whose next sync starts from nothing (and brings back
/// what was deleted), or that a second `remove` finishes.
///
/// Like [`sync`], it claims the source first: a removal never interleaves
/// with a sync of the source in another process.
pub async fn remove(ingestor: &Ingestor, name: &str, cache: &Path) -> Result<usize> {
    claimed(ingestor, name, remove_claimed(ingestor, name, cache)).await
}

async fn remove_claimed(ingestor: &Ingestor, name: &str, cache: &Path) -> Result<usize> {
    if ingestor.docs.source(name).await?.is_none() {
        return Err(Error::not_found(format!(
            "no source named {name:?}; `rag sources list` shows them"
        )));
    }
    ingestor.docs.set_source_state(name, "", &now()).await?;
    let docs = ingestor.docs.documents_of_origin(name).await?;
    for doc in &docs {
        ingestor.delete(&doc.id).await?;
    }
    ingestor.docs.remove_source(name).await?;
    // What a sync running elsewhere wrote meanwhile, or an interrupted
    // removal left.
    for doc in ingestor.docs.documents_of_origin(name).await? {
        ingestor.delete(&doc.id).await?;
    }
    if cache.exists() {
        std::fs::remove_dir_all(cache).map_err(|e| {
            Error::unavailable(format!("removing {}", cache.display())).with_source(e)
        })?;
    }
    Ok(docs.len())
}

/// Checks a source name: it names the source on the command line and in
/// its documents' `origin`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "source name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with \
             '-' or '.'"
        )))
    }
}

/// `{path}` in a URL template, filled in; the path's segments are
/// percent-encoded where a URL needs it.
pub(crate) fn fill_template(template: &str, path: &str) -> String {
    let encoded: Vec<String> = path
        .split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        })
        .collect();
    template.replace("{path}", &encoded.join("/"))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_the_record() {
        let config = SourceConfig::Git(GitConfig {
            url: "/srv/wiki.git".into(),
            branch: Some("main".into()),
            path: None,
            url_template: Some("https://git.example/wiki/blob/main/{path}".into()),
            allow_networks: vec![],
        });
        let record = SourceRecord {
            name: "wiki".into(),
            kind: config.kind().into(),
            config: config.to_json(),
            collection: "default".into(),
            tags: vec![],
            groups: vec![],
            state: String::new(),
            created_at: String::new(),
            synced_at: None,
        };
        assert!(!record.config.contains("kind"));
        assert_eq!(SourceConfig::of(&record).unwrap(), config);
    }

    /// `sources.allowed_hosts`: a web site or remote elsewhere is refused;
    /// empty, any host; a local repository has none to check.
    #[test]
    fn sources_come_only_from_the_hosts_allowed() {
        let web = |url: &str| {
            SourceConfig::Web(WebConfig {
                start_url: url.into(),
                prefix: None,
                max_pages: 10,
                delay_ms: 0,
                allow_networks: vec![],
            })
        };
        let git = |url: &str| {
            SourceConfig::Git(GitConfig {
                url: url.into(),
                branch: None,
                path: None,
                url_template: None,
                allow_networks: vec![],
            })
        };
        let allowed = vec!["wiki.internal".to_string(), "git.example".to_string()];
        assert!(
            web("https://WIKI.internal/docs/")
                .check_host_allowed(&allowed)
                .is_ok()
        );
        assert!(
            git("git@git.example:team/w.git")
                .check_host_allowed(&allowed)
                .is_ok()
        );
        assert!(git("/srv/wiki.git").check_host_allowed(&allowed).is_ok());
        let err = web("https://evil.example/")
            .check_host_allowed(&allowed)
            .unwrap_err();
        assert!(err.to_string().contains("sources.allowed_hosts"), "{err}");
        assert!(
            git("https://10.0.0.9/w.git")
                .check_host_allowed(&allowed)
                .is_err()
        );
        assert!(web("https://evil.example/").check_host_allowed(&[]).is_ok());
    }

    #[test]
    fn names_and_templates() {
        assert!(validate_name("hr-wiki_2.0").is_ok());
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            fill_template("https://w.example/{path}?plain=1", "leave/sick leave.md"),
            "https://w.example/leave/sick%20leave.md?plain=1"
        );
    }
}
