//! The behaviour every `VectorStore` must have, run against the embedded
//! engine always and against a Qdrant server when `RAG_QDRANT_URL` is set
//! (its gRPC address, e.g. `http://localhost:6334`; each run makes
//! collections of its own, named `rag-test-...`).

use rag_core::{SearchFilter, SearchMode, VectorPoint, VectorQuery, VectorStore};
use rag_store::{EdgeVectorStore, QdrantServerStore, ServerSettings, ShardedEdgeStore};

fn point(chunk: &str, doc: &str, groups: &[&str], dense: Vec<f32>, text: &str) -> VectorPoint {
    let norm = dense.iter().map(|x| x * x).sum::<f32>().sqrt();
    VectorPoint {
        chunk_id: chunk.into(),
        document_id: doc.into(),
        collection: "default".into(),
        tags: vec![],
        groups: groups.iter().map(|g| g.to_string()).collect(),
        dense: dense.iter().map(|x| x / norm).collect(),
        text: text.into(),
    }
}

fn id(n: u8) -> String {
    format!("{n:032x}")
}

fn query(dense: &[f32], text: &str, mode: SearchMode, groups: Option<&[&str]>) -> VectorQuery {
    VectorQuery {
        dense: dense.to_vec(),
        text: text.into(),
        mode,
        fusion: Default::default(),
        filter: SearchFilter {
            groups: groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
        limit: 10,
        exact: false,
        hnsw_ef: None,
    }
}

async fn ids(store: &dyn VectorStore, q: &VectorQuery) -> Vec<String> {
    store
        .search(q)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.chunk_id)
        .collect()
}

fn corpus() -> Vec<VectorPoint> {
    vec![
        point(
            &id(1),
            "d1",
            &["hr"],
            vec![1.0, 0.0, 0.0],
            "Salary bands for every engineering level",
        ),
        point(
            &id(2),
            "d1",
            &["eng"],
            vec![0.0, 1.0, 0.0],
            "Deploying the robot firmware to the fleet",
        ),
        point(
            &id(3),
            "d2",
            &["hr", "eng"],
            vec![0.7, 0.7, 0.0],
            "Onboarding: laptops, badges and salaries",
        ),
        point(
            &id(4),
            "d3",
            &[],
            vec![0.0, 0.0, 1.0],
            "The cafeteria menu changes weekly",
        ),
    ]
}

async fn dense_sparse_and_hybrid_rank_what_they_should(store: &dyn VectorStore) {
    store.upsert(corpus()).await.unwrap();

    // Dense: nearest by angle; similarity is the cosine.
    let hits = store
        .search(&query(&[1.0, 0.1, 0.0], "", SearchMode::Dense, None))
        .await
        .unwrap();
    assert_eq!(hits[0].chunk_id, id(1));
    assert!((hits[0].similarity - hits[0].score).abs() < 1e-5);
    assert_eq!(hits[0].vector.len(), 3);

    // Sparse: words, stemmed ("salaries" finds "salary"), stop words
    // ignored; a chunk without the words is not a hit.
    let q = query(&[0.0, 0.0, 1.0], "the salaries", SearchMode::Sparse, None);
    let mut sparse = ids(store, &q).await;
    sparse.sort();
    assert_eq!(sparse, [id(1), id(3)]);
    // Stop words alone give no sparse hits at all.
    let q = query(&[0.0, 0.0, 1.0], "the and of", SearchMode::Sparse, None);
    assert!(ids(store, &q).await.is_empty());

    // Hybrid: a chunk both sides rank high wins over one only one side
    // finds; similarity is still the cosine.
    let q = query(
        &[0.6, 0.8, 0.0],
        "onboarding salaries firmware",
        SearchMode::Hybrid,
        None,
    );
    let hits = store.search(&q).await.unwrap();
    let order: Vec<&str> = hits.iter().map(|h| h.chunk_id.as_str()).collect();
    assert_eq!(order[0], id(3), "{order:?}");
    assert!(order.contains(&id(1).as_str()) && order.contains(&id(2).as_str()));
    let cos3 = (0.6 * 0.7 + 0.8 * 0.7) / (0.7f32 * 0.7 * 2.0).sqrt();
    assert!((hits[0].similarity - cos3).abs() < 1e-4);
}

async fn group_filters_hold_in_every_mode(store: &dyn VectorStore) {
    store.upsert(corpus()).await.unwrap();
    // A question aimed squarely at the HR-only chunk, both ways.
    let (dense, text) = ([1.0, 0.0, 0.0], "salary bands engineering level");
    for mode in SearchMode::ALL {
        let open = ids(store, &query(&dense, text, mode, None)).await;
        assert!(open.contains(&id(1)), "{mode}: unrestricted must see it");

        let eng = ids(store, &query(&dense, text, mode, Some(&["eng"]))).await;
        assert!(
            !eng.contains(&id(1)),
            "{mode}: an hr chunk leaked to eng: {eng:?}"
        );
        assert!(
            !eng.contains(&id(4)),
            "{mode}: a group-less chunk is nobody's"
        );
        assert!(!eng.is_empty() || mode == SearchMode::Sparse, "{mode}");

        let nobody = ids(store, &query(&dense, text, mode, Some(&[]))).await;
        assert!(
            nobody.is_empty(),
            "{mode}: a caller without groups got {nobody:?}"
        );
    }
    // Sparse with a word only the eng chunk has still finds it for eng.
    let q = query(&dense, "firmware", SearchMode::Sparse, Some(&["eng"]));
    assert_eq!(ids(store, &q).await, [id(2)]);
}

