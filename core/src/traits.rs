use async_trait::async_trait;

use crate::{
    AnswerRecord, ApiKeyRecord, ChatMessage, ChunkRecord, DocumentRecord, EmbedderRecord,
    Generation, GenerationRequest, Result, ScoredChunk, SourceRecord, VectorPoint, VectorQuery,
};

/// Turns passages and questions into dense vectors.
///
/// Implementations are CPU- or GPU-bound and blocking: async callers run
/// them on a blocking thread.
pub trait Embedder: Send + Sync {
    /// Name of the model, recorded with the data it embedded.
    fn model_id(&self) -> &str;
    fn dimension(&self) -> usize;
    /// One L2-normalised vector per passage (what is stored and searched),
    /// in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    /// One vector per question, to search the passages' vectors with. Models
    /// trained with an instruction for each side (nomic's `search_query: `)
    /// override it; for the others a question is embedded as a passage is.
    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed(texts)
    }
}

/// Dense, sparse (BM25) and hybrid search over chunks. The sparse vectors
/// are the store's concern: it computes them from `VectorPoint::text` and
/// `VectorQuery::text` (Qdrant's own BM25, with its English tokenizer).
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Inserts or replaces points by chunk id, durably: when this returns,
    /// the points survive a crash.
    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()>;
    /// Deletes points by chunk id, durably. Unknown ids are ignored.
    async fn delete(&self, chunk_ids: &[String]) -> Result<()>;
    /// The best `query.limit` chunks under `query.filter`, best first. The
    /// filter is applied inside the search, never after it.
    async fn search(&self, query: &VectorQuery) -> Result<Vec<ScoredChunk>>;
    /// The dense vectors of these chunks, in order; `None` for unknown ids.
    async fn vectors(&self, chunk_ids: &[String]) -> Result<Vec<Option<Vec<f32>>>>;
    /// Every chunk id in the store, for consistency checks and repair.
    async fn chunk_ids(&self) -> Result<Vec<String>>;
    /// Builds search indexes after bulk writes.
    async fn optimize(&self) -> Result<()>;
    /// Sets the tags and groups of every point of a document, durably:
    /// how a document's new labels reach the vectors it keeps.
    async fn set_labels(&self, document_id: &str, tags: &[String], groups: &[String])
    -> Result<()>;
    /// Problems that do not stop the store but that an operator should fix
    /// (a collection with fewer active replicas than configured), as of
    /// now; `/readyz` shows them.
    async fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The metadata database: documents and chunks. It is the source of truth:
