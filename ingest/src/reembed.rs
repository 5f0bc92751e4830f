//! Vectors rebuilt from the committed chunks with another embedder.
//!
//! The metadata database holds every chunk's text, heading and its
//! document's title and labels, so the vectors can be made again without
//! reading a source. The caller writes them into a new vector store and
//! switches to it once this returns (`rag reembed`): the old vectors stay
//! in use until then.

use std::collections::HashSet;
use std::sync::Arc;

use rag_core::{DocumentStore, Embedder, Error, Result, VectorPoint, VectorStore};

use crate::pipeline::embedding_text;

/// Chunks embedded per call to the embedder.
const BATCH: usize = 64;

/// What [`rebuild_vectors`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReembedReport {
    pub documents: usize,
    /// Chunks embedded by this call.
    pub embedded: usize,
    /// Chunks whose vector an interrupted earlier call had already made.
    pub kept: usize,
    /// Points in `target` of chunks no longer committed, deleted.
    pub removed: usize,
}

/// Writes into `target` a vector for every committed chunk, embedded by
/// `embedder` from the text ingest embeds (with the title and heading
/// when `context_header`), with the document's current labels.
///
/// `resume`: `target` holds points an interrupted call of this function
/// wrote with the same embedder; their vectors are kept (their labels and
/// text are written again). Otherwise every chunk is embedded. Either way,
/// points of chunks no longer committed are deleted from `target`.
pub async fn rebuild_vectors(
    docs: &dyn DocumentStore,
    embedder: Arc<dyn Embedder>,
    target: &dyn VectorStore,
    context_header: bool,
    resume: bool,
    mut progress: impl FnMut(&ReembedReport),
) -> Result<ReembedReport> {
    let done: HashSet<String> = if resume {
        target.chunk_ids().await?.into_iter().collect()
    } else {
        HashSet::new()
    };
    let mut report = ReembedReport::default();
    let mut committed = HashSet::new();
    let mut pending: Vec<VectorPoint> = Vec::new();
    for doc in docs.documents(None).await? {
        report.documents += 1;
        let ids = docs.chunk_ids_of(&doc.id).await?;
        for chunk in docs.chunks(&ids).await? {
            committed.insert(chunk.id.clone());
            let text = if context_header {
                embedding_text(&doc.title, &chunk.heading, &chunk.text)
            } else {
                chunk.text.clone()
            };
            pending.push(VectorPoint {
                chunk_id: chunk.id,
                document_id: doc.id.clone(),
                collection: doc.collection.clone(),
                tags: doc.tags.clone(),
                groups: doc.groups.clone(),
                dense: Vec::new(),
                text,
            });
            if pending.len() >= BATCH {
                write(&embedder, target, &done, &mut pending, &mut report).await?;
                progress(&report);
            }
        }
    }
    write(&embedder, target, &done, &mut pending, &mut report).await?;
    let stale: Vec<String> = target
        .chunk_ids()
        .await?
        .into_iter()
        .filter(|id| !committed.contains(id))
        .collect();
    target.delete(&stale).await?;
    report.removed = stale.len();
    target.optimize().await?;
    progress(&report);
    Ok(report)
}

/// Embeds the points of `pending` not in `done` (the others keep their
/// vectors from `target`) and upserts them all.
async fn write(
    embedder: &Arc<dyn Embedder>,
    target: &dyn VectorStore,
    done: &HashSet<String>,
    pending: &mut Vec<VectorPoint>,
    report: &mut ReembedReport,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut points = std::mem::take(pending);
    let (kept, fresh): (Vec<usize>, Vec<usize>) =
        (0..points.len()).partition(|&i| done.contains(&points[i].chunk_id));
    if !kept.is_empty() {
        let ids: Vec<String> = kept.iter().map(|&i| points[i].chunk_id.clone()).collect();
        for (&i, vector) in kept.iter().zip(target.vectors(&ids).await?) {
            points[i].dense = vector.ok_or_else(|| {
                Error::internal("a re-embedded point vanished from the new vector store")
            })?;
        }
    }
    if !fresh.is_empty() {
        let texts: Vec<String> = fresh.iter().map(|&i| points[i].text.clone()).collect();
        let embedder = embedder.clone();
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| Error::internal("a blocking task failed").with_source(e))??;
        if vectors.len() != fresh.len() {
            return Err(Error::internal(
                "the embedder returned the wrong number of vectors",
            ));
        }
        for (&i, vector) in fresh.iter().zip(vectors) {
            points[i].dense = vector;
        }
    }
    report.kept += kept.len();
    report.embedded += fresh.len();
    target.upsert(points).await
}
