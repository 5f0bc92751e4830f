//! `rag bench ...`: throughput figures printed as JSON lines, so runs on
//! different machines and settings can be compared side by side.

use std::time::Instant;

use rag_inference::CandleGenerator;
use serde_json::json;

/// Prefill and decode speed of a generator, and with `peer` the same
/// figures from mistral.rs on the same GGUF, prompt length, answer length
/// and thread count (scripts/bench/generate_peer.py), with the ratios.
pub async fn generate(
    generator: &CandleGenerator,
    path: &std::path::Path,
    prompt_tokens: usize,
    max_tokens: usize,
    runs: usize,
    peer: bool,
) -> anyhow::Result<()> {
    let ours = rag_inference::bench::generate(generator, prompt_tokens, max_tokens, runs).await?;
    for run in &ours {
        println!("{}", serde_json::to_string(run)?);
    }
    // An answer's prompt: the system prompt and instructions (about 3/4
    // of it here) shared with every other, then its own passages and
    // question.
    let shared = prompt_tokens * 3 / 4;
    let prefix =
        rag_inference::bench::prefix_cache(generator, shared, prompt_tokens - shared, runs.max(1))
            .await?;
    println!("{}", serde_json::to_string(&prefix)?);
    if !peer {
        return Ok(());
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/generate_peer.py");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(path)
        .args(["--prompt-tokens", &ours[0].prompt_tokens.to_string()])
        .args(["--max-tokens", &max_tokens.to_string()])
        .args(["--runs", &runs.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running the peer with {python}: {e}"))?;
    // The same question, word for word.
    let question = rag_inference::bench::prompt(generator, prompt_tokens);
    std::io::Write::write_all(&mut child.stdin.take().expect("piped"), question.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "the peer failed ({}; it needs the mistralrs wheel: set PYTHON to the venv of scripts/bench-venv.sh): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut peer_runs = Vec::new();
    // mistral.rs logs to stdout too: results are the JSON lines.
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("peer printed {line:?}: {e}"))?;
        println!("{value}");
        peer_runs.push(value);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let peer_figure =
        |key: &str| median(peer_runs.iter().filter_map(|r| r[key].as_f64()).collect());
    let decode = median(ours.iter().map(|r| r.decode_tokens_per_s).collect());
    let prefill = median(ours.iter().map(|r| r.prefill_tokens_per_s).collect());
    let total = median(ours.iter().map(|r| r.total_s).collect());
    println!(
        "{}",
        json!({
            "compare": format!("rag-candle vs {}", peer_runs.first().and_then(|r| r["engine"].as_str()).unwrap_or("peer")),
            "decode_ratio": decode / peer_figure("decode_tokens_per_s"),
            "prefill_ratio": prefill / peer_figure("prefill_tokens_per_s"),
            "end_to_end_ratio": peer_figure("total_s") / total,
        })
    );
    Ok(())
}

/// `clients` requests at once, decoded together (the model's batch limit
/// set to `clients`) and then one at a time, with the ratio of their
/// aggregate tokens/s.
pub async fn concurrent(
    generator: &CandleGenerator,
    prompt_tokens: usize,
    max_tokens: usize,
    clients: usize,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for max_batch in [clients, 1] {
        let run = rag_inference::bench::concurrent(
            generator,
            prompt_tokens,
            max_tokens,
            clients,
            max_batch,
        )
        .await?;
        println!("{}", serde_json::to_string(&run)?);
        runs.push(run);
    }
    println!(
        "{}",
        json!({
            "compare": format!("{clients} requests decoded together vs one at a time"),
            "throughput_ratio": runs[0].tokens_per_s / runs[1].tokens_per_s,
            "mean_latency_ratio": runs[1].mean_latency_s / runs[0].mean_latency_s,
        })
    );
    Ok(())
}

/// Ingest throughput on a corpus, in one run: the embedder alone on the
/// corpus's chunks, the whole pipeline (read, chunk, embed, BM25, upsert,
/// commit) into a scratch store, and each of `peers` on the same passages
/// and thread count (each first checks that its vectors match ours).
pub async fn ingest(
    app: &crate::app::App,
    corpus: &std::path::Path,
    limit: usize,
    peers: &[EmbedPeer],
) -> anyhow::Result<()> {
    let gguf = crate::ops::models::spec(&app.settings.embedder.model)?.is_gguf_embedder();
    anyhow::ensure!(
        peers.is_empty() || !gguf,
        "the peers run MiniLM's ONNX graph; {} has none: measure it without --peer",
        app.settings.embedder.model
    );
    let mut files = rag_ingest::collect_files(&[corpus.to_path_buf()])?;
    let chunker = rag_ingest::Chunker::new(app.tokenizer.clone(), app.settings.chunking)?;
    let started = Instant::now();
    let mut passages = Vec::new();
    let mut used = 0;
    for (path, _) in &files {
        if passages.len() >= limit {
            break;
        }
        used += 1;
        let Ok(doc) = rag_ingest::load_file(path, &rag_ingest::Limits::default()) else {
            continue;
        };
        for c in chunker.chunk(&doc) {
            passages.push(rag_ingest::embedding_text(&doc.title, &c.heading, &c.text));
        }
    }
    files.truncate(used);
    anyhow::ensure!(
        !passages.is_empty(),
        "no passages found under {}",
        corpus.display()
    );
    // Reading and chunking, one thread: the part of the pipeline's work
    // that is not embedding or writing.
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"stage": "read_and_chunk", "documents": files.len(), "chunks": passages.len(),
               "seconds": seconds, "chunks_per_s": passages.len() as f64 / seconds})
    );
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    // The peer gets the thread count the embedder was opened with.
    let threads = app.settings.embedder.threads();
    let engine = if gguf {
        "rag-candle".to_string()
    } else {
        format!("rag-{}", app.settings.embedder.runtime.as_str())
    };

    let embedder = app.embedder.clone();
    embedder.embed(&refs[..refs.len().min(16)])?; // warm-up
    let started = Instant::now();
    let vectors = embedder.embed(&refs)?;
    let seconds = started.elapsed().as_secs_f64();
    let alone = passages.len() as f64 / seconds;
    println!(
        "{}",
        json!({"stage": "embedder", "engine": engine, "chunks": passages.len(), "seconds": seconds,
               "chunks_per_s": alone, "threads": threads})
    );

    // The pipeline, from files to committed rows, in a scratch data dir.
    let scratch = tempfile::tempdir()?;
    let store =
        rag_store::EdgeVectorStore::open(&scratch.path().join("vectors"), embedder.dimension())?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        scratch.path().join("meta.db").display()
    );
    let ingestor = rag_ingest::Ingestor {
        embedder: embedder.clone(),
        vectors: std::sync::Arc::new(store),
        docs: std::sync::Arc::new(rag_store::SqlDocumentStore::connect(&url).await?),
        chunker: std::sync::Arc::new(chunker),
        limits: rag_ingest::Limits::default(),
        context_header: true,
    };
    let report = ingestor
        .ingest(&files, &Default::default(), &|_| {})
        .await?;
    let pipeline = report.chunks as f64 / report.seconds;
    println!(
        "{}",
        json!({"stage": "pipeline", "engine": engine, "documents": report.documents, "chunks": report.chunks,
               "seconds": report.seconds, "chunks_per_s": pipeline, "threads": threads})
    );
    if peers.is_empty() {
        return Ok(());
    }
    // Removed when dropped, on the error paths too.
    let scratch = tempfile::tempdir()?;
    let scratch = scratch.path();
    let passages_file = scratch.join("passages.json");
    let check_file = scratch.join("reference.json");
    std::fs::write(&passages_file, serde_json::to_vec(&passages)?)?;
    std::fs::write(
        &check_file,
        serde_json::to_vec(&vectors[..vectors.len().min(8)])?,
    )?;
    let spec = crate::ops::models::spec(&app.settings.embedder.model)?;
    for peer in peers.iter().map(|p| p.spec()) {
        let script = scratch.join(peer.script_name);
        std::fs::write(&script, peer.script)?;
        let python = std::env::var(peer.python_var).unwrap_or_else(|_| "python3".into());
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(app.settings.models_dir.join(spec.dir))
            .arg(&passages_file)
            .args(["--threads", &threads.to_string(), "--check"])
            .arg(&check_file)
            .output()
            .map_err(|e| anyhow::anyhow!("running the {} peer with {python}: {e}", peer.name))?;
        anyhow::ensure!(
            out.status.success(),
            "the {} peer failed (it needs {}; set {} to that Python, scripts/bench-venv.sh makes one): {}",
            peer.name,
            peer.needs,
            peer.python_var,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout)?;
        let line = line.trim().lines().last().unwrap_or_default();
        let result: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("the {} peer printed {line:?}: {e}", peer.name))?;
        println!("{line}");
        let theirs = result["passages_per_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{}",
            json!({"peer": result["engine"], "ratio_embedder_over_peer": alone / theirs,
                   "ratio_pipeline_over_peer": pipeline / theirs})
        );
    }
    Ok(())
}

