use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rag_core::{
    ChunkRecord, DocumentRecord, DocumentStore, Embedder, Error, Result, VectorPoint, VectorStore,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::load::{extension, unsupported};
use crate::{Chunker, LoadedDocument, SUPPORTED_EXTENSIONS, load_file};

/// Passages embedded per call; also the unit of progress.
const EMBED_BATCH: usize = 32;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub collection: String,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            collection: "default".into(),
            tags: vec![],
            groups: vec![],
        }
    }
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DocumentOutcome {
    Added {
        source: String,
        chunks: usize,
        embedded: usize,
    },
    Updated {
        source: String,
        chunks: usize,
        embedded: usize,
    },
    Unchanged {
        source: String,
    },
    Skipped {
        source: String,
        reason: String,
    },
    Failed {
        source: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub documents: usize,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Chunks committed by this run (new and kept).
    pub chunks: usize,
    /// Chunks that went through the embedder.
    pub embedded_chunks: usize,
    /// Leftovers of an interrupted run removed before starting.
    pub repaired_vectors: usize,
    /// Documents removed by `--prune` (sources gone from the folder).
    pub pruned: Vec<String>,
    pub seconds: f64,
    pub outcomes: Vec<DocumentOutcome>,
}

/// Progress events for a caller that shows them.
#[derive(Debug, Clone)]
pub enum Progress {
    Started {
        documents: usize,
    },
    Embedded {
        chunks: usize,
    },
    Document {
        done: usize,
        outcome: DocumentOutcome,
    },
}

/// Files to ingest under `paths`, each with its source name: the path
/// relative to the folder argument, or the file name for a file argument.
/// Folders are walked recursively; unsupported files in folders are left
/// out, an unsupported file named directly is an error.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            let mut files: Vec<_> = walkdir::WalkDir::new(path)
                .follow_links(true)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file())
                .filter(|e| SUPPORTED_EXTENSIONS.contains(&extension(e.path()).as_str()))
                .map(|e| e.into_path())
                .collect();
            files.sort();
            for file in files {
                let rel = file.strip_prefix(path).unwrap_or(&file);
                let source = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((file, source));
            }
        } else {
            if !SUPPORTED_EXTENSIONS.contains(&extension(path).as_str()) {
                return Err(unsupported(path));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((path.clone(), name));
        }
    }
    Ok(out)
}

/// Removes what an interrupted run left behind: vectors with no committed
/// chunk row. Returns how many were removed.
pub async fn repair(docs: &dyn DocumentStore, vectors: &dyn VectorStore) -> Result<usize> {
    let committed: HashSet<String> = docs.chunk_ids().await?.into_iter().collect();
    let orphans: Vec<String> = vectors
        .chunk_ids()
        .await?
        .into_iter()
        .filter(|id| !committed.contains(id))
        .collect();
    vectors.delete(&orphans).await?;
    Ok(orphans.len())
}

/// One document to ingest.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file; its extension picks the loader.
    File { path: PathBuf, source: String },
    /// A file's bytes, e.g. an upload; `source` (its file name) gives the
    /// type and is never used as a path on disk.
    Bytes {
        source: String,
        bytes: std::sync::Arc<Vec<u8>>,
    },
    /// Plain text already in memory, e.g. a line of a BEIR corpus.
    Text {
        source: String,
        title: String,
        body: String,
    },
}

impl Input {
    pub fn source(&self) -> &str {
        match self {
            Input::File { source, .. }
            | Input::Bytes { source, .. }
            | Input::Text { source, .. } => source,
        }
    }

    /// The bytes whose hash decides whether the document changed.
    fn bytes(&self) -> Result<Vec<u8>> {
        match self {
            Input::File { path, .. } => std::fs::read(path)
                .map_err(|e| Error::invalid(format!("{}: cannot read: {e}", path.display()))),
            Input::Bytes { bytes, .. } => Ok(bytes.to_vec()),
            Input::Text { title, body, .. } => Ok(format!("{title}\n{body}").into_bytes()),
        }
    }

    fn load(&self) -> Result<LoadedDocument> {
        match self {
            Input::File { path, .. } => load_file(path),
            Input::Bytes { source, bytes } => crate::load_bytes(Path::new(source), bytes),
            Input::Text { title, body, .. } => Ok(LoadedDocument {
                title: title.clone(),
                tags: vec![],
                body: body.clone(),
                markdown: false,
                pages: vec![],
            }),
        }
    }
}

