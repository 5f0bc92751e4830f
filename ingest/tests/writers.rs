//! Several writers on one metadata database and one vector store, as in
//! the `cluster` overlay (API replicas and the re-sync job): two ingestors
//! write at once, some documents both, while a third process repairs in a
//! loop. Afterwards every committed chunk has its vector, and a last
//! repair leaves no orphan. On SQLite always, on Postgres when
//! `RAG_TEST_POSTGRES_URL` is set (required under `RAG_REQUIRE_POSTGRES`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rag_core::{DocumentStore, Embedder, ScoredChunk, VectorPoint, VectorQuery, VectorStore};
use rag_ingest::testing::word_tokenizer;
use rag_ingest::{ChunkOptions, Chunker, IngestOptions, Ingestor, Input, Limits, repair};
use rag_store::{EdgeVectorStore, SqlDocumentStore};

const DIM: usize = 16;

/// Words hashed into a few dimensions: a deterministic embedding, enough
/// for a storage test (the embedder is not what is tested here).
struct Hashed;

impl Embedder for Hashed {
    fn model_id(&self) -> &str {
        "hashed"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        std::thread::sleep(Duration::from_millis(3));
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = [0.01f32; DIM];
                for w in t.split_whitespace() {
                    let h = w
                        .bytes()
                        .fold(7u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
                    v[h as usize % DIM] += 1.0;
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

/// The real store, slower to return from an upsert: the window between a
/// writer's upsert and its commit, where a careless repair deletes what
/// the writer is about to commit, is wide open.
struct SlowUpserts(Arc<EdgeVectorStore>);

#[async_trait]
impl VectorStore for SlowUpserts {
    async fn upsert(&self, points: Vec<VectorPoint>) -> rag_core::Result<()> {
        self.0.upsert(points).await?;
        tokio::time::sleep(Duration::from_millis(15)).await;
        Ok(())
    }
    async fn delete(&self, chunk_ids: &[String]) -> rag_core::Result<()> {
        self.0.delete(chunk_ids).await
    }
    async fn search(&self, query: &VectorQuery) -> rag_core::Result<Vec<ScoredChunk>> {
        self.0.search(query).await
    }
    async fn vectors(&self, chunk_ids: &[String]) -> rag_core::Result<Vec<Option<Vec<f32>>>> {
        self.0.vectors(chunk_ids).await
    }
    async fn chunk_ids(&self) -> rag_core::Result<Vec<String>> {
        self.0.chunk_ids().await
    }
    async fn optimize(&self) -> rag_core::Result<()> {
        self.0.optimize().await
    }
    async fn set_labels(
        &self,
        document_id: &str,
        tags: &[String],
        groups: &[String],
    ) -> rag_core::Result<()> {
        self.0.set_labels(document_id, tags, groups).await
    }
}

/// A tokenizer of whole words (the chunker counts in it).
/// A page of six paragraphs; `version` changes half of them.
fn page(name: &str, version: &str) -> String {
    let mut text = format!("# {name}\n\n");
    for p in 0..6 {
        let edit = if p % 2 == 0 { version } else { "stable" };
        text.push_str(&format!(
            "Paragraph {p} of {name} in edition {edit}: the travel desk books trains for trips \
             under four hours and the finance team reviews every claim above the limit.\n\n"
        ));
    }
    text
}

fn inputs(names: &[String], version: &str) -> Vec<Input> {
    names
        .iter()
        .map(|n| Input::Text {
            source: format!("{n}.md"),
            title: n.clone(),
            body: page(n, version),
        })
        .collect()
}

async fn two_writers_and_a_repairer(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(EdgeVectorStore::open(&dir.path().join("vectors"), DIM).unwrap());
    let vectors: Arc<dyn VectorStore> = Arc::new(SlowUpserts(engine));
    let chunker = Arc::new(
        Chunker::new(
            word_tokenizer(),
            ChunkOptions {
                max_tokens: 40,
                overlap_tokens: 0,
            },
        )
        .unwrap(),
    );
    // Each process has its own connections to the database.
    let writer = async || -> Ingestor {
        Ingestor {
            embedder: Arc::new(Hashed),
            vectors: vectors.clone(),
            docs: Arc::new(SqlDocumentStore::connect(url).await.unwrap()),
            chunker: chunker.clone(),
            limits: Limits::default(),
            context_header: true,
        }
    };
    let (a, b) = (writer().await, writer().await);
    let repairer: Arc<dyn DocumentStore> = Arc::new(SqlDocumentStore::connect(url).await.unwrap());

    let names = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    };
    let (only_a, only_b, both) = (names("a", 24), names("b", 24), names("shared", 8));
    let options = IngestOptions::default();

    let done = AtomicBool::new(false);
    let repaired = AtomicUsize::new(0);
    let repairs = AtomicUsize::new(0);
    let repair_loop = async {
        while !done.load(Ordering::SeqCst) {
            let n = repair(repairer.as_ref(), vectors.as_ref()).await.unwrap();
            repaired.fetch_add(n, Ordering::SeqCst);
            repairs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let writes = async {
        for version in ["one", "two", "three"] {
            let mut for_a = inputs(&only_a, &format!("{version}-a"));
            for_a.extend(inputs(&both, &format!("{version}-a")));
            let mut for_b = inputs(&both, &format!("{version}-b"));
            for_b.extend(inputs(&only_b, &format!("{version}-b")));
            let (ra, rb) = tokio::join!(
                a.ingest_inputs(&for_a, &options, &|_| {}),
                b.ingest_inputs(&for_b, &options, &|_| {}),
            );
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(ra.failed + rb.failed, 0, "{ra:?} {rb:?}");
            // A deletes some of B's documents while B rewrites them.
            if version == "two" {
                let doomed: Vec<String> = only_b[..6].to_vec();
                let again = inputs(&doomed, "two-b-again");
                let (deleted, rb) = tokio::join!(
                    async {
                        for name in &doomed {
                            let id = rag_core::document_id("default", &format!("{name}.md"));
                            a.delete(&id).await.unwrap();
                        }
                    },
                    b.ingest_inputs(&again, &options, &|_| {}),
                );
                let () = deleted;
                assert_eq!(rb.unwrap().failed, 0);
            }
        }
        done.store(true, Ordering::SeqCst);
    };
    tokio::join!(repair_loop, writes);
    let repairs = repairs.load(Ordering::SeqCst);
    assert!(
        repairs > 20,
        "only {repairs} repairs ran beside the writers"
    );

    let committed: HashSet<String> = repairer.chunk_ids().await.unwrap().into_iter().collect();
    let stored: HashSet<String> = vectors.chunk_ids().await.unwrap().into_iter().collect();
    let missing: Vec<&String> = committed.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} committed chunks lost their vectors ({repairs} repairs beside the writers)",
        missing.len()
    );
    assert!(
        committed.len() >= (24 + 24 + 8 - 6) * 6,
        "{}",
        committed.len()
    );
    // Every committed document is whole.
    for doc in repairer.documents(None).await.unwrap() {
        assert_eq!(
            repairer.chunk_ids_of(&doc.id).await.unwrap().len(),
            doc.chunk_count
        );
    }
    // With both writers gone, a repair leaves exactly the committed chunks.
    let last = repair(repairer.as_ref(), vectors.as_ref()).await.unwrap();
    let stored: HashSet<String> = vectors.chunk_ids().await.unwrap().into_iter().collect();
    assert_eq!(stored, committed, "orphans left after the last repair");
    eprintln!(
        "{} committed chunks, all with vectors; {repairs} repairs beside the writers removed {}, \
         the last one {last}; 0 orphans",
        committed.len(),
        repaired.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_and_repairs_on_sqlite_lose_no_vector() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    two_writers_and_a_repairer(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_and_repairs_on_postgres_lose_no_vector() {
    if let Some(url) = rag_store::testing::postgres_database("rag_writers").await {
        two_writers_and_a_repairer(&url).await;
    }
}

/// Records what it is asked to embed.
#[derive(Default)]
struct Recording(std::sync::Mutex<Vec<String>>);

impl Embedder for Recording {
    fn model_id(&self) -> &str {
        "recording"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        self.0
            .lock()
            .unwrap()
            .extend(texts.iter().map(|t| t.to_string()));
        Hashed.embed(texts)
    }
}

/// With the context header (the default) a chunk is embedded under its
/// page's title and heading path; without it, as its text alone.
#[tokio::test]
async fn the_context_header_is_what_the_embedder_reads() {
    for header in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
        let embedder = Arc::new(Recording::default());
        let ingestor = Ingestor {
            embedder: embedder.clone(),
            vectors: Arc::new(EdgeVectorStore::open(&dir.path().join("vectors"), DIM).unwrap()),
            docs: Arc::new(SqlDocumentStore::connect(&url).await.unwrap()),
            chunker: Arc::new(
                Chunker::new(
                    word_tokenizer(),
                    ChunkOptions {
                        max_tokens: 40,
                        overlap_tokens: 0,
                    },
                )
                .unwrap(),
            ),
            limits: Limits::default(),
            context_header: header,
        };
        let page = Input::Text {
            source: "leave.md".into(),
            title: "Leave".into(),
            body: "# Leave\n\n## Carry-over\n\nFive days carry over.\n".into(),
        };
        ingestor
            .ingest_inputs(&[page], &IngestOptions::default(), &|_| {})
            .await
            .unwrap();
        let read = embedder.0.lock().unwrap().clone();
        let carry = read
            .iter()
            .find(|t| t.contains("Five days carry over."))
            .unwrap_or_else(|| panic!("{read:?}"));
        // The chunk opens with its own heading, so the title alone leads.
        assert_eq!(carry.starts_with("Leave\n# Leave"), header, "{carry:?}");
        assert!(
            carry.trim_start_matches("Leave\n").starts_with("# Leave"),
            "{carry:?}"
        );
    }
}
