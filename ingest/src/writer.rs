//! One ingest run as a writer among others sharing the stores: which
//! document an input writes to, the heartbeat and in-flight marks that
//! keep its vectors from being deleted under it, and the deletions that
//! respect every live writer's (ARCHITECTURE.md, "Several writers").

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rag_core::{DocumentRecord, DocumentStore, Error, Result, VectorStore};

use crate::IngestOptions;

/// A writer whose heartbeat is older than this (on the database's clock)
/// is dead: its in-flight marks no longer protect anything.
pub const WRITER_TIMEOUT_S: i64 = 60;
/// How often a running ingest renews its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A writer that could not renew its heartbeat for this long stops before
/// committing anything more: others may soon take it for dead.
const OWN_LEASE: Duration = Duration::from_secs(30);

/// Which document an input of `source` writes to, and that document's
/// current version if it has one. The identity rule (ARCHITECTURE.md,
/// "Invariants"):
///
/// - an unrestricted writer writes the document `document_id(collection,
///   source)`;
/// - a restricted writer writes the first document of that name that it
///   covers (it has every one of the document's groups, and there is at
///   least one): the unscoped one first, then one it made before;
/// - otherwise it makes a document of its own, with a random id, as if the
///   name were free.
///
/// So a restricted writer never replaces what another group can see
/// without it, and nothing it is told (added or updated, counts, its
/// document's id) depends on whether another group has a document of that
/// name.
pub fn target(
    source: &str,
    options: &IngestOptions,
    existing: Vec<DocumentRecord>,
) -> (String, Option<DocumentRecord>) {
    let unscoped = rag_core::document_id(&options.collection, source);
    let Some(mine) = &options.writer_groups else {
        let previous = existing.into_iter().find(|d| d.id == unscoped);
        return (unscoped, previous);
    };
    let covered =
        |d: &DocumentRecord| !d.groups.is_empty() && d.groups.iter().all(|g| mine.contains(g));
    match existing
        .into_iter()
        .filter(covered)
        .min_by_key(|d| (d.id != unscoped, d.id.clone()))
    {
        Some(doc) => (doc.id.clone(), Some(doc)),
        // Random, so that the id says nothing about other documents.
        None => (uuid::Uuid::new_v4().simple().to_string(), None),
    }
}

/// One ingest run as a writer that others sharing the stores can see: a
/// heartbeat renewed in the background, and marks on the chunks it is
/// writing (ARCHITECTURE.md, "Several writers").
pub(crate) struct Writer {
    pub(crate) id: String,
    docs: Arc<dyn DocumentStore>,
    /// When the last heartbeat that counted was sent; `None` once the
    /// lease is lost, which is final.
    lease: Arc<std::sync::Mutex<Option<Instant>>>,
    beating: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) async fn start(docs: Arc<dyn DocumentStore>) -> Result<Self> {
        let id = uuid::Uuid::new_v4().to_string();
        let sent = Instant::now();
        docs.register_writer(&id).await?;
        let lease = Arc::new(std::sync::Mutex::new(Some(sent)));
        let beating = tokio::spawn({
            let (docs, id, lease) = (docs.clone(), id.clone(), lease.clone());
            async move {
                loop {
                    tokio::time::sleep(HEARTBEAT_EVERY).await;
                    // The heartbeat counts from when it was sent.
                    let sent = Instant::now();
                    let beat = docs.heartbeat(&id).await;
                    let mut lease = lease.lock().unwrap_or_else(|p| p.into_inner());
                    match beat {
                        Ok(true) if lease.is_some() => *lease = Some(sent),
                        Ok(_) => {
                            // Taken for dead by another process, or lapsed
                            // here: over for good.
                            tracing::warn!(writer = %id, "this ingest lost its writer lease");
                            *lease = None;
                            return;
                        }
                        Err(e) => tracing::warn!(writer = %id, "heartbeat failed: {e}"),
                    }
                }
            }
        });
        Ok(Self {
            id,
            docs,
            lease,
            beating,
        })
    }

    /// Fails when the heartbeat could not be renewed for [`OWN_LEASE`], or
    /// the writer was taken for dead, and from then on: committing could
    /// reference vectors another process has deleted. (The commit checks
    /// the lease again in its own transaction.)
    pub(crate) fn check(&self) -> Result<()> {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.is_some_and(|sent| sent.elapsed() > OWN_LEASE) {
            *lease = None;
        }
        if lease.is_none() {
            return Err(Error::unavailable(format!(
                "this ingest could not renew its heartbeat in the metadata database within {} s; \
                 it stops so that nothing it writes can lose its vectors (run it again)",
                OWN_LEASE.as_secs()
            )));
        }
        Ok(())
    }

    pub(crate) async fn mark(&self, chunk_ids: &[String]) -> Result<()> {
        self.docs.mark_in_flight(&self.id, chunk_ids).await
    }

    pub(crate) async fn retire(self) -> Result<()> {
        self.beating.abort();
        self.docs.retire_writer(&self.id).await
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.beating.abort();
    }
}

/// Deletes the vectors of `candidates` that are neither committed nor in
/// flight for a live writer, under the vector-deletion lock (so no writer
/// can start relying on one between the check and the delete); returns
/// how many. Every deletion of vectors goes through here.
pub async fn delete_unreferenced(
    docs: &dyn DocumentStore,
    vectors: &dyn VectorStore,
    candidates: &[String],
) -> Result<usize> {
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut lock = docs.lock_references().await?;
    let free = lock.unreferenced(candidates).await?;
    vectors.delete(&free).await?;
    lock.release().await?;
    Ok(free.len())
}

/// Removes what interrupted runs left behind: vectors with no committed
/// chunk row that no live writer has in flight. Returns how many were
/// removed. Safe while other processes ingest into the same stores: the
/// vectors are listed first, and each is then checked and deleted under
/// the lock that marking chunks in flight takes ([`delete_unreferenced`]),
/// so a vector another writer upserted (it marked it before) is spared.
pub async fn repair(docs: &dyn DocumentStore, vectors: &dyn VectorStore) -> Result<usize> {
    docs.forget_dead_writers(WRITER_TIMEOUT_S).await?;
    let stored = vectors.chunk_ids().await?;
    let committed: HashSet<String> = docs.chunk_ids().await?.into_iter().collect();
    let candidates: Vec<String> = stored
        .into_iter()
        .filter(|id| !committed.contains(id))
        .collect();
    delete_unreferenced(docs, vectors, &candidates).await
}
