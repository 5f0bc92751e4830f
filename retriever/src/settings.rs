//! `[retrieval]`: how many passages, found how, shaped how.

use rag_core::{Fusion, SearchFilter, SearchMode};
use serde::Deserialize;

use crate::RetrieveOptions;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalSettings {
    /// Passages retrieved per question.
    pub k: usize,
    /// Below this cosine similarity of the best passage, the documents are
    /// taken not to cover the question and the model is not called (the
    /// answer policy's cut-off, `rag_answer::Policy`).
    pub min_score: f32,
    /// Passages scoring below `best - relative_cutoff` are not shown to the
    /// model (they rarely help and cost prompt tokens).
    pub relative_cutoff: f32,
    /// dense, sparse (BM25) or hybrid (both, fused).
    pub mode: SearchMode,
    /// How the hybrid mode fuses its two sides.
    pub fusion: Fusion,
    /// Hits at least this similar to a better one are dropped.
    pub dedup_similarity: f32,
    /// Maximal marginal relevance, 0 (diverse) to 1 (relevant); off when unset.
    pub mmr_lambda: Option<f32>,
    /// A hit that ends mid-sentence takes in the next chunk.
    pub expand_neighbours: bool,
    /// The best hit takes in up to this many of the chunks that follow it
    /// in its document; 0 is off.
    pub continue_best: usize,
    /// Rescore candidates with the reranker (the embedder's cosine on the
    /// bare passage until a cross-encoder ships).
    pub rerank: bool,
    /// Breadth of the approximate vector search (HNSW ef); unset: the
    /// engine's default. `rag bench query` shows recall against it.
    pub hnsw_ef: Option<usize>,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        let shaping = RetrieveOptions::default();
        Self {
            k: 5,
            min_score: 0.25,
            relative_cutoff: 0.25,
            mode: shaping.mode,
            fusion: shaping.fusion,
            dedup_similarity: shaping.dedup_similarity,
            mmr_lambda: shaping.mmr_lambda,
            expand_neighbours: shaping.expand_neighbours,
            continue_best: shaping.continue_best,
            rerank: false,
            hnsw_ef: shaping.hnsw_ef,
        }
    }
}

/// Chunks the best hit may take in after it (`continue_best`): each costs
/// a query and prompt room.
const MAX_CONTINUE_BEST: usize = 8;

impl RetrievalSettings {
    /// Checks the settings (`[retrieval]`), with a message that says what
    /// to fix.
    pub fn check(&self) -> rag_core::Result<()> {
        if self.continue_best > MAX_CONTINUE_BEST {
            return Err(rag_core::Error::invalid(format!(
                "retrieval.continue_best is {}: at most {MAX_CONTINUE_BEST} chunks may follow \
                 the best hit (one is what the handbook measure gains from; 0 turns it off)",
                self.continue_best
            )));
        }
        self.fusion.check()
    }

    /// The options of one retrieval: these settings, with a request's `k`,
    /// mode and filter.
    pub fn options(
        &self,
        k: Option<usize>,
        mode: Option<SearchMode>,
        filter: SearchFilter,
    ) -> RetrieveOptions {
        RetrieveOptions {
            k: k.unwrap_or(self.k),
            mode: mode.unwrap_or(self.mode),
            fusion: self.fusion,
            filter,
            dedup_similarity: self.dedup_similarity,
            mmr_lambda: self.mmr_lambda,
            expand_neighbours: self.expand_neighbours,
            continue_best: self.continue_best,
            exact: false,
            hnsw_ef: self.hnsw_ef,
        }
    }
}
