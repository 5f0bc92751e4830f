//! `rebuild_vectors`: every committed chunk gets a vector of the new
//! embedder with its document's labels; a resumed run keeps what an
//! interrupted one made and embeds only the rest; points of chunks no
//! longer committed go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rag_core::testing::FakeEmbedder;
use rag_core::{
    DocumentStore, Embedder, SearchFilter, SearchMode, VectorPoint, VectorQuery, VectorStore,
};
use rag_ingest::testing::word_tokenizer;
use rag_ingest::{ChunkOptions, Chunker, IngestOptions, Ingestor, Input, Limits, rebuild_vectors};
use rag_store::{EdgeVectorStore, SqlDocumentStore};

/// The fake embedder, counting the texts it embeds.
struct Counting(FakeEmbedder, AtomicUsize);

impl Embedder for Counting {
    fn model_id(&self) -> &str {
        "counting"
    }
    fn dimension(&self) -> usize {
        self.0.dimension
    }
    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        self.1.fetch_add(texts.len(), Ordering::SeqCst);
        self.0.embed(texts)
    }
}

#[tokio::test]
async fn a_resumed_rebuild_keeps_what_was_made_and_drops_what_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let docs: Arc<dyn DocumentStore> = Arc::new(SqlDocumentStore::connect(&url).await.unwrap());
    let old: Arc<dyn VectorStore> =
        Arc::new(EdgeVectorStore::open(&dir.path().join("old"), 16).unwrap());
    let ingestor = Ingestor {
        embedder: Arc::new(FakeEmbedder { dimension: 16 }),
        vectors: old,
        docs: docs.clone(),
        chunker: Arc::new(
            Chunker::new(
                word_tokenizer(),
                ChunkOptions {
                    max_tokens: 8,
                    overlap_tokens: 0,
                },
            )
            .unwrap(),
        ),
        limits: Limits::default(),
        context_header: true,
    };
    for (source, group) in [("a.md", "staff"), ("b.md", "hr")] {
        let input = Input::Text {
            source: source.into(),
            title: source.into(),
            body: format!(
                "{source} one two three four five six seven eight nine ten eleven twelve"
            ),
        };
        let options = IngestOptions {
            groups: vec![group.into()],
            ..Default::default()
        };
        ingestor
            .ingest_inputs(&[input], &options, &|_| {})
            .await
            .unwrap();
    }
    let chunks = docs.chunk_ids().await.unwrap();
    assert!(chunks.len() >= 4, "{chunks:?}");

    // An interrupted run left one chunk's point, and a chunk that is gone.
    let new = EdgeVectorStore::open(&dir.path().join("new"), 32).unwrap();
    let marked = vec![7.0f32; 32];
    let point = |id: &str| VectorPoint {
        chunk_id: id.into(),
        document_id: "x".into(),
        collection: "default".into(),
        tags: vec![],
        groups: vec!["everyone".into()],
        dense: marked.clone(),
        text: "stale".into(),
    };
    new.upsert(vec![
        point(&chunks[0]),
        point(&rag_core::chunk_id("gone", "gone", 0)),
    ])
    .await
    .unwrap();

    let embedder = Arc::new(Counting(
        FakeEmbedder { dimension: 32 },
        AtomicUsize::new(0),
    ));
    let report = rebuild_vectors(docs.as_ref(), embedder.clone(), &new, true, true, |_| {})
        .await
        .unwrap();
    assert_eq!(report.documents, 2);
    assert_eq!((report.kept, report.embedded), (1, chunks.len() - 1));
    assert_eq!(embedder.1.load(Ordering::SeqCst), chunks.len() - 1);
    assert_eq!(report.removed, 1);
    let mut have = new.chunk_ids().await.unwrap();
    let mut want = chunks.clone();
    have.sort();
    want.sort();
    assert_eq!(have, want);
    // The kept vector is the earlier run's; every point has its document's
    // labels now, not the interrupted run's.
    let kept = new.vectors(&[chunks[0].clone()]).await.unwrap();
    // (the store keeps it normalised, as cosine search does)
    let kept = kept[0].as_ref().unwrap();
    let unit = 1.0 / (32f32).sqrt();
    assert!(kept.iter().all(|x| (x - unit).abs() < 1e-6), "{kept:?}");
    let search = |groups: &str| VectorQuery {
        dense: vec![1.0; 32],
        text: "one two".into(),
        mode: SearchMode::Dense,
        fusion: Default::default(),
        limit: 20,
        filter: SearchFilter {
            groups: Some(vec![groups.into()]),
            ..Default::default()
        },
        exact: true,
        hnsw_ef: None,
    };
    assert!(new.search(&search("everyone")).await.unwrap().is_empty());
    let hr = new.search(&search("hr")).await.unwrap();
    assert!(!hr.is_empty());
    let hr_doc = docs
        .documents(None)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.source == "b.md")
        .unwrap();
    let hr_chunks = docs.chunk_ids_of(&hr_doc.id).await.unwrap();
    assert!(hr.iter().all(|h| hr_chunks.contains(&h.chunk_id)));
    assert_eq!(hr.len(), hr_chunks.len());

    // Not resuming: everything is embedded again.
    let report = rebuild_vectors(docs.as_ref(), embedder.clone(), &new, true, false, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.kept, report.embedded, report.removed),
        (0, chunks.len(), 0)
    );
}