/// A peer of `rag bench ingest`: another program embedding the same
/// passages with the same weights and thread count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedPeer {
    /// Python ONNX Runtime on the same ONNX graph.
    Onnxruntime,
    /// sentence-transformers on PyTorch, from the same safetensors.
    SentenceTransformers,
}

/// What running one peer takes.
struct PeerSpec {
    name: &'static str,
    script_name: &'static str,
    /// Compiled in, so `rag` runs from any folder.
    script: &'static str,
    /// The environment variable naming the Python to run it with.
    python_var: &'static str,
    needs: &'static str,
}

impl EmbedPeer {
    fn spec(self) -> PeerSpec {
        match self {
            Self::Onnxruntime => PeerSpec {
                name: "onnxruntime",
                script_name: "embed_peer.py",
                script: crate::ops::models::MINILM_ONNX_SCRIPT,
                python_var: "PYTHON",
                needs: "onnx, onnxruntime, tokenizers, numpy",
            },
            Self::SentenceTransformers => PeerSpec {
                name: "sentence-transformers",
                script_name: "embed_peer_st.py",
                script: include_str!("../../../scripts/bench/embed_peer_st.py"),
                python_var: "ST_PYTHON",
                needs: "sentence-transformers and torch",
            },
        }
    }
}

/// Latency percentiles, in milliseconds.
fn percentiles(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    json!({"p50_ms": at(0.5), "p95_ms": at(0.95)})
}

