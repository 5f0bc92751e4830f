use serde::{Deserialize, Serialize};

/// A document as stored in the metadata database.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub id: String,
    pub collection: String,
    /// Path relative to the ingested folder, or the file name.
    pub source: String,
    pub title: String,
    /// sha256 of the raw file bytes; decides whether a re-ingest is needed.
    pub content_hash: String,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    pub chunk_count: usize,
    pub ingested_at: String,
    /// Where people read the document (the page of a crawled site, the
    /// file in a repository's web view); only documents from a source
    /// (`rag sources`) have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The source the document came from; `None` for files ingested by
    /// path or uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// One passage of a document, the unit that is embedded and retrieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub id: String,
    pub document_id: String,
    /// Position of the chunk within its document, from 0.
    pub ordinal: usize,
    pub text: String,
    /// Heading path, e.g. `Travel > Per diem`; empty when none.
    pub heading: String,
    /// 1-based page for paged formats (PDF).
    pub page: Option<u32>,
    pub token_count: usize,
}

/// A chunk with its dense vector, as written to the vector store.
#[derive(Debug, Clone)]
pub struct VectorPoint {
    pub chunk_id: String,
    pub document_id: String,
    pub collection: String,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    pub dense: Vec<f32>,
    /// The text the sparse (BM25) vector is computed from: the same text
    /// the embedder read.
    pub text: String,
}

/// What a vector search is restricted to. Every field is a hard filter
/// applied inside the search.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SearchFilter {
    pub collection: Option<String>,
    /// Any of these tags.
    pub tags: Vec<String>,
    /// The caller's access groups: `None` means unrestricted (local, open
    /// mode); `Some` returns only chunks that share a group with the caller.
    pub groups: Option<Vec<String>>,
}

/// How candidates are found.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest neighbours of the question's embedding.
    Dense,
    /// BM25 over stemmed words, without stop words.
    Sparse,
    /// Both, fused (`retrieval.fusion`: a convex combination of their
    /// scaled scores by default, or reciprocal rank): the best on the
    /// SciFact evaluation (BENCHMARKS.md), hence the default.
    #[default]
    Hybrid,
}

impl SearchMode {
    pub const ALL: [SearchMode; 3] = [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid];

    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Dense => "dense",
            SearchMode::Sparse => "sparse",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SearchMode {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                crate::Error::invalid(format!(
                    "unknown search mode {s:?}; use dense, sparse or hybrid"
                ))
            })
    }
}

/// How a hybrid search combines its dense and sparse sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Reciprocal rank fusion: a candidate at rank `r` (from 0) of a list
    /// scores `weight / (rrf_k + r + 1)`.
    Rrf,
    /// A convex combination of each side's scores, each scaled from its
    /// theoretical minimum (cosine -1, BM25 0) to the best of its list:
    /// `alpha * dense + (1 - alpha) * sparse`, a side a candidate is
    /// missing from counting 0 (Bruch et al., "An Analysis of Fusion
    /// Functions for Hybrid Retrieval", 2023).
    /// The default: on SciFact it beats RRF by 0.02-0.03 nDCG@10
    /// (BENCHMARKS.md, "Fusion").
    #[default]
    Convex,
}

/// How the two sides of a hybrid search are fused, and their weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fusion {
    pub method: FusionMethod,
    /// RRF: the rank constant.
    pub rrf_k: usize,
    /// RRF: each side's weight.
    pub dense_weight: f32,
    pub sparse_weight: f32,
    /// Convex: the dense side's share, from 0 to 1.
    pub alpha: f32,
}

impl Default for Fusion {
    fn default() -> Self {
        // For RRF, k = 60 is the constant of its paper (Cormack et al., 2009).
        Self {
            method: FusionMethod::Convex,
            rrf_k: 60,
            dense_weight: 1.0,
            sparse_weight: 1.0,
            // Tuned on half of SciFact's train queries (BENCHMARKS.md).
            alpha: 0.8,
        }
    }
}