async fn upserts_replace_and_deletes_remove(store: &dyn VectorStore) {
    store.upsert(corpus()).await.unwrap();
    // Upserting an id again replaces its vector and text.
    store
        .upsert(vec![point(
            &id(4),
            "d3",
            &[],
            vec![0.0, 1.0, 1.0],
            "The canteen serves soup",
        )])
        .await
        .unwrap();
    let vectors = store.vectors(&[id(4), id(9)]).await.unwrap();
    let v = vectors[0].as_ref().unwrap();
    assert!((v[1] - v[2]).abs() < 1e-6 && v[1] > 0.7, "{v:?}");
    assert!(vectors[1].is_none());
    let q = query(&[0.0, 0.0, 1.0], "cafeteria", SearchMode::Sparse, None);
    assert!(
        ids(store, &q).await.is_empty(),
        "the old text is still indexed"
    );
    let q = query(&[0.0, 0.0, 1.0], "canteen", SearchMode::Sparse, None);
    assert_eq!(ids(store, &q).await, [id(4)]);

    store.delete(&[id(2), id(9)]).await.unwrap();
    let mut all = store.chunk_ids().await.unwrap();
    all.sort();
    assert_eq!(all, [id(1), id(3), id(4)]);
    let q = query(&[0.0, 1.0, 0.0], "firmware", SearchMode::Hybrid, None);
    assert!(!ids(store, &q).await.contains(&id(2)));
    store.optimize().await.unwrap();
}

/// A document's new labels reach every one of its points, in every mode,
/// and no other document's.
async fn labels_follow_the_document(store: &dyn VectorStore) {
    store.upsert(corpus()).await.unwrap();
    let (dense, text) = ([0.6, 0.8, 0.0], "salary firmware onboarding");
    store
        .set_labels("d1", &["policy".into()], &["finance".into()])
        .await
        .unwrap();
    for mode in SearchMode::ALL {
        let hr = ids(store, &query(&dense, text, mode, Some(&["hr"]))).await;
        assert!(
            !hr.contains(&id(1)),
            "{mode}: hr still finds a chunk moved to finance: {hr:?}"
        );
        assert!(hr.contains(&id(3)), "{mode}: d2 must keep its groups");
        let eng = ids(store, &query(&dense, text, mode, Some(&["eng"]))).await;
        assert!(!eng.contains(&id(2)), "{mode}: {eng:?}");
        let finance = ids(store, &query(&dense, text, mode, Some(&["finance"]))).await;
        let mut finance = finance;
        finance.sort();
        assert_eq!(finance, [id(1), id(2)], "{mode}");
        // Tags too.
        let mut tagged = query(&dense, text, mode, None);
        tagged.filter.tags = vec!["policy".into()];
        let mut tagged = ids(store, &tagged).await;
        tagged.sort();
        assert_eq!(tagged, [id(1), id(2)], "{mode}");
    }
    // A document without points is not an error.
    store.set_labels("nothing", &[], &[]).await.unwrap();
}

/// One fresh store per part of the suite.
async fn suite<S: VectorStore, F: std::future::Future<Output = S>>(open: impl Fn() -> F) {
    dense_sparse_and_hybrid_rank_what_they_should(&open().await).await;
    group_filters_hold_in_every_mode(&open().await).await;
    upserts_replace_and_deletes_remove(&open().await).await;
    labels_follow_the_document(&open().await).await;
}

#[tokio::test]
async fn the_embedded_engine_passes_the_suite() {
    let root = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let dir = root.path().join(
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                .to_string(),
        );
        async move { EdgeVectorStore::open(&dir, 3).unwrap() }
    })
    .await;
}

/// The engine split into three shards, as a sharded cluster searches and
/// merges (for measuring ranking), behaves like any store.
#[tokio::test]
async fn the_simulated_sharded_engine_passes_the_suite() {
    let root = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let dir = root.path().join(
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                .to_string(),
        );
        async move { ShardedEdgeStore::open(&dir, 3, 3).unwrap() }
    })
    .await;
}

/// Hits as (chunk id, score to 5 decimals), best first, ties by id.
async fn scored(store: &dyn VectorStore, q: &VectorQuery) -> Vec<(String, i64)> {
    let mut hits: Vec<(String, i64)> = store
        .search(q)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.chunk_id, (h.score * 1e5).round() as i64))
        .collect();
    hits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    hits
}

