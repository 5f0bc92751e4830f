//! Defence in depth: the vector search filters on payloads, and the
//! retriever drops any hit whose committed document does not match the
//! caller's filter, so a vector with stale labels never reaches the wrong
//! caller. Over the real engines (qdrant-edge, SQLite).

use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rag_core::{
    ChunkRecord, DocumentRecord, DocumentStore, Embedder, SearchFilter, SearchMode, VectorPoint,
    VectorStore,
};
use rag_retriever::{RetrieveOptions, Retriever, admits};
use rag_store::{EdgeVectorStore, SqlDocumentStore};

/// Every text embeds to the same direction: the search finds every chunk
/// its filter allows.
struct Constant;

impl Embedder for Constant {
    fn model_id(&self) -> &str {
        "constant"
    }
    fn dimension(&self) -> usize {
        3
    }
    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|_| vec![1.0, 0.0, 0.0]).collect())
    }
}

fn doc(source: &str, collection: &str, tags: &[&str], groups: &[&str]) -> DocumentRecord {
    DocumentRecord {
        id: rag_core::document_id(collection, source),
        collection: collection.into(),
        source: source.into(),
        title: source.into(),
        content_hash: "h".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        chunk_count: 1,
        ingested_at: "2026-12-01T00:00:00Z".into(),
        url: None,
        origin: None,
    }
}

/// Commits `committed` with one chunk, whose vector carries `payload`'s
/// collection, tags and groups instead (a stale payload).
async fn put(
    docs: &dyn DocumentStore,
    vectors: &dyn VectorStore,
    committed: &DocumentRecord,
    payload: &DocumentRecord,
    dense: [f32; 3],
) {
    let text = format!("the travel policy of {}", committed.source);
    let chunk = ChunkRecord {
        id: rag_core::chunk_id(&committed.id, &text, 0),
        document_id: committed.id.clone(),
        ordinal: 0,
        text: text.clone(),
        heading: String::new(),
        page: None,
        token_count: 5,
    };
    docs.replace_document(committed, std::slice::from_ref(&chunk))
        .await
        .unwrap();
    vectors
        .upsert(vec![VectorPoint {
            chunk_id: chunk.id,
            document_id: committed.id.clone(),
            collection: payload.collection.clone(),
            tags: payload.tags.clone(),
            groups: payload.groups.clone(),
            dense: {
                let norm = dense.iter().map(|x| x * x).sum::<f32>().sqrt();
                dense.iter().map(|x| x / norm).collect()
            },
            text,
        }])
        .await
        .unwrap();
}

fn mismatches(snapshotter: &Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == "rag_retrieval_label_mismatches_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("not a counter: {other:?}"),
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn hits_whose_committed_row_does_not_match_the_filter_are_dropped_and_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let docs: Arc<dyn DocumentStore> = Arc::new(SqlDocumentStore::connect(&url).await.unwrap());
    let vectors: Arc<dyn VectorStore> =
        Arc::new(EdgeVectorStore::open(&dir.path().join("vectors"), 3).unwrap());
    // Moved from alpha to beta in SQL, the vector still says alpha.
    let moved = doc("moved.md", "default", &["travel"], &["beta"]);
    put(
        &*docs,
        &*vectors,
        &moved,
        &doc("moved.md", "default", &["travel"], &["alpha"]),
        [1.0, 0.2, 0.0],
    )
    .await;
    // Retagged: SQL says hr, the vector still says travel.
    let retagged = doc("retagged.md", "default", &["hr"], &["alpha"]);
    put(
        &*docs,
        &*vectors,
        &retagged,
        &doc("retagged.md", "default", &["travel"], &["alpha"]),
        [1.0, 0.0, 0.2],
    )
    .await;
    // In order: a document whose labels agree.
    let fine = doc("fine.md", "default", &["travel"], &["alpha"]);
    put(&*docs, &*vectors, &fine, &fine, [1.0, 0.0, 0.0]).await;

    let retriever = Retriever {
        embedder: Arc::new(Constant),
        vectors,
        docs,
        reranker: None,
    };
    let retrieve = |filter: SearchFilter, mode: SearchMode| {
        let retriever = &retriever;
        async move {
            let options = RetrieveOptions {
                k: 10,
                mode,
                filter,
                dedup_similarity: 1.0,
                ..Default::default()
            };
            let mut sources: Vec<String> = retriever
                .retrieve_with("travel policy", &options)
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.source)
                .collect();
            sources.sort();
            sources
        }
    };
    let alpha = |tags: &[&str]| SearchFilter {
        collection: Some("default".into()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        groups: Some(vec!["alpha".into()]),
    };
    for mode in SearchMode::ALL {
        let before = mismatches(&snapshotter);
        // alpha's payload filter matches the moved document's vector; its
        // committed row says beta: dropped.
        assert_eq!(
            retrieve(alpha(&[]), mode).await,
            ["fine.md", "retagged.md"],
            "{mode}"
        );
        // The retagged one's vector says travel, its row hr: dropped.
        assert_eq!(
            retrieve(alpha(&["travel"]), mode).await,
            ["fine.md"],
            "{mode}"
        );
        assert_eq!(
            mismatches(&snapshotter) - before,
            3,
            "{mode}: each dropped hit is counted"
        );
        // beta's filter does not match the stale vector: nothing (closed,
        // not open, while labels disagree).
        let beta = SearchFilter {
            groups: Some(vec!["beta".into()]),
            ..Default::default()
        };
        assert!(retrieve(beta, mode).await.is_empty(), "{mode}");
        // Unrestricted: all three, nothing dropped.
        let before = mismatches(&snapshotter);
        assert_eq!(
            retrieve(SearchFilter::default(), mode).await,
            ["fine.md", "moved.md", "retagged.md"],
            "{mode}"
        );
        assert_eq!(mismatches(&snapshotter), before, "{mode}");
    }
}

#[test]
fn the_row_check_is_the_payload_filter() {
    let d = doc("a.md", "wiki", &["hr", "policy"], &["alpha", "beta"]);
    assert!(admits(&SearchFilter::default(), &d));
    let f = |collection: Option<&str>, tags: &[&str], groups: Option<&[&str]>| SearchFilter {
        collection: collection.map(String::from),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        groups: groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
    };
    assert!(admits(
        &f(Some("wiki"), &["policy"], Some(&["beta", "gamma"])),
        &d
    ));
    assert!(!admits(&f(Some("other"), &[], None), &d));
    assert!(!admits(&f(None, &["travel"], None), &d));
    assert!(!admits(&f(None, &[], Some(&["gamma"])), &d));
    assert!(!admits(&f(None, &[], Some(&[])), &d));
    // A document without groups is nobody's but an unrestricted caller's.
    let open = doc("b.md", "wiki", &[], &[]);
    assert!(admits(&f(None, &[], None), &open));
    assert!(!admits(&f(None, &[], Some(&["alpha"])), &open));
}
