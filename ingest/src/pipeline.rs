use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rag_core::{
    ChunkRecord, DocumentRecord, DocumentStore, Embedder, Error, ErrorKind, Result, VectorPoint,
    VectorStore, WriterLease,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::load::{extension, unsupported};
use crate::writer::{WRITER_TIMEOUT_S, Writer, delete_unreferenced, repair, target};
use crate::{Chunker, Limits, LoadedDocument, SUPPORTED_EXTENSIONS};

/// Passages embedded per call, across documents; also the unit of
/// progress. The embedder sorts them by length into its own batches, so a
/// wider call pads less, but a document commits only once its chunks are
/// in. The first call of a run takes `FIRST_EMBED_BATCH` (the first
/// documents commit soon, and an interrupted run keeps them); each next
/// call doubles, up to `EMBED_BATCH`. On the handbook (2,284 chunks) this
/// ingested at 74.7 chunks/s against 64-70 at 64 per call.
const FIRST_EMBED_BATCH: usize = 64;
const EMBED_BATCH: usize = 256;
/// Documents read and chunked ahead of the embedder.
const PREPARED_QUEUE: usize = 16;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub collection: String,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    /// The groups of a restricted writer (an API key limited to some
    /// groups); `None` for an unrestricted one (the CLI, admin keys). A
    /// restricted writer replaces only documents it covers (see
    /// [`target`]).
    pub writer_groups: Option<Vec<String>>,
    /// The source (`rag sources`) the documents come from. A document
    /// belongs to one origin, or to none (ingested by path, uploaded): an
    /// input never replaces a document of another origin, and `prune`
    /// leaves sources' documents alone.
    pub origin: Option<String>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            collection: "default".into(),
            tags: vec![],
            groups: vec![],
            writer_groups: None,
            origin: None,
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

/// The bytes of a fetched document: in memory, or read when the pipeline
/// gets to it (a repository's file), so a large sync holds only the
/// documents in progress.
#[derive(Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    Read(Arc<dyn Fn() -> Result<Vec<u8>> + Send + Sync>),
}