/// a chunk is part of the corpus when, and only when, its row is committed.
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// The documents of this name in a collection, by id: the one
    /// unrestricted writers write (`rag_core::document_id`) and those
    /// restricted writers made of their own.
    async fn documents_by_source(
        &self,
        collection: &str,
        source: &str,
    ) -> Result<Vec<DocumentRecord>>;
    async fn document(&self, id: &str) -> Result<Option<DocumentRecord>>;
    async fn documents(&self, collection: Option<&str>) -> Result<Vec<DocumentRecord>>;
    /// One page of documents ordered by collection and source, and the
    /// total count under the same filter.
    async fn documents_page(
        &self,
        collection: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<DocumentRecord>, usize)>;
    /// Chunk ids currently committed for a document.
    async fn chunk_ids_of(&self, document_id: &str) -> Result<Vec<String>>;
    /// Replaces a document and all its chunks in one transaction.
    async fn replace_document(&self, doc: &DocumentRecord, chunks: &[ChunkRecord]) -> Result<()>;
    /// Deletes a document and its chunks in one transaction.
    async fn delete_document(&self, id: &str) -> Result<()>;
    async fn chunks(&self, ids: &[String]) -> Result<Vec<ChunkRecord>>;
    /// The chunk at `ordinal` of a document, if any.
    async fn chunk_at(&self, document_id: &str, ordinal: usize) -> Result<Option<ChunkRecord>>;
    /// Every committed chunk id (with repeats, if the store has any).
    async fn chunk_ids(&self) -> Result<Vec<String>>;
    async fn document_count(&self) -> Result<usize>;
    /// The embedder the vectors were made with; `None` until one is set.
    async fn embedder(&self) -> Result<Option<EmbedderRecord>>;
    /// Records the embedder the vectors are made with from now on.
    async fn set_embedder(&self, embedder: &EmbedderRecord) -> Result<()>;
    /// Records `embedder` unless one is recorded already; returns the one
    /// recorded now (another process may have been first).
    async fn record_first_embedder(&self, embedder: &EmbedderRecord) -> Result<EmbedderRecord>;
    /// Registers a writer, its heartbeat now on the database's clock.
    async fn register_writer(&self, writer: &str) -> Result<()>;
    /// Renews a writer's heartbeat; `false` when the writer is gone (taken
    /// for dead by another process): it must stop for good.
    async fn heartbeat(&self, writer: &str) -> Result<bool>;
    /// [`DocumentStore::replace_document`] for a writer, under the
    /// vector-deletion lock: refused (`Unavailable`) unless the writer is
    /// still registered with a heartbeat at most `lease.timeout_s` old, and,
    /// for a restricted writer, unless the row it replaces (if any) is
    /// still one its groups cover. So no repair can have taken its marks
    /// for a dead writer's, and no other process can have moved the
    /// document out of its reach, between its checks and its commit.
    async fn commit_document(
        &self,
        lease: &WriterLease<'_>,
        doc: &DocumentRecord,
        chunks: &[ChunkRecord],
    ) -> Result<()>;
    /// Records that `writer` is about to write, or to rely on, the vectors
    /// of these chunks: while its heartbeat is live they are not deleted
    /// (see [`ReferenceLock`]). Waits for a deletion in progress.
    async fn mark_in_flight(&self, writer: &str, chunk_ids: &[String]) -> Result<()>;
    /// Drops `writer`'s marks on these chunks (they are committed now).
    async fn clear_in_flight(&self, writer: &str, chunk_ids: &[String]) -> Result<()>;
    /// Ends a writer: its heartbeat and all its marks go.
    async fn retire_writer(&self, writer: &str) -> Result<()>;
    /// Forgets writers whose heartbeat is older than `timeout_s`, and their
    /// marks; returns how many.
    async fn forget_dead_writers(&self, timeout_s: i64) -> Result<usize>;
    /// Forgets every writer, mark and source claim: for a process that
    /// alone can write the vector store (the embedded engine locks its
    /// folder), any writer left at its start died with an earlier process.
    async fn forget_writers(&self) -> Result<usize>;
    /// Takes the lock under which vectors are deleted; marking chunks in
    /// flight waits for it. Released by [`ReferenceLock::release`] or when
    /// dropped.
    async fn lock_references(&self) -> Result<Box<dyn ReferenceLock>>;
    /// Records the start of an ingest run; returns its id.
    async fn start_run(&self, started_at: &str) -> Result<String>;
    async fn finish_run(&self, run_id: &str, finished_at: &str, report_json: &str) -> Result<()>;
    /// Stores a new API key (its hash only).
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<()>;
    /// Every key, revoked ones too, oldest first.
    async fn keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// The key with this hash, revoked or not.
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    /// Marks a key revoked; false when there is no such key.
    async fn revoke_key(&self, id: &str, revoked_at: &str) -> Result<bool>;
    /// Stores a new source; `InvalidInput` when the name is taken.
    async fn add_source(&self, source: &SourceRecord) -> Result<()>;
    /// Every source, by name.
    async fn sources(&self) -> Result<Vec<SourceRecord>>;
    async fn source(&self, name: &str) -> Result<Option<SourceRecord>>;
    /// Records where a completed sync got to.
    async fn set_source_state(&self, name: &str, state: &str, synced_at: &str) -> Result<()>;
    /// Forgets a source (its documents are deleted by the caller first);
    /// false when there is no such source.
    async fn remove_source(&self, name: &str) -> Result<bool>;
    /// Claims the source `name` for `holder` for `ttl_s` seconds: true when
    /// `holder` holds it now (taken, or renewed), false while another
    /// holder's claim lasts. One writer per source across processes.
    async fn claim_source(&self, name: &str, holder: &str, ttl_s: i64) -> Result<bool>;
    /// Ends `holder`'s claim on `name`, if it still has one.
    async fn release_source(&self, name: &str, holder: &str) -> Result<()>;
    /// The documents a source brought in.
    async fn documents_of_origin(&self, origin: &str) -> Result<Vec<DocumentRecord>>;
    /// Keeps an answer (its rating empty).
    async fn record_answer(&self, answer: &AnswerRecord) -> Result<()>;
    /// Rates the answer `id` asked with `key_id`; false when there is no
    /// such answer of that key (another key's answer reads as missing).
    async fn rate_answer(
        &self,
        id: &str,
        key_id: Option<&str>,
        rating: &str,
        comment: Option<&str>,
        rated_at: &str,
    ) -> Result<bool>;
    /// Rated answers, oldest first.
    async fn rated_answers(&self) -> Result<Vec<AnswerRecord>>;
    /// Forgets the answers asked before `before` (RFC 3339), rated or not;
    /// returns how many.
    async fn forget_answers_before(&self, before: &str) -> Result<u64>;
}