/// Query latency (embed, search, fetch) and the approximate index's
/// recall@10 against exact search, at the corpus's own size and at larger
/// ones.
///
/// The corpus is ingested for real (into the scratch data directory the
/// caller opened `app` on, reused while unchanged). Larger stores are made
/// of those real chunks and their real vectors, plus copies of them whose
/// vectors are moved by Gaussian noise to a cosine of about 0.85 from the
/// original: no corpus of 100k chunks can be embedded on this machine in a
/// benchmark's time, and near-copies are the hard case for an index.
pub async fn query(
    app: &crate::app::App,
    corpus: &std::path::Path,
    sizes: &[usize],
    queries: usize,
) -> anyhow::Result<()> {
    use rand::SeedableRng;

    let (texts, vectors, embedded_now) = corpus_chunks(app, corpus).await?;
    let real = texts.len();
    // Questions: the opening words of chunks spread over the corpus.
    let questions: Vec<String> = (0..queries.min(real))
        .map(|i| {
            let words: Vec<&str> = texts[i * real / queries.min(real)]
                .split_whitespace()
                .filter(|w| !w.starts_with('#'))
                .take(10)
                .collect();
            words.join(" ")
        })
        .collect();
    let q_vectors = app
        .embedder
        .embed_queries(&questions.iter().map(String::as_str).collect::<Vec<_>>())?;
    println!(
        "{}",
        json!({"corpus": corpus.display().to_string(), "real_chunks": real,
               "embedded_now": embedded_now, "queries": questions.len()})
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut all_sizes = vec![real];
    all_sizes.extend(sizes.iter().copied().filter(|&s| s > real));
    for size in all_sizes {
        let scratch = tempfile::tempdir()?;
        let build = Instant::now();
        let hnsw = app.settings.vector_store.hnsw();
        let (store, docs) =
            scratch_store(scratch.path(), size, &texts, &vectors, hnsw, &mut rng).await?;
        let build_s = build.elapsed().as_secs_f64();
        latencies(app, &store, &docs, &questions, size, build_s).await?;
        ann_recall(&store, &questions, &q_vectors, size).await?;
    }
    Ok(())
}

/// The corpus ingested (reused while unchanged): its chunks' texts and
/// vectors in id order, and how many chunks were embedded now.
async fn corpus_chunks(
    app: &crate::app::App,
    corpus: &std::path::Path,
) -> anyhow::Result<(Vec<String>, Vec<Vec<f32>>, usize)> {
    use rag_core::ChunkRecord;

    let files = rag_ingest::collect_files(&[corpus.to_path_buf()])?;
    let report = app
        .ingestor()?
        .ingest(&files, &Default::default(), &|_| {})
        .await?;
    let mut ids = app.docs.chunk_ids().await?;
    ids.sort();
    anyhow::ensure!(!ids.is_empty(), "no chunks under {}", corpus.display());
    let rows: std::collections::HashMap<String, ChunkRecord> = app
        .docs
        .chunks(&ids)
        .await?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let texts = ids.iter().map(|id| rows[id].text.clone()).collect();
    let vectors: Vec<Vec<f32>> = app
        .vectors
        .vectors(&ids)
        .await?
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("a chunk without its vector: run `rag doctor`"))?;
    Ok((texts, vectors, report.embedded_chunks))
}

