//! `rag reembed`: the vectors of an embedded store made again with the
//! configured embedder, from the chunks in the metadata database.
//!
//! The new vectors go to their own folder beside the old ones
//! (`app::vectors_dir`); the old store stays open, and so locked against
//! other writers, until the metadata database records the new embedder:
//! that one row is the switch. A run killed before it leaves the old
//! vectors in use and the new folder marked as partial; the next run keeps
//! what that one embedded.

use std::sync::Arc;

use anyhow::Context;
use rag_core::{DocumentStore, EmbedderRecord};
use rag_ingest::ReembedReport;
use rag_store::{EdgeVectorStore, SqlDocumentStore};

use crate::app::{embedder_record, load_embedder, recorded_embedder, vectors_dir};
use crate::config::Settings;

/// What `rag reembed` did: nothing when the vectors are the configured
/// embedder's already.
#[derive(Debug, serde::Serialize)]
pub struct Reembedded {
    pub from: EmbedderRecord,
    pub to: EmbedderRecord,
    pub report: Option<ReembedReport>,
}

pub async fn reembed(
    settings: &Settings,
    progress: impl FnMut(&ReembedReport),
) -> anyhow::Result<Reembedded> {
    anyhow::ensure!(
        settings.vector_store.is_embedded(),
        "`rag reembed` rebuilds the embedded vector store; with a Qdrant server, ingest the \
         documents again into a new data directory (a new collection) with the new embedder"
    );
    let (embedder, _) = load_embedder(settings).await?;
    let to = embedder_record(embedder.as_ref());
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let docs = SqlDocumentStore::connect(&settings.database_url()).await?;
    let from = recorded_embedder(&docs)
        .await?
        .unwrap_or_else(|| to.clone());
    if from == to {
        return Ok(Reembedded {
            from,
            to,
            report: None,
        });
    }
    let hnsw = settings.vector_store.hnsw();
    let (old_dir, new_dir) = (
        vectors_dir(&settings.data_dir, &from),
        vectors_dir(&settings.data_dir, &to),
    );
    // Held open (locked) so that no other process writes the old vectors
    // while the new ones are made from the rows.
    let old = {
        let (dir, dimension) = (old_dir.clone(), from.dimension);
        tokio::task::spawn_blocking(move || EdgeVectorStore::open_with(&dir, dimension, hnsw))
            .await?
            .with_context(|| {
                format!(
                    "opening the vectors in {} (is `rag serve` running on this data directory?)",
                    old_dir.display()
                )
            })?
    };
    let partial = settings
        .data_dir
        .join(format!("reembed-{}.partial", to.model));
    let resume = partial.exists() && new_dir.exists();
    if !resume && new_dir.exists() {
        // Left from an earlier switch, not by a run of this one: its points'
        // labels may be out of date.
        std::fs::remove_dir_all(&new_dir)
            .with_context(|| format!("removing {}", new_dir.display()))?;
    }
    std::fs::File::create(&partial)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("creating {}", partial.display()))?;
    let new = {
        let (dir, dimension) = (new_dir.clone(), to.dimension);
        tokio::task::spawn_blocking(move || EdgeVectorStore::open_with(&dir, dimension, hnsw))
            .await??
    };
    let report = rag_ingest::rebuild_vectors(
        &docs,
        embedder as Arc<dyn rag_core::Embedder>,
        &new,
        settings.ingest.context_header,
        resume,
        progress,
    )
    .await?;
    drop(new);
    // The switch: from here on the data directory is the new embedder's.
    docs.set_embedder(&to).await?;
    drop(old);
    std::fs::remove_file(&partial).with_context(|| format!("removing {}", partial.display()))?;
    std::fs::remove_dir_all(&old_dir)
        .with_context(|| format!("removing the old vectors in {}", old_dir.display()))?;
    Ok(Reembedded {
        from,
        to,
        report: Some(report),
    })
}
