//! The best hit takes in the chunks that follow it in its document, up to
//! a number, never one shown as a hit of its own, never another
//! document's. Over the real engines (qdrant-edge, SQLite).

use std::sync::Arc;

use rag_core::{ChunkRecord, DocumentRecord, DocumentStore, Embedder, VectorPoint, VectorStore};
use rag_retriever::{RetrieveOptions, Retriever};
use rag_store::{EdgeVectorStore, SqlDocumentStore};

/// Texts about parental leave point one way, the rest another; "weeks"
/// leans towards the first.
struct Topics;

impl Embedder for Topics {
    fn model_id(&self) -> &str {
        "topics"
    }
    fn dimension(&self) -> usize {
        2
    }
    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                if t.contains("parental") {
                    vec![1.0, 0.0]
                } else if t.contains("weeks") {
                    vec![0.8, 0.6]
                } else {
                    vec![0.0, 1.0]
                }
            })
            .collect())
    }
}

async fn put(docs: &dyn DocumentStore, vectors: &dyn VectorStore, source: &str, texts: &[&str]) {
    let doc = DocumentRecord {
        id: rag_core::document_id("default", source),
        collection: "default".into(),
        source: source.into(),
        title: source.into(),
        content_hash: "h".into(),
        tags: vec![],
        groups: vec![],
        chunk_count: texts.len(),
        ingested_at: "2026-12-07T00:00:00Z".into(),
        url: None,
        origin: None,
    };
    let chunks: Vec<ChunkRecord> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| ChunkRecord {
            id: rag_core::chunk_id(&doc.id, text, i),
            document_id: doc.id.clone(),
            ordinal: i,
            text: text.to_string(),
            heading: String::new(),
            page: None,
            token_count: 5,
        })
        .collect();
    docs.replace_document(&doc, &chunks).await.unwrap();
    let dense = Topics.embed(texts).unwrap().into_iter().map(|v| {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    });
    vectors
        .upsert(
            chunks
                .iter()
                .zip(dense)
                .map(|(c, dense)| VectorPoint {
                    chunk_id: c.id.clone(),
                    document_id: doc.id.clone(),
                    collection: doc.collection.clone(),
                    tags: vec![],
                    groups: vec![],
                    dense,
                    text: c.text.clone(),
                })
                .collect(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_best_hit_takes_in_what_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let docs: Arc<dyn DocumentStore> = Arc::new(SqlDocumentStore::connect(&url).await.unwrap());
    let vectors: Arc<dyn VectorStore> =
        Arc::new(EdgeVectorStore::open(&dir.path().join("vectors"), 2).unwrap());
    put(
        &*docs,
        &*vectors,
        "ppl.md",
        &[
            "Paid parental leave is for new parents.",
            "You get 12 weeks of it.",
            "Apply in HR Links.",
            "Parking is on level 2.",
        ],
    )
    .await;
    put(&*docs, &*vectors, "other.md", &["Lunch is at noon."]).await;
    let retriever = Retriever {
        embedder: Arc::new(Topics),
        vectors,
        docs,
        reranker: None,
    };
    let texts = |k: usize, continue_best: usize| {
        let retriever = &retriever;
        async move {
            let options = RetrieveOptions {
                k,
                continue_best,
                mode: rag_core::SearchMode::Dense,
                dedup_similarity: 1.0,
                ..Default::default()
            };
            retriever
                .retrieve_with("parental leave", &options)
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.text)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        texts(1, 0).await,
        ["Paid parental leave is for new parents."]
    );
    assert_eq!(
        texts(1, 2).await,
        [
            "Paid parental leave is for new parents.\n\nYou get 12 weeks of it.\n\nApply in HR Links."
        ]
    );
    // To the document's end, and no further.
    assert_eq!(texts(1, 9).await[0].matches("\n\n").count(), 3);
    // The next chunk is a hit of its own: shown once, where it ranks.
    assert_eq!(
        texts(2, 2).await,
        [
            "Paid parental leave is for new parents.",
            "You get 12 weeks of it."
        ]
    );
}