impl Content {
    fn read(&self) -> Result<Vec<u8>> {
        match self {
            Content::Bytes(bytes) => Ok(bytes.to_vec()),
            Content::Read(read) => read(),
        }
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Content::Read(_) => f.write_str("Read"),
        }
    }
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
    /// A document a source brought (a file of a repository, a page of a
    /// site): `name` (a file name, never opened) picks the loader.
    Fetched {
        source: String,
        name: String,
        url: Option<String>,
        content: Content,
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
            | Input::Fetched { source, .. }
            | Input::Text { source, .. } => source,
        }
    }

    /// The document's web address, when it has one.
    pub fn url(&self) -> Option<&str> {
        match self {
            Input::Fetched { url, .. } => url.as_deref(),
            Input::File { .. } | Input::Bytes { .. } | Input::Text { .. } => None,
        }
    }

    /// The bytes whose hash decides whether the document changed.
    fn bytes(&self, limits: &Limits) -> Result<Vec<u8>> {
        match self {
            Input::File { path, .. } => {
                let cannot = |e: std::io::Error| {
                    Error::invalid(format!("{}: cannot read: {e}", path.display()))
                };
                // Checked before reading, so a huge file is never in memory.
                let size = std::fs::metadata(path).map_err(cannot)?.len();
                limits
                    .check_bytes(usize::try_from(size).unwrap_or(usize::MAX))
                    .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
                std::fs::read(path).map_err(cannot)
            }
            Input::Bytes { bytes, .. } => Ok(bytes.to_vec()),
            Input::Fetched { content, .. } => content.read(),
            Input::Text { title, body, .. } => Ok(format!("{title}\n{body}").into_bytes()),
        }
    }

    /// Parses the document from `bytes`, what [`Input::bytes`] read (so a
    /// file is read once, for its hash and its text).
    fn load(&self, bytes: &[u8], limits: &Limits) -> Result<LoadedDocument> {
        match self {
            Input::File { path, .. } => crate::load_bytes(path, bytes, limits),
            Input::Bytes { source, .. } => crate::load_bytes(Path::new(source), bytes, limits),
            Input::Fetched { name, .. } => crate::load_bytes(Path::new(name), bytes, limits),
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

/// A document after reading and chunking.
enum Prepared {
    /// Nothing to embed: its outcome is known.
    Done(DocumentOutcome),
    Embed(Box<Pending>),
}

/// A document waiting for its chunks' vectors.
struct Pending {
    record: DocumentRecord,
    chunks: Vec<ChunkRecord>,
    /// Indices into `chunks` of those to embed (new text).
    to_embed: Vec<usize>,
    /// How many of `to_embed` are embedded and upserted.
    embedded: usize,
    /// Chunk ids of the previous version.
    old_ids: HashSet<String>,
    update: bool,
}

impl Pending {
    fn left(&self) -> usize {
        self.to_embed.len() - self.embedded
    }
}

impl IngestReport {
    fn record(&mut self, outcome: &DocumentOutcome) {
        self.documents += 1;
        match outcome {
            DocumentOutcome::Added {
                chunks, embedded, ..
            } => {
                self.added += 1;
                self.chunks += chunks;
                self.embedded_chunks += embedded;
            }
            DocumentOutcome::Updated {
                chunks, embedded, ..
            } => {
                self.updated += 1;
                self.chunks += chunks;
                self.embedded_chunks += embedded;
            }
            DocumentOutcome::Unchanged { .. } => self.unchanged += 1,
            DocumentOutcome::Skipped { .. } => self.skipped += 1,
            DocumentOutcome::Failed { .. } => self.failed += 1,
        }
        self.outcomes.push(outcome.clone());
    }
}

pub struct Ingestor {
    pub embedder: Arc<dyn Embedder>,
    pub vectors: Arc<dyn VectorStore>,
    pub docs: Arc<dyn DocumentStore>,
    pub chunker: Arc<Chunker>,
    /// What one document may cost (size, pages, text, parse time).
    pub limits: Limits,
    /// Whether each chunk is embedded and indexed under its document's
    /// title and heading path ([`embedding_text`]); off only to measure
    /// what that brings (`ingest.context_header`).
    pub context_header: bool,
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
    ///
    /// Two stages joined by a bounded queue: one reads, hashes and chunks
    /// documents (parsing runs on blocking threads), the other embeds
    /// chunks in batches that cross document boundaries (a wiki has many
    /// short pages: per-page batches would be small), upserts them, and
    /// commits each document once all its chunks are in. The write order
    /// per document is the one above.
    pub async fn ingest_inputs(
        &self,
        files: &[Input],
        options: &IngestOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<IngestReport> {
        let started = Instant::now();
        let run_id = self.docs.start_run(&now()).await?;
        let writer = Writer::start(self.docs.clone()).await?;
        let result = self.run(files, options, &writer, progress).await;
        // Done or failed, the run is over: what it left uncommitted is for
        // the next repair. (If even this fails, the marks lapse with the
        // heartbeat.)
        let retired = writer.retire().await;
        let mut report = result?;
        retired?;
        report.seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_string(&report).unwrap_or_default();
        self.docs.finish_run(&run_id, &now(), &json).await?;
        Ok(report)
    }

    async fn run(
        &self,
        files: &[Input],
        options: &IngestOptions,
        writer: &Writer,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<IngestReport> {
        let repaired = repair(self.docs.as_ref(), self.vectors.as_ref()).await?;
        let mut report = IngestReport {
            // Other writers' leftovers are not a restricted caller's to
            // count.
            repaired_vectors: if options.writer_groups.is_none() {
                repaired
            } else {
                0
            },
            ..Default::default()
        };
        progress(Progress::Started {
            documents: files.len(),
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Prepared>>(PREPARED_QUEUE);
        let produce = async move {
            for input in files {
                let prepared = self
                    .prepare(input, options, writer)
                    .await
                    .or_else(|e| match e {
                        // A store that fails stops the run; a bad file fails alone.
                        _ if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Internal) => {
                            Err(e)
                        }
                        e => Ok(Prepared::Done(DocumentOutcome::Failed {
                            source: input.source().to_string(),
                            reason: e.to_string(),
                        })),
                    });
                if tx.send(prepared).await.is_err() {
                    break; // the consumer stopped on an error
                }
            }
        };
        let consume = self.embed_and_commit(rx, options, writer, &mut report, progress);
        let ((), consumed) = tokio::join!(produce, consume);
        consumed?;
        if report.embedded_chunks > 0 {
            self.vectors.optimize().await?;
        }
        Ok(report)
    }

    async fn embed_and_commit(
        &self,
        mut rx: tokio::sync::mpsc::Receiver<Result<Prepared>>,
        options: &IngestOptions,
        writer: &Writer,
        report: &mut IngestReport,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<()> {
        let mut record = |outcome: DocumentOutcome| {
            report.record(&outcome);
            progress(Progress::Document {
                done: report.documents,
                outcome,
            });
        };
        // Documents with chunks still to embed, in arrival order.
        let mut waiting: VecDeque<Pending> = VecDeque::new();
        let mut open = true;
        let mut batch_size = FIRST_EMBED_BATCH;
        loop {
            // Take in prepared documents until a batch is full; wait only
            // when there is nothing to embed.
            while open && waiting.iter().map(Pending::left).sum::<usize>() < batch_size {
                let next = if waiting.is_empty() {
                    rx.recv().await
                } else {
                    match rx.try_recv() {
                        Ok(next) => Some(next),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                    }
                };
                match next {
                    None => open = false,
                    Some(prepared) => match prepared? {
                        Prepared::Done(outcome) => record(outcome),
                        Prepared::Embed(p) if p.left() == 0 => {
                            record(self.commit(*p, options, writer).await?)
                        }
                        Prepared::Embed(p) => waiting.push_back(*p),
                    },
                }
            }
            if waiting.is_empty() {
                if open {
                    continue;
                }
                return Ok(());
            }
            // One batch across the waiting documents, in order.
            let mut batch: Vec<(usize, usize)> = Vec::new(); // (waiting index, chunk index)
            'fill: for (d, p) in waiting.iter().enumerate() {
                for &c in &p.to_embed[p.embedded..] {
                    if batch.len() == batch_size {
                        break 'fill;
                    }
                    batch.push((d, c));
                }
            }
            batch_size = (batch_size * 2).min(EMBED_BATCH);
            let texts: Vec<String> = batch
                .iter()
                .map(|&(d, c)| {
                    let p = &waiting[d];
                    let chunk = &p.chunks[c];
                    if self.context_header {
                        embedding_text(&p.record.title, &chunk.heading, &chunk.text)
                    } else {
                        chunk.text.clone()
                    }
                })
                .collect();
            let embedder = self.embedder.clone();
            let (texts, vectors) = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let vectors = embedder.embed(&refs);
                (texts, vectors)
            })
            .await
            .map_err(|e| Error::internal("a blocking task failed").with_source(e))?;
            let points = batch
                .iter()
                .zip(texts)
                .zip(vectors?)
                .map(|((&(d, c), text), dense)| {
                    let p = &waiting[d];
                    VectorPoint {
                        chunk_id: p.chunks[c].id.clone(),
                        document_id: p.record.id.clone(),
                        collection: options.collection.clone(),
                        tags: p.record.tags.clone(),
                        groups: p.record.groups.clone(),
                        dense,
                        text,
                    }
                })
                .collect();
            self.vectors.upsert(points).await?;
            for &(d, _) in &batch {
                waiting[d].embedded += 1;
            }
            progress(Progress::Embedded {
                chunks: batch.len(),
            });
            while waiting.front().is_some_and(|p| p.left() == 0) {
                let done = waiting.pop_front().expect("front exists");
                record(self.commit(done, options, writer).await?);
            }
        }
    }

    /// Reads, hashes and chunks one document: either its outcome is known
    /// already (unchanged, skipped) or it waits for embedding.
    async fn prepare(
        &self,
        input: &Input,
        options: &IngestOptions,
        writer: &Writer,
    ) -> Result<Prepared> {
        let source = input.source();
        // Options change what is stored, so they are part of the identity.
        let labels =
            serde_json::to_vec(&(&options.tags, &options.groups, input.url())).unwrap_or_default();
        let (read, limits) = (input.clone(), self.limits);
        // Reading and hashing a file (up to the size limit) is blocking work.
        let (bytes, content_hash) = tokio::task::spawn_blocking(move || {
            let bytes = read.bytes(&limits)?;
            let mut hasher = Sha256::new();
            hasher.update(&bytes);
            hasher.update(&labels);
            Ok::<_, Error>((bytes, hex::encode(hasher.finalize())))
        })
        .await
        .map_err(|e| Error::internal("a blocking task failed").with_source(e))??;
        let existing = self
            .docs
            .documents_by_source(&options.collection, source)
            .await?;
        let (doc_id, previous) = target(source, options, existing);
        if let Some(p) = previous.as_ref().filter(|p| p.origin != options.origin) {
            return Err(Error::invalid(match &p.origin {
                Some(other) => format!(
                    "{source}: collection {:?} has a document of that name from source {other:?}; \
                     give this one another collection",
                    options.collection
                ),
                None => format!(
                    "{source}: collection {:?} has a document of that name that was ingested or \
                     uploaded; give this source another collection, or delete that document",
                    options.collection
                ),
            }));
        }
        if previous
            .as_ref()
            .is_some_and(|p| p.content_hash == content_hash)
        {
            return Ok(Prepared::Done(DocumentOutcome::Unchanged {
                source: source.into(),
            }));
        }

        let chunker = self.chunker.clone();
        let input_owned = input.clone();
        let limits = self.limits;
        let parse = tokio::task::spawn_blocking(move || {
            let loaded = input_owned.load(&bytes, &limits)?;
            let pieces = chunker.chunk(&loaded);
            Ok::<_, Error>((loaded, pieces))
        });
        // Loaders also check the clock themselves (between PDF pages); this
        // catches a parser stuck inside one step. The blocking thread cannot
        // be stopped from outside: it is left to finish and its result
        // dropped, and the run goes on without the document.
        let (loaded, pieces) = tokio::time::timeout(limits.parse_timeout, parse)
            .await
            .map_err(|_| Error::invalid(format!("{source}: {}", limits.timed_out())))?
            .map_err(|e| Error::internal("a blocking task failed").with_source(e))??;
        if pieces.is_empty() {
            // An empty page (or a redirect stub) has nothing to answer from;
            // an earlier version of it must not linger either.
            if previous.is_some() {
                self.delete(&doc_id).await?;
            }
            return Ok(Prepared::Done(DocumentOutcome::Skipped {
                source: source.into(),
                reason: "no text to index (empty or redirect-only page)".into(),
            }));
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

        // Marked before the previous version's chunks are read: from here
        // on, no other writer deletes the vectors this one relies on.
        let ids: Vec<String> = chunks.iter().map(|c| c.id.clone()).collect();
        writer.mark(&ids).await?;
        let old_ids: HashSet<String> = match &previous {
            Some(_) => self.docs.chunk_ids_of(&doc_id).await?.into_iter().collect(),
            None => HashSet::new(),
        };
        // Chunks whose text is unchanged keep their id, and their vector.
        let to_embed: Vec<usize> = (0..chunks.len())
            .filter(|&i| !old_ids.contains(&chunks[i].id))
            .collect();
        let record = DocumentRecord {
            id: doc_id,
            collection: options.collection.clone(),
            source: source.to_string(),
            title: loaded.title.clone(),
            content_hash,
            tags: options.tags.iter().chain(&loaded.tags).cloned().collect(),
            groups: options.groups.clone(),
            chunk_count: chunks.len(),
            ingested_at: String::new(),
            url: input.url().map(str::to_string),
            origin: options.origin.clone(),
        };
        Ok(Prepared::Embed(Box::new(Pending {
            record,
            chunks,
            to_embed,
            embedded: 0,
            old_ids,
            update: previous.is_some(),
        })))
    }

    /// Switches a fully embedded document to its new version (one SQL
    /// transaction, under the writer's lease), then deletes the vectors of
    /// chunks that left it. An updated document's labels are set on every
    /// vector it keeps first, so that no query after the switch sees
    /// other labels (even ones an earlier version left behind).
    async fn commit(
        &self,
        pending: Pending,
        options: &IngestOptions,
        writer: &Writer,
    ) -> Result<DocumentOutcome> {
        let Pending {
            mut record,
            chunks,
            to_embed,
            old_ids,
            update,
            ..
        } = pending;
        writer.check()?;
        if update {
            self.vectors
                .set_labels(&record.id, &record.tags, &record.groups)
                .await?;
        }
        record.ingested_at = now();
        let lease = WriterLease {
            writer: &writer.id,
            timeout_s: WRITER_TIMEOUT_S,
            cover: options.writer_groups.as_deref(),
        };
        self.docs.commit_document(&lease, &record, &chunks).await?;
        let new_ids: Vec<String> = chunks.iter().map(|c| c.id.clone()).collect();
        self.docs.clear_in_flight(&writer.id, &new_ids).await?;
        let new_ids: HashSet<String> = new_ids.into_iter().collect();
        let stale: Vec<String> = old_ids
            .into_iter()
            .filter(|id| !new_ids.contains(id))
            .collect();
        delete_unreferenced(self.docs.as_ref(), self.vectors.as_ref(), &stale).await?;
        let (source, chunks, embedded) = (record.source, chunks.len(), to_embed.len());
        Ok(if update {
            DocumentOutcome::Updated {
                source,
                chunks,
                embedded,
            }
        } else {
            DocumentOutcome::Added {
                source,
                chunks,
                embedded,
            }
        })
    }

    /// Deletes the documents of `collection` whose source is not in
    /// `keep` (files gone from an ingested folder); returns their sources.
    /// Documents from a source are its own to delete (`rag sync`).
    pub async fn prune(&self, collection: &str, keep: &HashSet<&str>) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for doc in self.docs.documents(Some(collection)).await? {
            if doc.origin.is_none() && !keep.contains(doc.source.as_str()) {
                self.delete(&doc.id).await?;
                gone.push(doc.source);
            }
        }
        Ok(gone)
    }

    /// Deletes a document: its rows first (it disappears from answers at
    /// once), then its vectors (those no other writer has in flight).
    pub async fn delete(&self, doc_id: &str) -> Result<()> {
        let ids = self.docs.chunk_ids_of(doc_id).await?;
        self.docs.delete_document(doc_id).await?;
        delete_unreferenced(self.docs.as_ref(), self.vectors.as_ref(), &ids).await?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, groups: &[&str]) -> DocumentRecord {
        DocumentRecord {
            id: id.into(),
            collection: "default".into(),
            source: "plan.md".into(),
            title: "Plan".into(),
            content_hash: "h".into(),
            tags: vec![],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            chunk_count: 1,
            ingested_at: String::new(),
            url: None,
            origin: None,
        }
    }

    fn options(groups: &[&str], writer: Option<&[&str]>) -> IngestOptions {
        let list = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        IngestOptions {
            groups: list(groups),
            writer_groups: writer.map(list),
            ..Default::default()
        }
    }

    #[test]
    fn a_restricted_writer_replaces_only_what_it_covers() {
        let unscoped = rag_core::document_id("default", "plan.md");
        let own = "0123456789abcdef0123456789abcdef".to_string();
        let target = |existing: Vec<DocumentRecord>, o: &IngestOptions| {
            let (id, previous) = target("plan.md", o, existing);
            (id, previous.map(|p| p.id))
        };
        // Unrestricted: always the unscoped document.
        assert_eq!(
            target(vec![doc(&unscoped, &["alpha"])], &options(&["beta"], None)),
            (unscoped.clone(), Some(unscoped.clone()))
        );
        assert_eq!(
            target(vec![], &options(&[], None)),
            (unscoped.clone(), None)
        );
        // beta cannot take alpha's name, nor a document it shares with
        // alpha, nor a group-less one: a new document, with a new random
        // id each time (nothing to compare with a free name's).
        let beta = options(&["beta"], Some(&["beta"]));
        for groups in [&["alpha"][..], &["alpha", "beta"], &[]] {
            let (id, previous) = target(vec![doc(&unscoped, groups)], &beta);
            assert_eq!(previous, None, "{groups:?}");
            assert!(id != unscoped && id.len() == 32, "{id}");
            assert_ne!(id, target(vec![doc(&unscoped, groups)], &beta).0);
        }
        // What it covers it replaces: the unscoped one first, then its own.
        assert_eq!(
            target(vec![doc(&own, &["beta"]), doc(&unscoped, &["beta"])], &beta),
            (unscoped.clone(), Some(unscoped.clone()))
        );
        assert_eq!(
            target(
                vec![doc(&unscoped, &["alpha"]), doc(&own, &["beta"])],
                &beta
            ),
            (own.clone(), Some(own.clone()))
        );
        // A key of alpha and beta covers alpha's document and may move it.
        let both = options(&["beta"], Some(&["alpha", "beta"]));
        assert_eq!(
            target(vec![doc(&unscoped, &["alpha"])], &both),
            (unscoped.clone(), Some(unscoped.clone()))
        );
    }
}