/// One simulated shard merges and fuses exactly as the engine does, so
/// that what changes with more shards is the sharding alone.
#[tokio::test]
async fn one_simulated_shard_ranks_like_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EdgeVectorStore::open(&dir.path().join("engine"), 3).unwrap();
    let one = ShardedEdgeStore::open(&dir.path().join("one"), 3, 1).unwrap();
    engine.upsert(corpus()).await.unwrap();
    one.upsert(corpus()).await.unwrap();
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        for (dense, text) in [
            ([0.9, 0.3, 0.0], "salary bands for engineers"),
            ([0.0, 0.2, 0.9], "what is on the cafeteria menu"),
            ([0.5, 0.35, 0.6], "robot firmware onboarding"),
        ] {
            // The same hits with the same scores; the engine orders ties
            // as it likes, the simulation by chunk id.
            let q = query(&dense, text, mode, None);
            assert_eq!(
                scored(&engine, &q).await,
                scored(&one, &q).await,
                "{mode:?} {text}"
            );
        }
    }
}

/// Convex fusion with all the weight on one side ranks as that side does;
/// with both, a passage both sides like comes first. On the engine and on
/// simulated shards.
#[tokio::test]
async fn convex_fusion_weighs_the_sides() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EdgeVectorStore::open(&dir.path().join("engine"), 3).unwrap();
    let sharded = ShardedEdgeStore::open(&dir.path().join("sharded"), 3, 3).unwrap();
    let stores: [&dyn VectorStore; 2] = [&engine, &sharded];
    for store in stores {
        store.upsert(corpus()).await.unwrap();
        let convex = |alpha: f32| {
            let mut q = query(
                &[0.9, 0.1, 0.0],
                "onboarding salaries",
                SearchMode::Hybrid,
                None,
            );
            q.fusion = rag_core::Fusion {
                method: rag_core::FusionMethod::Convex,
                alpha,
                ..Default::default()
            };
            q
        };
        let dense = ids(store, &query(&[0.9, 0.1, 0.0], "", SearchMode::Dense, None)).await;
        assert_eq!(ids(store, &convex(1.0)).await, dense);
        let sparse = ids(
            store,
            &query(
                &[0.9, 0.1, 0.0],
                "onboarding salaries",
                SearchMode::Sparse,
                None,
            ),
        )
        .await;
        assert_eq!(ids(store, &convex(0.0)).await[..sparse.len()], sparse[..]);
        // Evenly: every candidate of either side, once.
        let mut even = ids(store, &convex(0.5)).await;
        even.sort();
        let mut both: Vec<String> = dense.iter().chain(&sparse).cloned().collect();
        both.sort();
        both.dedup();
        assert_eq!(even, both);
    }
}

#[tokio::test]
async fn a_qdrant_server_passes_the_suite() {
    let Ok(url) = std::env::var("RAG_QDRANT_URL") else {
        // A deployment checks its own server with RAG_REQUIRE_QDRANT=1:
        // then a missing address is a failure, not a skip.
        assert!(
            std::env::var_os("RAG_REQUIRE_QDRANT").is_none(),
            "RAG_REQUIRE_QDRANT is set but RAG_QDRANT_URL is not"
        );
        eprintln!("skipped: set RAG_QDRANT_URL to a Qdrant server's gRPC address");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let settings = ServerSettings {
            url: url.clone(),
            api_key: std::env::var("RAG_QDRANT_API_KEY").ok(),
            collection: format!(
                "rag-test-{run}-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            ..Default::default()
        };
        async move { QdrantServerStore::connect(settings, 3).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn the_embedded_engine_keeps_its_writes_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EdgeVectorStore::open(dir.path(), 3).unwrap();
        store.upsert(corpus()).await.unwrap();
        store.delete(&[id(2)]).await.unwrap();
    }
    // Reopen: what was written and flushed is still there, BM25 too.
    let store = EdgeVectorStore::open(dir.path(), 3).unwrap();
    let mut all = store.chunk_ids().await.unwrap();
    all.sort();
    assert_eq!(all, [id(1), id(3), id(4)]);
    let q = query(&[0.0, 0.0, 1.0], "cafeteria", SearchMode::Sparse, None);
    assert_eq!(ids(&store, &q).await, [id(4)]);
    assert!(
        EdgeVectorStore::open(dir.path(), 4).is_err(),
        "dimension mismatch must be refused"
    );
}

#[tokio::test]
async fn an_unreachable_qdrant_server_is_reported_as_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = ServerSettings {
        url: format!("http://127.0.0.1:{port}"),
        timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let Err(err) = QdrantServerStore::connect(settings, 3).await else {
        panic!("connected to nothing");
    };
    assert!(err.kind() == rag_core::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("cannot be reached"), "{err}");
}

/// A server that accepts connections and never answers (hung, or a
/// firewall that drops): the store gives up after its timeout, as
/// unavailable, instead of hanging the request.
#[tokio::test]
async fn a_silent_qdrant_server_times_out_as_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _held = std::thread::spawn(move || {
        let _open: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let settings = ServerSettings {
        url: format!("http://127.0.0.1:{port}"),
        timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let Err(err) = QdrantServerStore::connect(settings, 3).await else {
        panic!("a silent server answered");
    };
    assert!(err.kind() == rag_core::ErrorKind::Unavailable, "{err}");
}
