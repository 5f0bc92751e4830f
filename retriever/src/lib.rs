//! From a question to ranked passages.
//!
//! The question is embedded, the vector store finds candidates under the
//! caller's filters (dense, BM25 or both fused), and each candidate is
//! joined with its committed chunk row and document. Candidates without a
//! committed row (vectors of an ingest still in flight, or left by a crash)
//! are dropped here, which is what lets ingest switch a document's version
//! atomically in SQL. So is a candidate whose committed document does not
//! match the caller's collection, tags or groups: the search filters on
//! the vectors' payload, and a stale payload must never show a chunk to
//! the wrong caller (counted in `rag_retrieval_label_mismatches_total`;
//! outside the moment an ingest switches a document's labels, a non-zero
//! count is a bug). Then the list is shaped: near-duplicates go, an
//! optional reranker and maximal-marginal-relevance reorder it, and a hit
//! cut mid-sentence can take in the chunk that follows it.

pub mod metrics;
mod settings;
mod shape;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rag_core::{
    ChunkRecord, DocumentRecord, DocumentStore, Embedder, Error, Fusion, Hit, Reranker, Result,
    SearchFilter, SearchMode, VectorQuery, VectorStore,
};

pub use settings::RetrievalSettings;
pub use shape::{EmbeddingReranker, cut_mid_sentence, join_overlapping, mmr_order};

/// Whether a committed document passes the filter the search ran under:
/// the same test the vector store applies to payloads, on the row that is
/// the source of truth.
pub fn admits(filter: &SearchFilter, doc: &DocumentRecord) -> bool {
    let collection = filter
        .collection
        .as_ref()
        .is_none_or(|c| *c == doc.collection);
    let tags = filter.tags.is_empty() || doc.tags.iter().any(|t| filter.tags.contains(t));
    let groups = filter
        .groups
        .as_ref()
        .is_none_or(|mine| doc.groups.iter().any(|g| mine.contains(g)));
    collection && tags && groups
}

/// Candidates fetched per requested hit: some are dropped (uncommitted,
/// near-duplicates) and reranking and diversity need a choice.
const OVERFETCH: usize = 3;

/// How one retrieval runs. The defaults are what `retrieve`, `ask` and the
/// API use.
#[derive(Debug, Clone)]
pub struct RetrieveOptions {
    pub k: usize,
    pub mode: SearchMode,
    pub fusion: Fusion,
    pub filter: SearchFilter,
    /// A hit whose embedding has at least this cosine similarity to a
    /// better hit's is a near-duplicate and dropped (1.0 keeps all but
    /// identical ones).
    pub dedup_similarity: f32,
    /// Maximal marginal relevance: `Some(lambda)` trades relevance (1.0)
    /// against diversity (0.0).
    pub mmr_lambda: Option<f32>,
    /// Append the next chunk of the document to a hit that ends
    /// mid-sentence.
    pub expand_neighbours: bool,
    /// The best hit takes in up to this many of the chunks that follow it
    /// in its document (stopping at one that is a hit of its own): the fact
    /// a question is after often sits just past the passage that matched
    /// its words. 0: off.
    pub continue_best: usize,
    /// Search the exact neighbours instead of the approximate index.
    pub exact: bool,
    /// See [`VectorQuery::hnsw_ef`].
    pub hnsw_ef: Option<usize>,
}

impl Default for RetrieveOptions {
    fn default() -> Self {
        Self {
            k: 5,
            mode: SearchMode::default(),
            fusion: Fusion::default(),
            filter: SearchFilter::default(),
            dedup_similarity: 0.98,
            mmr_lambda: None,
            expand_neighbours: false,
            continue_best: 0,
            exact: false,
            hnsw_ef: None,
        }
    }
}

pub struct Retriever {
    pub embedder: Arc<dyn Embedder>,
    pub vectors: Arc<dyn VectorStore>,
    pub docs: Arc<dyn DocumentStore>,
    pub reranker: Option<Arc<dyn Reranker>>,
}

/// A joined candidate, before shaping.
struct Candidate {
    hit: Hit,
    vector: Vec<f32>,
    /// The ordinal of the last chunk its text takes in (its own, until
    /// it is joined with the ones after it).
    last: usize,
    /// The version of its document it was admitted at.
    content_hash: String,
}

impl Retriever {
    pub async fn retrieve_with(
        &self,
        question: &str,
        options: &RetrieveOptions,
    ) -> Result<Vec<Hit>> {
        let question = question.trim();
        if question.is_empty() {
            return Err(Error::invalid("the question is empty"));
        }
        if options.k == 0 {
            return Ok(vec![]);
        }
        let dense = self.embed(question).await?;
        let scored = self
            .vectors
            .search(&VectorQuery {
                dense: dense.clone(),
                text: question.to_string(),
                mode: options.mode,
                fusion: options.fusion,
                filter: options.filter.clone(),
                limit: options.k * OVERFETCH,
                exact: options.exact,
                hnsw_ef: options.hnsw_ef,
            })
            .await?;
        let mut candidates = self.join(scored, &options.filter).await?;

        shape::drop_near_duplicates(&mut candidates, options.dedup_similarity, |c| {
            (&c.vector, &c.hit.text)
        });
        if let Some(reranker) = &self.reranker {
            self.rerank(reranker.clone(), question, &mut candidates)
                .await?;
        }
        if let Some(lambda) = options.mmr_lambda {
            let relevance: Vec<f32> = candidates.iter().map(|c| c.hit.score).collect();
            let vectors: Vec<&[f32]> = candidates.iter().map(|c| c.vector.as_slice()).collect();
            let order = mmr_order(&relevance, &vectors, lambda, options.k);
            let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
            candidates = order.into_iter().filter_map(|i| slots[i].take()).collect();
        }
        candidates.truncate(options.k);
        if options.expand_neighbours {
            for c in &mut candidates {
                self.expand(c, &options.filter).await?;
            }
        }
        if options.continue_best > 0 {
            self.continue_best(&mut candidates, options).await?;
        }
        Ok(candidates
            .into_iter()
            .enumerate()
            .map(|(i, c)| Hit {
                rank: i + 1,
                ..c.hit
            })
            .collect())
    }