/// Who commits a document, for [`DocumentStore::commit_document`].
#[derive(Debug, Clone, Copy)]
pub struct WriterLease<'a> {
    pub writer: &'a str,
    /// A heartbeat older than this is a dead writer's.
    pub timeout_s: i64,
    /// A restricted writer's groups: it may replace only a row it covers.
    pub cover: Option<&'a [String]>,
}

/// The vector-deletion lock of [`DocumentStore::lock_references`]: while
/// it is held no writer can mark chunks in flight, so what
/// [`ReferenceLock::unreferenced`] returns stays unreferenced until the
/// vectors are deleted and the lock released.
#[async_trait]
pub trait ReferenceLock: Send {
    /// Of `chunk_ids`, those neither committed nor marked by a registered
    /// writer (call [`DocumentStore::forget_dead_writers`] first: every
    /// writer still registered counts as live).
    async fn unreferenced(&mut self, chunk_ids: &[String]) -> Result<Vec<String>>;
    async fn release(self: Box<Self>) -> Result<()>;
}

/// Re-scores retrieved passages against the question, e.g. a cross-encoder.
///
/// Blocking, like [`Embedder`]. Higher is better; scores are only compared
/// with each other.
pub trait Reranker: Send + Sync {
    fn name(&self) -> &str;
    /// One score per passage, in order.
    fn score(&self, question: &str, passages: &[&str]) -> Result<Vec<f32>>;
}

/// Receives an answer's text as it is generated, piece by piece. The pieces
/// concatenated are the generation's text before trimming.
pub type TextSink<'a> = &'a mut (dyn FnMut(&str) + Send);

/// Produces text from chat messages: a model in-process, or a server.
#[async_trait]
pub trait Generator: Send + Sync {
    fn model_id(&self) -> &str;
    /// Number of tokens the model can attend to, prompt and answer together.
    fn context_window(&self) -> usize;
    /// Tokens the prompt of `messages` takes. Backends without the model's
    /// tokenizer estimate, erring on the high side (3 bytes a token).
    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize> {
        Ok(messages.iter().map(|m| m.content.len() / 3 + 8).sum())
    }
    /// Tokens `text` takes inside a prompt, estimated like
    /// [`Generator::count_prompt_tokens`] without the model's tokenizer.
    /// Lets a caller price each piece of a prompt once instead of
    /// rendering the whole prompt per candidate.
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(text.len() / 3 + 1)
    }
    /// Generates the whole answer, sending each piece of text to `sink` as
    /// soon as it is known.
    async fn generate_stream(
        &self,
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Generation>;
    async fn generate(&self, request: GenerationRequest) -> Result<Generation> {
        self.generate_stream(request, &mut |_| {}).await
    }
    /// Whether the backend can answer now (a remote server is reachable and
    /// serves the model). In-process models are ready once loaded.
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
