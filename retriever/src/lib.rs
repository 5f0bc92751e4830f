//! From a question to ranked passages.
//!
//! The question is embedded, the vector store finds the nearest chunks
//! under the caller's filters, and each hit is joined with its committed
//! chunk row and document. Hits without a committed row (vectors of an
//! ingest still in flight, or left by a crash) are dropped here, which is
//! what lets ingest switch a document's version atomically in SQL.

use std::collections::HashMap;
use std::sync::Arc;

use rag_core::{DocumentStore, Embedder, Error, Hit, Result, SearchFilter, VectorStore};

/// Extra candidates fetched per requested hit, to make up for dropped ones.
const OVERFETCH: usize = 2;

pub struct Retriever {
    pub embedder: Arc<dyn Embedder>,
    pub vectors: Arc<dyn VectorStore>,
    pub docs: Arc<dyn DocumentStore>,
}

impl Retriever {
    pub async fn retrieve(
        &self,
        question: &str,
        k: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>> {
        let question = question.trim();
        if question.is_empty() {
            return Err(Error::invalid("the question is empty"));
        }
        if k == 0 {
            return Ok(vec![]);
        }
        let embedder = self.embedder.clone();
        let q = question.to_string();
        let vector = tokio::task::spawn_blocking(move || embedder.embed(&[q.as_str()]))
            .await
            .map_err(|e| Error::internal(e.to_string()))??
            .pop()
            .ok_or_else(|| Error::internal("the embedder returned no vector"))?;
        let scored = self.vectors.search(&vector, filter, k * OVERFETCH).await?;
        let ids: Vec<String> = scored.iter().map(|s| s.chunk_id.clone()).collect();
        let chunks: HashMap<String, rag_core::ChunkRecord> = self
            .docs
            .chunks(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();

        let mut documents = HashMap::new();
        let mut hits = Vec::with_capacity(k);
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
            hits.push(Hit {
                rank: hits.len() + 1,
                score: s.score,
                doc_id: doc.id.clone(),
                chunk_id: chunk.id.clone(),
                source: doc.source.clone(),
                title: doc.title.clone(),
                page: chunk.page,
                heading: chunk.heading.clone(),
                text: chunk.text.clone(),
            });
            if hits.len() == k {
                break;
            }
        }
        Ok(hits)
    }
}