impl Fusion {
    /// Checks the settings (`retrieval.fusion`), with a message that says
    /// what to fix.
    pub fn check(&self) -> crate::Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(crate::Error::invalid(format!(
                "retrieval.fusion.alpha is {}: give the dense side's share, from 0 to 1 \
                 (0.8 by default)",
                self.alpha
            )));
        }
        let weight = |w: f32| w.is_finite() && w >= 0.0;
        if !(weight(self.dense_weight) && weight(self.sparse_weight)) || self.rrf_k == 0 {
            return Err(crate::Error::invalid(
                "retrieval.fusion: dense_weight and sparse_weight must be 0 or more, and rrf_k \
                 at least 1",
            ));
        }
        Ok(())
    }

    /// Whether RRF's own settings differ from their defaults.
    pub fn rrf_tuned(&self) -> bool {
        let d = Self::default();
        (self.rrf_k, self.dense_weight, self.sparse_weight)
            != (d.rrf_k, d.dense_weight, d.sparse_weight)
    }
}

/// One search of the vector store.
#[derive(Debug, Clone)]
pub struct VectorQuery {
    /// The question's embedding; always given, since the similarity of
    /// each hit to it is what abstention is decided on.
    pub dense: Vec<f32>,
    /// The question's text, for the sparse side.
    pub text: String,
    pub mode: SearchMode,
    pub fusion: Fusion,
    pub filter: SearchFilter,
    pub limit: usize,
    /// Exact (brute-force) search instead of the approximate index: for
    /// measuring the index's recall.
    pub exact: bool,
    /// Breadth of the approximate search (HNSW `ef`): higher finds more of
    /// the true neighbours, slower; `None` leaves the engine's default.
    pub hnsw_ef: Option<usize>,
}

/// A vector-store hit before it is joined with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredChunk {
    pub chunk_id: String,
    /// The ranking score of the mode: cosine, BM25 or fused.
    pub score: f32,
    /// Cosine similarity of the chunk's embedding to the question's, in
    /// every mode.
    pub similarity: f32,
    /// The chunk's dense vector (for near-duplicate removal and diversity).
    pub vector: Vec<f32>,
}

/// A retrieved passage, joined with the metadata of its document.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub rank: usize,
    /// The ranking score of the search mode (cosine, BM25 or fused).
    pub score: f32,
    /// Cosine similarity to the question, comparable across modes: what
    /// abstention thresholds apply to.
    pub similarity: f32,
    pub doc_id: String,
    pub chunk_id: String,
    pub source: String,
    pub title: String,
    pub page: Option<u32>,
    pub heading: String,
    pub text: String,
    /// The document's web address, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A numbered source of an answer. `n` is the number the answer cites as `[n]`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    pub n: usize,
    pub doc_id: String,
    pub chunk_id: String,
    pub source: String,
    pub title: String,
    pub page: Option<u32>,
    /// The document's web address, when it has one: where a reader checks
    /// the passage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub quote: String,
    /// Every sentence citing it was checked against the passage: enough of
    /// its words, and each of its numbers (with units), names and negations.
    /// Answers only show such citations, so this is true unless a caller
    /// builds its own.
    pub verified: bool,
}

/// Costs of one answer: what an operator needs to know what it cost.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub retrieval_ms: u64,
    pub generation_ms: u64,
    /// Passages given to the model.
    #[serde(default)]
    pub passages_used: usize,
    /// Relevant passages left out because the prompt would not fit the
    /// model's context window with the answer's tokens reserved.
    #[serde(default)]
    pub passages_left_out: usize,
    /// Relevant passages kept from the model because they give it orders
    /// (a prompt injection hidden in a document); they stay searchable.
    #[serde(default)]
    pub passages_withheld: usize,
    /// Sentences of the model's text left out of the answer because no
    /// passage it was given supports them.
    #[serde(default)]
    pub sentences_dropped: usize,
    /// The answer quotes the best passage: the model's own text held no
    /// checked sentence (`generator.extract_min_similarity`).
    #[serde(default)]
    pub extracted: bool,
}

/// A grounded answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub answer: String,
    /// True when the documents do not cover the question.
    pub abstained: bool,
    pub citations: Vec<Citation>,
    /// How many of `citations` are verified.
    pub verified_citations: usize,
    /// Citations the model made to passages it was not given, removed.
    pub removed_citations: usize,
    pub usage: Usage,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Sampling settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub repeat_penalty: f32,
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token, to `max_tokens`:
    /// for benchmarks, where the answer does not matter.
    #[serde(default)]
    pub ignore_eos: bool,
}

