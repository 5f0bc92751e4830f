//! `rag reembed`: the vectors of an embedded store made again with the
//! configured embedder, from the chunks in the metadata database.
//!
//! The new vectors go to their own folder beside the old ones
//! (`app::vectors_dir`); the old store stays open, and so locked against
//! every other process, until the metadata database records the new
//! embedder: that one row is the switch. A marker file (`reembed.partial`)
//! says a run is under way, from which embedder to which, and how chunks
//! were embedded. A run killed before the switch leaves the old vectors in
//! use, and the next run keeps what that one embedded; one killed after it
//! leaves the old folder, which the next run removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rag_core::{DocumentStore, EmbedderRecord};
use rag_ingest::ReembedReport;
use rag_store::{EdgeVectorStore, HnswBuild, SqlDocumentStore};

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

/// The marker of a run under way.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub from: EmbedderRecord,
    pub to: EmbedderRecord,
    /// `ingest.context_header` of the run: the text its vectors embed.
    pub context_header: bool,
}

impl Marker {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("reembed.partial")
    }

    fn read(data_dir: &Path) -> anyhow::Result<Option<Marker>> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            // A marker cut short by a crash as it was written marks nothing.
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(data_dir);
        std::fs::write(&path, serde_json::to_vec(self)?)
            .and_then(|()| std::fs::File::open(&path)?.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }
}

pub async fn reembed(
    settings: &Settings,
    progress: impl FnMut(&ReembedReport),
) -> anyhow::Result<Reembedded> {
    anyhow::ensure!(
        settings.vector_store.is_embedded(),
        "`rag reembed` rebuilds the embedded vector store; with a Qdrant server, set \
         vector_store.collection to a new collection and database.url to a new database, and \
         ingest the documents again with the new embedder"
    );
    anyhow::ensure!(
        settings.vector_store.simulated_shards == 0,
        "`rag reembed` does not rebuild a store split into simulated shards (a measuring \
         setting): unset vector_store.simulated_shards, or ingest again"
    );
    let data_dir = &settings.data_dir;
    let (embedder, _) = load_embedder(settings).await?;
    let to = embedder_record(embedder.as_ref());
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let docs = SqlDocumentStore::connect(&settings.database_url()).await?;
    let from = recorded_embedder(&docs)
        .await?
        .unwrap_or_else(|| to.clone());
    let marker = Marker::read(data_dir)?;
    if from == to {
        // A run killed after its switch: its old folder is left to remove.
        if let Some(marker) = marker.filter(|m| m.to == to) {
            let old_dir = vectors_dir(data_dir, &marker.from);
            if old_dir != vectors_dir(data_dir, &to) && old_dir.exists() {
                std::fs::remove_dir_all(&old_dir)
                    .with_context(|| format!("removing {}", old_dir.display()))?;
            }
            std::fs::remove_file(Marker::path(data_dir))?;
        }
        return Ok(Reembedded {
            from,
            to,
            report: None,
        });
    }
    let hnsw = settings.vector_store.hnsw();
    let (old_dir, new_dir) = (vectors_dir(data_dir, &from), vectors_dir(data_dir, &to));
    if !old_dir.exists() && docs.document_count().await? > 0 {
        anyhow::bail!(
            "the vectors of {} are not in {}: ingest the documents again into a new data directory",
            from.model,
            old_dir.display()
        );
    }
    // Held open (locked) so that no other process reads or writes the old
    // vectors while the new ones are made from the rows.
    let old = open(&old_dir, from.dimension, hnsw)
        .await
        .with_context(|| {
            format!(
                "opening the vectors in {} (is `rag serve` running on this data directory?)",
                old_dir.display()
            )
        })?;
    // Under the lock: another run may have switched since the record was read.
    anyhow::ensure!(
        recorded_embedder(&docs).await?.as_ref() == Some(&from),
        "another `rag reembed` changed the embedder meanwhile: run it again"
    );
    let this = Marker {
        from: from.clone(),
        to: to.clone(),
        context_header: settings.ingest.context_header,
    };
    let resume = marker.as_ref() == Some(&this) && new_dir.exists();
    if !resume && new_dir.exists() {
        // Not this run's: its points may have been embedded from other text
        // or carry out-of-date labels.
        std::fs::remove_dir_all(&new_dir)
            .with_context(|| format!("removing {}", new_dir.display()))?;
    }
    this.write(data_dir)?;
    let (new, resume) = match open(&new_dir, to.dimension, hnsw).await {
        Ok(new) => (new, resume),
        // Cut short as it was being made: start it again.
        Err(e) if resume => {
            tracing::warn!(error = %e, "the partial vectors do not open; starting them again");
            std::fs::remove_dir_all(&new_dir)
                .with_context(|| format!("removing {}", new_dir.display()))?;
            (open(&new_dir, to.dimension, hnsw).await?, false)
        }
        Err(e) => return Err(e),
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
    std::fs::remove_dir_all(&old_dir)
        .with_context(|| format!("removing the old vectors in {}", old_dir.display()))?;
    std::fs::remove_file(Marker::path(data_dir))
        .with_context(|| format!("removing {}", Marker::path(data_dir).display()))?;
    Ok(Reembedded {
        from,
        to,
        report: Some(report),
    })
}

async fn open(dir: &Path, dimension: usize, hnsw: HnswBuild) -> anyhow::Result<EdgeVectorStore> {
    let dir = dir.to_path_buf();
    Ok(
        tokio::task::spawn_blocking(move || EdgeVectorStore::open_with(&dir, dimension, hnsw))
            .await??,
    )
}