/// A store of `size` chunks in `dir`: the real ones, then copies whose
/// vectors are moved by noise, ten chunks a document (a wiki of mid-sized
/// pages).
async fn scratch_store(
    dir: &std::path::Path,
    size: usize,
    texts: &[String],
    vectors: &[Vec<f32>],
    hnsw: rag_store::HnswBuild,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<(rag_store::EdgeVectorStore, rag_store::SqlDocumentStore)> {
    use rag_core::{ChunkRecord, DocumentRecord, DocumentStore, VectorPoint, VectorStore};
    use rand_distr::Distribution;

    let real = texts.len();
    let noise = rand_distr::Normal::new(0.0f32, 0.0316).expect("valid sigma");
    let store =
        rag_store::EdgeVectorStore::open_with(&dir.join("vectors"), vectors[0].len(), hnsw)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("meta.db").display());
    let docs = rag_store::SqlDocumentStore::connect(&url).await?;
    for (d, range) in (0..size).collect::<Vec<_>>().chunks(10).enumerate() {
        let doc_id = rag_core::document_id("bench", &format!("doc-{d}"));
        let mut points = Vec::with_capacity(range.len());
        let mut rows = Vec::with_capacity(range.len());
        for (ordinal, &i) in range.iter().enumerate() {
            let text = &texts[i % real];
            let id = rag_core::chunk_id(&doc_id, text, ordinal);
            let mut dense = vectors[i % real].clone();
            if i >= real {
                dense.iter_mut().for_each(|x| *x += noise.sample(rng));
                let norm = dense.iter().map(|x| x * x).sum::<f32>().sqrt();
                dense.iter_mut().for_each(|x| *x /= norm);
            }
            points.push(VectorPoint {
                chunk_id: id.clone(),
                document_id: doc_id.clone(),
                collection: "bench".into(),
                tags: vec![],
                groups: vec![],
                dense,
                text: text.clone(),
            });
            rows.push(ChunkRecord {
                id,
                document_id: doc_id.clone(),
                ordinal,
                text: text.clone(),
                heading: String::new(),
                page: None,
                token_count: 0,
            });
        }
        store.upsert(points).await?;
        let record = DocumentRecord {
            id: doc_id.clone(),
            collection: "bench".into(),
            source: format!("doc-{d}"),
            title: format!("Document {d}"),
            content_hash: String::new(),
            tags: vec![],
            groups: vec![],
            chunk_count: rows.len(),
            ingested_at: String::new(),
            url: None,
            origin: None,
        };
        docs.replace_document(&record, &rows).await?;
    }
    store.optimize().await?;
    Ok((store, docs))
}