pub struct Ingestor {
    pub embedder: Arc<dyn Embedder>,
    pub vectors: Arc<dyn VectorStore>,
    pub docs: Arc<dyn DocumentStore>,
    pub chunker: Arc<Chunker>,
}

impl Ingestor {
    /// Ingests `files` (path, source) into the stores.
    ///
    /// Order of writes per document, which is what makes a crash harmless:
    /// 1. new vectors are upserted and flushed (invisible: no rows yet);
    /// 2. the document and its chunk rows are replaced in one transaction
    ///    (the switch: queries join hits with rows, so they see the old
    ///    version or the new one, never both);
    /// 3. vectors of chunks that left the document are deleted.
    ///
    /// A crash before 2 leaves orphan vectors, after 2 stale ones; both are
    /// vectors without rows, which [`repair`] deletes at the next start.
    pub async fn ingest(
        &self,
        files: &[(PathBuf, String)],
        options: &IngestOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<IngestReport> {
        let inputs: Vec<Input> = files
            .iter()
            .map(|(path, source)| Input::File {
                path: path.clone(),
                source: source.clone(),
            })
            .collect();
        self.ingest_inputs(&inputs, options, progress).await
    }

    /// [`Ingestor::ingest`] over documents from files or from memory.
    pub async fn ingest_inputs(
        &self,
        files: &[Input],
        options: &IngestOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<IngestReport> {
        let started = Instant::now();
        let run_id = self.docs.start_run(&now()).await?;
        let mut report = IngestReport {
            repaired_vectors: repair(self.docs.as_ref(), self.vectors.as_ref()).await?,
            ..Default::default()
        };
        progress(Progress::Started {
            documents: files.len(),
        });
        for (i, input) in files.iter().enumerate() {
            let source = input.source();
            let outcome = match self.ingest_one(input, options, progress).await {
                Ok(outcome) => outcome,
                // A store that fails stops the run; a bad file fails alone.
                Err(e @ (Error::Unavailable(_) | Error::Internal(_))) => return Err(e),
                Err(e) => DocumentOutcome::Failed {
                    source: source.to_string(),
                    reason: e.to_string(),
                },
            };
            report.documents += 1;
            match &outcome {
                DocumentOutcome::Added {
                    chunks, embedded, ..
                } => {
                    report.added += 1;
                    report.chunks += chunks;
                    report.embedded_chunks += embedded;
                }
                DocumentOutcome::Updated {
                    chunks, embedded, ..
                } => {
                    report.updated += 1;
                    report.chunks += chunks;
                    report.embedded_chunks += embedded;
                }
                DocumentOutcome::Unchanged { .. } => report.unchanged += 1,
                DocumentOutcome::Skipped { .. } => report.skipped += 1,
                DocumentOutcome::Failed { .. } => report.failed += 1,
            }
            progress(Progress::Document {
                done: i + 1,
                outcome: outcome.clone(),
            });
            report.outcomes.push(outcome);
        }
        if report.embedded_chunks > 0 {
            self.vectors.optimize().await?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_string(&report).unwrap_or_default();
        self.docs.finish_run(&run_id, &now(), &json).await?;
        Ok(report)
    }

    async fn ingest_one(
        &self,
        input: &Input,
        options: &IngestOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<DocumentOutcome> {
        let source = input.source();
        let bytes = input.bytes()?;
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        // Options change what is stored, so they are part of the identity.
        hasher.update(serde_json::to_vec(&(&options.tags, &options.groups)).unwrap_or_default());
        let content_hash = hex::encode(hasher.finalize());
        let doc_id = rag_core::document_id(&options.collection, source);
        let previous = self
            .docs
            .document_by_source(&options.collection, source)
            .await?;
        if previous
            .as_ref()
            .is_some_and(|p| p.content_hash == content_hash)
        {
            return Ok(DocumentOutcome::Unchanged {
                source: source.into(),
            });
        }

        let loaded = input.load()?;
        let chunker = self.chunker.clone();
        let pieces = {
            let loaded = loaded.clone();
            tokio::task::spawn_blocking(move || chunker.chunk(&loaded))
                .await
                .map_err(|e| Error::internal(e.to_string()))?
        };
        if pieces.is_empty() {
            // An empty page (or a redirect stub) has nothing to answer from;
            // an earlier version of it must not linger either.
            if previous.is_some() {
                self.delete(&doc_id).await?;
            }
            return Ok(DocumentOutcome::Skipped {
                source: source.into(),
                reason: "no text to index (empty or redirect-only page)".into(),
            });
        }

        let mut seen: HashMap<&str, usize> = HashMap::new();
        let chunks: Vec<ChunkRecord> = pieces
            .iter()
            .enumerate()
            .map(|(ordinal, piece)| {
                let occurrence = seen.entry(piece.text.as_str()).or_default();
                let id = rag_core::chunk_id(&doc_id, &piece.text, *occurrence);
                *occurrence += 1;
                ChunkRecord {
                    id,
                    document_id: doc_id.clone(),
                    ordinal,
                    text: piece.text.clone(),
                    heading: piece.heading.clone(),
                    page: piece.page,
                    token_count: piece.token_count,
                }
            })
            .collect();

        let old_ids: HashSet<String> = match &previous {
            Some(_) => self.docs.chunk_ids_of(&doc_id).await?.into_iter().collect(),
            None => HashSet::new(),
        };
        // Chunks whose text is unchanged keep their id, and their vector.
        let to_embed: Vec<&ChunkRecord> =
            chunks.iter().filter(|c| !old_ids.contains(&c.id)).collect();
        for batch in to_embed.chunks(EMBED_BATCH) {
            let texts: Vec<String> = batch
                .iter()
                .map(|c| embedding_text(&loaded.title, &c.heading, &c.text))
                .collect();
            let embedder = self.embedder.clone();
            let (texts, vectors) = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let vectors = embedder.embed(&refs);
                (texts, vectors)
            })
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
            let vectors = vectors?;
            let points = batch
                .iter()
                .zip(texts)
                .zip(vectors)
                .map(|((c, text), dense)| VectorPoint {
                    chunk_id: c.id.clone(),
                    document_id: doc_id.clone(),
                    collection: options.collection.clone(),
                    tags: options.tags.iter().chain(&loaded.tags).cloned().collect(),
                    groups: options.groups.clone(),
                    dense,
                    text,
                })
                .collect();
            self.vectors.upsert(points).await?;
            progress(Progress::Embedded {
                chunks: batch.len(),
            });
        }

        let record = DocumentRecord {
            id: doc_id.clone(),
            collection: options.collection.clone(),
            source: source.to_string(),
            title: loaded.title.clone(),
            content_hash,
            tags: options.tags.iter().chain(&loaded.tags).cloned().collect(),
            groups: options.groups.clone(),
            chunk_count: chunks.len(),
            ingested_at: now(),
        };
        self.docs.replace_document(&record, &chunks).await?;

        let new_ids: HashSet<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        let stale: Vec<String> = old_ids
            .into_iter()
            .filter(|id| !new_ids.contains(id.as_str()))
            .collect();
        self.vectors.delete(&stale).await?;

        let (n, embedded) = (chunks.len(), to_embed.len());
        Ok(match previous {
            Some(_) => DocumentOutcome::Updated {
                source: source.into(),
                chunks: n,
                embedded,
            },
            None => DocumentOutcome::Added {
                source: source.into(),
                chunks: n,
                embedded,
            },
        })
    }

    /// Deletes the documents of `collection` whose source is not in
    /// `keep` (files gone from an ingested folder); returns their sources.
    pub async fn prune(&self, collection: &str, keep: &HashSet<&str>) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for doc in self.docs.documents(Some(collection)).await? {
            if !keep.contains(doc.source.as_str()) {
                self.delete(&doc.id).await?;
                gone.push(doc.source);
            }
        }
        Ok(gone)
    }

    /// Deletes a document: its rows first (it disappears from answers at
    /// once), then its vectors.
    pub async fn delete(&self, doc_id: &str) -> Result<()> {
        let ids = self.docs.chunk_ids_of(doc_id).await?;
        self.docs.delete_document(doc_id).await?;
        self.vectors.delete(&ids).await
    }
}

/// What the embedder reads for a chunk: the page title and heading path
/// give a passage its context ("Per diem" alone says little).
pub fn embedding_text(title: &str, heading: &str, text: &str) -> String {
    match (
        title.is_empty(),
        heading.is_empty() || text.trim_start().starts_with('#'),
    ) {
        (true, true) => text.to_string(),
        (false, true) => format!("{title}\n{text}"),
        (true, false) => format!("{heading}\n{text}"),
        (false, false) => format!("{title} > {heading}\n{text}"),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
