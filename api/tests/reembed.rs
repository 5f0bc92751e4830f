//! Changing the embedder of a data directory: opening it with another one
//! is refused with a message that says what to do, and `rag reembed`
//! rebuilds the vectors from the stored chunks, labels and all. Real
//! models: needs `rag models fetch` and `rag models fetch
//! nomic-embed-text-v1.5` (scripts/test.sh runs both).

use std::path::PathBuf;

use rag_api::app::{App, Query};
use rag_api::config::Settings;
use rag_core::{SearchFilter, SearchMode};
use rag_ingest::{IngestOptions, Input};

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

    let mut reports = 0;
    let done = rag_api::ops::reembed::reembed(&settings(dir.path(), NOMIC), |_| reports += 1)
        .await
        .unwrap();
    assert!(reports > 0, "no progress was reported");
    assert_eq!((done.from.dimension, done.to.dimension), (384, 768));
    let report = done.report.unwrap();
    assert_eq!((report.documents, report.embedded, report.kept), (3, 3, 0));
    assert!(!dir.path().join("vectors").exists(), "the old vectors stay");

    let app = App::open(settings(dir.path(), NOMIC)).await.unwrap();
    assert_eq!(app.embedder.dimension(), 768);
    assert_eq!(top(&app, question, None).await[0], "pets.md");
    assert_eq!(
        top(&app, "How much is a parking permit?", None).await[0],
        "parking.md"
    );
    // The labels came along: a staff member still cannot find HR's page.
    let seen = top(&app, "When are pay bands reviewed?", Some(&["staff"])).await;
    assert!(!seen.contains(&"salaries.md".to_string()), "{seen:?}");
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
}