/// Prints p50/p95 of each stage of a query (embed, search, fetch) per
/// search mode.
async fn latencies(
    app: &crate::app::App,
    store: &rag_store::EdgeVectorStore,
    docs: &rag_store::SqlDocumentStore,
    questions: &[String],
    size: usize,
    build_s: f64,
) -> anyhow::Result<()> {
    use rag_core::{DocumentStore, SearchFilter, SearchMode, VectorQuery, VectorStore};

    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let (mut embed_ms, mut search_ms, mut fetch_ms, mut total_ms) =
            (vec![], vec![], vec![], vec![]);
        for q in questions {
            let t0 = Instant::now();
            let dense = app.embedder.embed_queries(&[q.as_str()])?.remove(0);
            let t1 = Instant::now();
            let hits = store
                .search(&VectorQuery {
                    dense,
                    text: q.clone(),
                    mode,
                    fusion: Default::default(),
                    filter: SearchFilter::default(),
                    limit: 15,
                    exact: false,
                    hnsw_ef: None,
                })
                .await?;
            let t2 = Instant::now();
            let ids: Vec<String> = hits.into_iter().map(|h| h.chunk_id).collect();
            let rows = docs.chunks(&ids).await?;
            for r in rows.iter().take(5) {
                docs.document(&r.document_id).await?;
            }
            let t3 = Instant::now();
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            embed_ms.push(ms(t0, t1));
            search_ms.push(ms(t1, t2));
            fetch_ms.push(ms(t2, t3));
            total_ms.push(ms(t0, t3));
        }
        println!(
            "{}",
            json!({"chunks": size, "mode": mode.as_str(), "build_s": build_s,
                   "total": percentiles(total_ms), "embed": percentiles(embed_ms),
                   "search": percentiles(search_ms), "fetch": percentiles(fetch_ms)})
        );
    }
    Ok(())
}

/// Prints the index's recall@10 against exact search, on the real
/// questions' vectors, at the engine's default breadth and at wider ones.
async fn ann_recall(
    store: &rag_store::EdgeVectorStore,
    questions: &[String],
    q_vectors: &[Vec<f32>],
    size: usize,
) -> anyhow::Result<()> {
    use rag_core::{SearchFilter, SearchMode, VectorQuery, VectorStore};

    for ef in [None, Some(128), Some(256), Some(512)] {
        let mut recall = 0.0;
        let mut ms = Vec::new();
        for (q, v) in questions.iter().zip(q_vectors) {
            let search = |exact| VectorQuery {
                dense: v.clone(),
                text: q.clone(),
                mode: SearchMode::Dense,
                fusion: Default::default(),
                filter: SearchFilter::default(),
                limit: 10,
                exact,
                hnsw_ef: ef,
            };
            let t = Instant::now();
            let approx: std::collections::HashSet<String> = store
                .search(&search(false))
                .await?
                .into_iter()
                .map(|h| h.chunk_id)
                .collect();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let exact = store.search(&search(true)).await?;
            let found = exact
                .iter()
                .filter(|h| approx.contains(&h.chunk_id))
                .count();
            recall += found as f64 / exact.len().max(1) as f64;
        }
        println!(
            "{}",
            json!({"chunks": size, "hnsw_ef": ef, "ann_recall_at_10": recall / questions.len() as f64,
                   "search": percentiles(ms)})
        );
    }
    Ok(())
}