    async fn embed(&self, question: &str) -> Result<Vec<f32>> {
        let embedder = self.embedder.clone();
        let q = question.to_string();
        tokio::task::spawn_blocking(move || embedder.embed_queries(&[q.as_str()]))
            .await
            .map_err(|e| Error::internal("a blocking task failed").with_source(e))??
            .pop()
            .ok_or_else(|| Error::internal("the embedder returned no vector"))
    }

    /// Joins hits with their committed rows, in rank order, keeping those
    /// whose document `filter` admits.
    async fn join(
        &self,
        scored: Vec<rag_core::ScoredChunk>,
        filter: &SearchFilter,
    ) -> Result<Vec<Candidate>> {
        let ids: Vec<String> = scored.iter().map(|s| s.chunk_id.clone()).collect();
        let chunks: HashMap<String, ChunkRecord> = self
            .docs
            .chunks(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let mut documents: HashMap<String, Option<DocumentRecord>> = HashMap::new();
        let mut out = Vec::with_capacity(scored.len());
        for s in scored {
            let Some(chunk) = chunks.get(&s.chunk_id) else {
                continue;
            };
            if !documents.contains_key(&chunk.document_id) {
                let doc = self.docs.document(&chunk.document_id).await?;
                documents.insert(chunk.document_id.clone(), doc);
            }
            let Some(Some(doc)) = documents.get(&chunk.document_id) else {
                continue;
            };
            if !admits(filter, doc) {
                ::metrics::counter!("rag_retrieval_label_mismatches_total").increment(1);
                tracing::warn!(
                    chunk = %chunk.id,
                    document = %doc.id,
                    "a vector's labels do not match its committed document; dropped"
                );
                continue;
            }
            out.push(Candidate {
                hit: Hit {
                    rank: out.len() + 1,
                    score: s.score,
                    similarity: s.similarity,
                    doc_id: doc.id.clone(),
                    chunk_id: chunk.id.clone(),
                    source: doc.source.clone(),
                    title: doc.title.clone(),
                    page: chunk.page,
                    heading: chunk.heading.clone(),
                    text: chunk.text.clone(),
                    url: doc.url.clone(),
                },
                vector: s.vector,
                last: chunk.ordinal,
                content_hash: doc.content_hash.clone(),
            });
        }
        Ok(out)
    }

    /// Reorders candidates by the reranker's score; the reranker's score
    /// becomes the hit's score.
    async fn rerank(
        &self,
        reranker: Arc<dyn Reranker>,
        question: &str,
        candidates: &mut [Candidate],
    ) -> Result<()> {
        let passages: Vec<String> = candidates.iter().map(|c| c.hit.text.clone()).collect();
        let q = question.to_string();
        let scores = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
            reranker.score(&q, &refs)
        })
        .await
        .map_err(|e| Error::internal("a blocking task failed").with_source(e))??;
        if scores.len() != candidates.len() {
            return Err(Error::internal(format!(
                "the reranker scored {} passages of {}",
                scores.len(),
                candidates.len()
            )));
        }
        for (c, s) in candidates.iter_mut().zip(scores) {
            c.hit.score = s;
        }
        candidates.sort_by(|a, b| b.hit.score.total_cmp(&a.hit.score));
        Ok(())
    }

    /// Appends the document's next chunk when the hit ends mid-sentence.
    async fn expand(&self, c: &mut Candidate, filter: &SearchFilter) -> Result<()> {
        if !cut_mid_sentence(&c.hit.text) {
            return Ok(());
        }
        if let Some(next) = self.next_chunk(c, filter).await?
            && next.heading == c.hit.heading
        {
            c.hit.text = join_overlapping(&c.hit.text, &next.text);
            c.last = next.ordinal;
        }
        Ok(())
    }

    /// Appends to the best hit up to `options.continue_best` chunks that
    /// follow it in its document, stopping before one that is itself a hit
    /// (it is shown already), one on another page, or the document's end.
    async fn continue_best(
        &self,
        candidates: &mut [Candidate],
        options: &RetrieveOptions,
    ) -> Result<()> {
        let shown: HashSet<String> = candidates.iter().map(|c| c.hit.chunk_id.clone()).collect();
        let Some(best) = candidates.first_mut() else {
            return Ok(());
        };
        for _ in 0..options.continue_best {
            let Some(next) = self.next_chunk(best, &options.filter).await? else {
                break;
            };
            if shown.contains(&next.id) || next.page != best.hit.page {
                break;
            }
            best.hit.text = join_overlapping(&best.hit.text, &next.text);
            best.last = next.ordinal;
        }
        Ok(())
    }

    /// The chunk after the last one `c` takes in, while its document is
    /// still the version `c` was admitted at and still passes `filter`:
    /// the chunk is read first and the document after, so an ingest that
    /// replaces the document, or narrows its groups, between the search
    /// and this shows nothing of the new version.
    async fn next_chunk(
        &self,
        c: &Candidate,
        filter: &SearchFilter,
    ) -> Result<Option<ChunkRecord>> {
        let Some(next) = self.docs.chunk_at(&c.hit.doc_id, c.last + 1).await? else {
            return Ok(None);
        };
        let current = self.docs.document(&c.hit.doc_id).await?;
        Ok(current
            .is_some_and(|doc| doc.content_hash == c.content_hash && admits(filter, &doc))
            .then_some(next))
    }
}
