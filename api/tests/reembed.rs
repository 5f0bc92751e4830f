//! Changing the embedder of a data directory: opening it with another one
//! is refused with a message that says what to do, and `rag reembed`
//! rebuilds the vectors from the stored chunks, labels and all. Real
//! models: needs `rag models fetch` and `rag models fetch
//! nomic-embed-text-v1.5` (scripts/test.sh runs both).

use std::path::PathBuf;

use rag_api::app::{App, Query};
use rag_api::config::Settings;
use rag_api::ops::reembed::Marker;
use rag_core::{SearchFilter, SearchMode, VectorPoint, VectorQuery, VectorStore};
use rag_ingest::{IngestOptions, Input};
use rag_store::EdgeVectorStore;

fn models_dir() -> PathBuf {
    std::env::var_os("RAG_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn settings(data_dir: &std::path::Path, model: &str) -> Settings {
    let mut settings = Settings {
        data_dir: data_dir.to_path_buf(),
        models_dir: models_dir(),
        ..Settings::default()
    };
    settings.embedder.model = model.into();
    settings
}

const MINILM: &str = "all-minilm-l6-v2";
const NOMIC: &str = "nomic-embed-text-v1.5";

/// The sources of the dense top 3 for `question`, as `groups` may see them.
async fn top(app: &App, question: &str, groups: Option<&[&str]>) -> Vec<String> {
    let query = Query {
        k: Some(3),
        mode: Some(SearchMode::Dense),
        filter: SearchFilter {
            groups: groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    app.retrieve(question, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.source)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_embedder_is_refused_until_reembed_rebuilds_the_vectors() {
    assert!(
        models_dir()
            .join("nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf")
            .exists(),
        "run `rag models fetch nomic-embed-text-v1.5` first"
    );
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(settings(dir.path(), MINILM)).await.unwrap();
    let pages = [
        (
            "pets.md",
            "Dogs and cats may come to the office on Fridays if they are vaccinated.",
            "staff",
        ),
        (
            "parking.md",
            "The garage under the building has forty spaces; a permit costs ten dollars a month.",
            "staff",
        ),
        (
            "salaries.md",
            "Pay bands for each grade are reviewed every April by the board.",
            "hr",
        ),
    ];
    for (source, body, group) in pages {
        let input = Input::Text {
            source: source.into(),
            title: source.trim_end_matches(".md").into(),
            body: body.into(),
        };
        let options = IngestOptions {
            groups: vec![group.into()],
            ..Default::default()
        };
        let report = app
            .ingestor()
            .unwrap()
            .ingest_inputs(&[input], &options, &|_| {})
            .await
            .unwrap();
        assert_eq!(report.added, 1);
    }
    let question = "Can I bring my puppy to work?";
    assert_eq!(top(&app, question, None).await[0], "pets.md");
    drop(app);

    // The vectors are MiniLM's: nomic's questions cannot search them.
    let refused = App::open(settings(dir.path(), NOMIC)).await.err().unwrap();
    let message = format!("{refused:#}");
    for needed in [
        "all-MiniLM-L6-v2",
        "384",
        "nomic-embed-text-v1.5",
        "768",
        "rag reembed",
    ] {
        assert!(message.contains(needed), "{needed:?} not in {message:?}");
    }

    // A run killed part way left one chunk's point (with labels out of
    // date), and its marker.
    let nomic = rag_core::EmbedderRecord {
        model: "nomic-embed-text-v1.5".into(),
        dimension: 768,
    };
    let minilm = rag_core::EmbedderRecord {
        model: "all-MiniLM-L6-v2".into(),
        dimension: 384,
    };
    let pets_chunk = {
        let app = App::open(settings(dir.path(), MINILM)).await.unwrap();
        let doc = app
            .docs
            .documents(None)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.source == "pets.md")
            .unwrap();
        app.docs.chunk_ids_of(&doc.id).await.unwrap().remove(0)
    };
    Marker {
        from: minilm.clone(),
        to: nomic.clone(),
        context_header: true,
    }
    .write(dir.path())
    .unwrap();
    let (embedder, _) = rag_api::app::load_embedder(&settings(dir.path(), NOMIC))
        .await
        .unwrap();
    let nomic_vector = embedder
        .embed(&[&rag_ingest::embedding_text("pets", "", pages[0].1)])
        .unwrap()
        .remove(0);
    drop(embedder);
    {
        let partial =
            EdgeVectorStore::open(&dir.path().join("vectors-nomic-embed-text-v1.5"), 768).unwrap();
        partial
            .upsert(vec![VectorPoint {
                chunk_id: pets_chunk.clone(),
                document_id: "x".into(),
                collection: "default".into(),
                tags: vec![],
                groups: vec!["everyone".into()],
                // What the killed run made: the page's vector under nomic.
                dense: nomic_vector.clone(),
                text: "stale".into(),
            }])
            .await
            .unwrap();
    }
    // Killed before the switch: the old vectors are still the ones in use.
    assert!(App::open(settings(dir.path(), MINILM)).await.is_ok());

    let done = rag_api::ops::reembed::reembed(&settings(dir.path(), NOMIC), |_| {})
        .await
        .unwrap();
    assert_eq!((&done.from, &done.to), (&minilm, &nomic));
    let report = done.report.unwrap();
    assert_eq!((report.documents, report.embedded, report.kept), (3, 2, 1));
    assert!(!dir.path().join("vectors").exists(), "the old vectors stay");
    assert!(!Marker::path(dir.path()).exists(), "the marker stays");

    let app = App::open(settings(dir.path(), NOMIC)).await.unwrap();
    assert_eq!(app.embedder.dimension(), 768);
    assert_eq!(top(&app, question, None).await[0], "pets.md");
    assert_eq!(
        top(&app, "How much is a parking permit?", None).await[0],
        "parking.md"
    );
    // The labels came along, on the points themselves (the retriever's own
    // check of the rows would hide a wrong label): none is "everyone"'s, and
    // "hr" finds HR's page alone.
    let search = |group: &str| VectorQuery {
        dense: vec![1.0; 768],
        text: "pay bands".into(),
        mode: SearchMode::Dense,
        fusion: Default::default(),
        filter: SearchFilter {
            groups: Some(vec![group.into()]),
            ..Default::default()
        },
        limit: 10,
        exact: true,
        hnsw_ef: None,
    };
    assert!(
        app.vectors
            .search(&search("everyone"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.vectors.search(&search("staff")).await.unwrap().len(), 2);
    assert_eq!(app.vectors.search(&search("hr")).await.unwrap().len(), 1);
    assert_eq!(
        top(&app, "When are pay bands reviewed?", Some(&["hr"])).await,
        ["salaries.md"]
    );
    drop(app);

    // Now MiniLM is the one refused, and a second run has nothing to do.
    let refused = App::open(settings(dir.path(), MINILM)).await.err().unwrap();
    assert!(
        format!("{refused:#}").contains("rag reembed"),
        "{refused:#}"
    );
    let again = rag_api::ops::reembed::reembed(&settings(dir.path(), NOMIC), |_| {})
        .await
        .unwrap();
    assert!(again.report.is_none());

    // Back to MiniLM, over a folder of its vectors left from long ago (no
    // marker: nothing in it is kept).
    {
        let stale = EdgeVectorStore::open(&dir.path().join("vectors"), 384).unwrap();
        let point = VectorPoint {
            chunk_id: pets_chunk,
            document_id: "x".into(),
            collection: "default".into(),
            tags: vec![],
            groups: vec!["everyone".into()],
            dense: vec![1.0; 384],
            text: "stale".into(),
        };
        stale.upsert(vec![point]).await.unwrap();
    }
    let back = rag_api::ops::reembed::reembed(&settings(dir.path(), MINILM), |_| {})
        .await
        .unwrap();
    let report = back.report.unwrap();
    assert_eq!((report.embedded, report.kept), (3, 0));
    assert!(!dir.path().join("vectors-nomic-embed-text-v1.5").exists());
    let app = App::open(settings(dir.path(), MINILM)).await.unwrap();
    assert_eq!(top(&app, question, None).await[0], "pets.md");
    let search = VectorQuery {
        dense: vec![1.0; 384],
        text: "dogs".into(),
        mode: SearchMode::Dense,
        fusion: Default::default(),
        filter: SearchFilter {
            groups: Some(vec!["everyone".into()]),
            ..Default::default()
        },
        limit: 10,
        exact: true,
        hnsw_ef: None,
    };
    assert!(app.vectors.search(&search).await.unwrap().is_empty());
    drop(app);

    // Killed after its switch: the next run removes what it left.
    Marker {
        from: nomic,
        to: minilm,
        context_header: true,
    }
    .write(dir.path())
    .unwrap();
    std::fs::create_dir_all(dir.path().join("vectors-nomic-embed-text-v1.5")).unwrap();
    let tidy = rag_api::ops::reembed::reembed(&settings(dir.path(), MINILM), |_| {})
        .await
        .unwrap();
    assert!(tidy.report.is_none());
    assert!(!dir.path().join("vectors-nomic-embed-text-v1.5").exists());
    assert!(!Marker::path(dir.path()).exists());
    assert!(App::open(settings(dir.path(), MINILM)).await.is_ok());
}