impl GenerationRequest {
    pub fn greedy(messages: Vec<ChatMessage>, max_tokens: usize) -> Self {
        Self {
            messages,
            max_tokens,
            temperature: 0.0,
            top_p: None,
            seed: 42,
            repeat_penalty: 1.1,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

/// Counts that tell whether the metadata and the vectors agree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyReport {
    pub documents: usize,
    pub chunks: usize,
    pub vectors: usize,
    /// Vectors with no chunk row.
    pub orphan_vectors: usize,
    /// Chunk rows with no vector.
    pub missing_vectors: usize,
    /// Chunk ids stored more than once.
    pub duplicate_chunks: usize,
    /// SHA-256 of the sorted chunk ids (each id hashes its document, text
    /// and position): two stores with the same fingerprint hold the same
    /// passages.
    #[serde(default)]
    pub fingerprint: String,
}

impl ConsistencyReport {
    pub fn is_consistent(&self) -> bool {
        self.orphan_vectors == 0 && self.missing_vectors == 0 && self.duplicate_chunks == 0
    }
}

/// What an API key may do. Each role can do what the ones before it can.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Ask, retrieve, read documents and jobs.
    Reader,
    /// Also upload and delete documents.
    Uploader,
    /// Also sees every document, whatever its groups.
    Admin,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Reader => "reader",
            KeyRole::Uploader => "uploader",
            KeyRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reader" => Some(KeyRole::Reader),
            "uploader" => Some(KeyRole::Uploader),
            "admin" => Some(KeyRole::Admin),
            _ => None,
        }
    }
}

/// The embedder a data directory's vectors were made with. Vectors of
/// another model (or dimension) mean nothing to its questions' vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderRecord {
    /// `Embedder::model_id`.
    pub model: String,
    pub dimension: usize,
}

/// A place documents are synced from (`rag sources add`), as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Unique; names the source in `rag sync NAME` and in its documents'
    /// `origin`.
    pub name: String,
    /// The connector: `git` or `web`.
    pub kind: String,
    /// The connector's settings, as JSON (what `rag sources add` was given).
    pub config: String,
    pub collection: String,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    /// Where the last completed sync got to, as JSON (a commit, the pages'
    /// validators); empty before the first.
    pub state: String,
    pub created_at: String,
    pub synced_at: Option<String>,
}

/// An answer the service gave, kept so that its reader can rate it
/// (`POST /v1/feedback`) and evaluation sets can learn from real use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub id: String,
    /// The API key that asked; `None` in open mode. Only the same key may
    /// rate the answer.
    pub key_id: Option<String>,
    pub question: String,
    pub answer: String,
    /// The answer's citations, as JSON.
    pub citations: String,
    pub abstained: bool,
    pub created_at: String,
    /// `up` or `down`, once rated.
    pub rating: Option<String>,
    pub comment: Option<String>,
    pub rated_at: Option<String>,
}

/// An API key as stored: its hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing)]
    pub key_hash: String,
    pub role: KeyRole,
    /// Documents of these access groups are visible to the key.
    pub groups: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A setting that must not be printed (an API key): `Debug` shows whether
/// it is set, never its value, so settings can be logged.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The value, or `None` when unset (empty).
    pub fn get(&self) -> Option<&str> {
        (!self.0.is_empty()).then_some(self.0.as_str())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "(unset)"
        } else {
            "(set)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fusion settings that cannot be what was meant are refused by name.
    #[test]
    fn fusion_settings_are_checked() {
        assert!(Fusion::default().check().is_ok());
        for bad in [
            Fusion {
                alpha: 80.0,
                ..Fusion::default()
            },
            Fusion {
                alpha: f32::NAN,
                ..Fusion::default()
            },
            Fusion {
                rrf_k: 0,
                ..Fusion::default()
            },
            Fusion {
                sparse_weight: -1.0,
                ..Fusion::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let err = serde_json::from_str::<Fusion>(r#"{"aplha": 0.5}"#).unwrap_err();
        assert!(err.to_string().contains("aplha"), "{err}");
        let rrf: Fusion = serde_json::from_str(r#"{"method": "rrf", "rrf_k": 20}"#).unwrap();
        assert!(rrf.method == FusionMethod::Rrf && rrf.rrf_tuned());
        assert!(!Fusion::default().rrf_tuned());
    }
}
