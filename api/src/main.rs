//! `rag`: ingest documents, retrieve passages, answer with citations, serve.

mod app;
mod bench;
mod chat;
mod cluster;
mod config;
mod eval;
mod eval_answers;
mod jobs;
mod keys;
mod load;
mod metrics;
mod models;
mod openapi;
mod server;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rag_core::{ConsistencyReport, SearchFilter, SearchMode};
use rag_ingest::{DocumentOutcome, IngestOptions, Progress};

use crate::app::{App, Query};
use crate::config::Settings;

#[derive(Parser)]
#[command(
    name = "rag",
    version,
    about = "Grounded answers from your own documents"
)]
struct Cli {
    /// Folder holding the vector store and the metadata database.
    #[arg(long, global = true, env = "RAG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML settings file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest files or folders (recursively): .md, .markdown, .txt, .text.
    Ingest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value = "default")]
        collection: String,
        /// Tag every document (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Restrict the documents to an access group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Also delete the collection's documents that are not among these
        /// files (pages removed from the wiki).
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        json: bool,
        /// Run only while holding this Kubernetes Lease (in the pod's
        /// namespace): of re-syncs started together, one runs and the
        /// others exit 0 at once. Renewed while the ingest runs, released
        /// at its end.
        #[arg(long)]
        lease: Option<String>,
    },
    /// Delete documents, by source (as `ingest` names it) or id: their rows
    /// and vectors, all of them.
    Delete {
        #[arg(required = true)]
        documents: Vec<String>,
        #[arg(long, default_value = "default")]
        collection: String,
    },
    /// Print the passages retrieved for a question.
    Retrieve {
        question: String,
        #[arg(long)]
        k: Option<usize>,
        #[command(flatten)]
        query: QueryArgs,
        #[arg(long)]
        json: bool,
    },
    /// Answer a question from the documents, with numbered sources.
    Ask {
        question: String,
        #[arg(long)]
        k: Option<usize>,
        #[command(flatten)]
        query: QueryArgs,
        #[arg(long)]
        json: bool,
    },
    /// Evaluations over datasets with judgements.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Serve the HTTP API and the chat page. On a loopback address with no
    /// API keys it is open (no key needed); anywhere else it needs keys.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Serve without API keys even beyond loopback: anyone who can reach
        /// the address can read, upload and delete.
        #[arg(long)]
        open: bool,
    },
    /// Apply a Kubernetes overlay (`k8s/overlays/NAME`, rendered with
    /// `kubectl kustomize`) to the cluster of the current kubeconfig with
    /// server-side apply, then wait for its Deployments and StatefulSets.
    Deploy {
        /// An overlay name (`embedded`, `gpu`, `vllm`, `cluster`) or a
        /// kustomize folder.
        #[arg(long)]
        overlay: String,
        /// Where objects without a namespace go.
        #[arg(long, default_value = "rag")]
        namespace: String,
        /// Seconds to wait for the rollouts.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[arg(long, default_value = "kubectl")]
        kubectl: String,
        /// Print the objects the overlay holds and stop, without a cluster.
        #[arg(long)]
        print: bool,
    },
    /// The Deployments and StatefulSets of a namespace and their rollouts.
    Status {
        #[arg(long, default_value = "rag")]
        namespace: String,
        #[arg(long)]
        json: bool,
    },
    /// API keys for `serve`.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check that the metadata and the vectors agree.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput; prints JSON lines.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Install or list models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

/// Retrieval options of `retrieve` and `ask`.
#[derive(clap::Args)]
struct QueryArgs {
    /// dense, sparse or hybrid; default: `retrieval.mode` of the settings.
    #[arg(long)]
    mode: Option<SearchMode>,
    /// Only this collection.
    #[arg(long)]
    collection: Option<String>,
    /// Only passages with this tag (repeat for any of several).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Search as a caller in this access group (repeatable); without it the
    /// local CLI sees every group.
    #[arg(long = "group")]
    groups: Vec<String>,
}

impl QueryArgs {
    fn into_query(self, k: Option<usize>) -> Query {
        Query {
            k,
            mode: self.mode,
            filter: SearchFilter {
                collection: self.collection,
                tags: self.tags,
                groups: (!self.groups.is_empty()).then_some(self.groups),
            },
            sampling: Default::default(),
        }
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Streaming chat clients against a running `rag serve` for a while:
    /// answers, deliberate 429s and failures, latency percentiles, and the
    /// server's peak memory (with --pid). Prints one JSON object.
    Load {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Questions asked in turn (JSON lines with a `question`).
        #[arg(long, default_value = "fixtures/questions.jsonl")]
        questions: PathBuf,
        /// An API key, when the server needs one.
        #[arg(long, env = "RAG_API_KEY")]
        key: Option<String>,
        /// The server's process id, to report its peak resident memory.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Chunks/s of the embedder alone and of the whole ingest pipeline on a
    /// corpus; `--peer` adds peers on the same weights, passages and threads
    /// and prints the ratios.
    Ingest {
        #[arg(long)]
        corpus: PathBuf,
        /// Stop reading files once this many chunks are collected.
        #[arg(long, default_value_t = usize::MAX)]
        limit: usize,
        /// Peers to run (comma-separated; `--peer` alone is onnxruntime):
        /// `onnxruntime` is Python ONNX Runtime on the same graph
        /// (scripts/bench/embed_peer.py, Python from $PYTHON);
        /// `sentence-transformers` runs the safetensors on PyTorch
        /// (scripts/bench/embed_peer_st.py, Python from $ST_PYTHON).
        #[arg(long, value_enum, num_args = 0..=1, value_delimiter = ',',
              default_missing_value = "onnxruntime")]
        peer: Vec<bench::EmbedPeer>,
    },
    /// Query latency p50/p95 (embed, search, fetch) per search mode, and the
    /// index's recall@10 against exact search, at the corpus's size and at
    /// `--sizes` chunks (the real chunks plus noisy copies of their vectors).
    Query {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Where the corpus is ingested; default DATA_DIR/bench/NAME.
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Prefill and decode tokens/s and time to first token of the generator.
    Generate {
        /// A model name from `rag models list`; default: the configured one.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// `cpu`, or `cuda` when built with `--features cuda`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Also run the peer on the same GGUF, prompt and thread count in
        /// the same run (mistral.rs's Python wheel; scripts/bench-venv.sh
        /// installs it; `PYTHON` names its python) and print the ratios.
        #[arg(long)]
        peer: bool,
        /// Also send this many requests at once, decoded together and then
        /// one at a time, and print the aggregate tokens/s of both.
        #[arg(long, default_value_t = 0)]
        concurrent: usize,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once, only its hash is kept.
    Create {
        #[arg(long)]
        name: String,
        /// reader (ask, retrieve, read), uploader (also upload and delete),
        /// admin (also every document whatever its groups).
        #[arg(long, default_value = "reader")]
        role: String,
        /// Access groups whose documents the key sees (repeat, or comma
        /// separated); `*` for every group.
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every key, revoked ones too (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id; it stops working at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Answer quality on a question file (JSON lines: id, question,
    /// answerable, gold_sources, answer, must_include, kind): retrieval hits,
    /// must-include accuracy, F1, citation precision, abstention, latency,
    /// tokens and cost, overall and per kind. Writes results.jsonl,
    /// summary.json, report.md and report.html to --out; a killed run
    /// resumes where it stopped.
    Answers(EvalAnswersArgs),
    /// Retrieval quality on a BEIR-format folder (corpus.jsonl, queries.jsonl,
    /// qrels/SPLIT.tsv): nDCG@10, recall@10, recall@100 and MRR@10 per mode.
    /// The corpus is ingested into a scratch data directory, reused while
    /// unchanged.
    Retrieval {
        #[arg(long)]
        beir: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Modes to score, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "dense,sparse,hybrid")]
        mode: Vec<SearchMode>,
        /// Scratch data directory; default DATA_DIR/eval/NAME-OF-THE-FOLDER.
        #[arg(long)]
        scratch: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Install models into $RAG_MODELS_DIR (default ./models); a no-op for
    /// those already there. Without names: the configured embedder and generator.
    Fetch { names: Vec<String> },
    /// List the known models and whether they are installed.
    List,
}

fn main() -> ExitCode {
    // candle's own models (gemma3) run on dequantized f32 weights: the f32
    // gemm prefills 13-17x faster than candle's quantized kernels on our
    // machines (`rag bench generate`, ARCHITECTURE.md). Our llama/qwen2
    // decoder chooses per step and ignores this. Set before any thread
    // starts, which is what makes `set_var` sound here.
    if std::env::var_os("CANDLE_DEQUANTIZE_ALL").is_none()
        && std::env::var_os("RAG_KEEP_QUANTIZED").is_none()
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
    }
    // candle asks for its thread count at every f32 matmul, and without
    // RAYON_NUM_THREADS that means reading /proc/cpuinfo (5% of a decoding
    // step in a profile): the count it would find, found once.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = rag_generator::candle_threads();
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,qdrant_edge=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
    match cli.command {
        Command::Models { command } => models_command(&settings, command),
        Command::Ingest {
            paths,
            collection,
            tags,
            groups,
            prune,
            json,
            lease,
        } => {
            let files = rag_ingest::collect_files(&paths)?;
            let lease = match lease {
                Some(name) => match resync_lease(&name).await? {
                    Some(lock) => Some(lock),
                    None => {
                        eprintln!(
                            "the Lease {name} is held by another replica: its re-sync runs, not this one"
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                },
                None => None,
            };
            let app = App::open(settings).await?;
            let ingestor = app.ingestor()?;
            let options = IngestOptions {
                collection,
                tags,
                groups,
                writer_groups: None,
            };
            let bar = progress_bar(files.len() as u64, json);
            let work = async {
                let mut report = ingestor
                    .ingest(&files, &options, &ingest_progress(bar.clone()))
                    .await?;
                if prune {
                    let keep = files.iter().map(|(_, source)| source.as_str()).collect();
                    report.pruned = ingestor.prune(&options.collection, &keep).await?;
                }
                anyhow::Ok(report)
            };
            let report = match &lease {
                // Stopping mid-way is safe: the next run repairs and resumes.
                Some(lock) => tokio::select! {
                    report = work => report,
                    lost = lock.hold() => return Err(lost),
                },
                None => work.await,
            };
            if let Some(lock) = &lease {
                lock.release().await?;
            }
            let report = report?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} documents: {} added, {} updated, {} unchanged, {} skipped, {} failed; {} chunks ({} embedded) in {:.1}s",
                    report.documents,
                    report.added,
                    report.updated,
                    report.unchanged,
                    report.skipped,
                    report.failed,
                    report.chunks,
                    report.embedded_chunks,
                    report.seconds
                );
                for o in &report.outcomes {
                    match o {
                        DocumentOutcome::Skipped { source, reason } => {
                            println!("skipped {source}: {reason}")
                        }
                        DocumentOutcome::Failed { source, reason } => {
                            println!("failed {source}: {reason}")
                        }
                        _ => {}
                    }
                }
                for source in &report.pruned {
                    println!("pruned {source}: no longer in the folder");
                }
            }
            Ok(if report.failed > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Retrieve {
            question,
            k,
            query,
            json,
        } => {
            let app = App::open(settings).await?;
            let hits = app.retrieve(&question, &query.into_query(k)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                for h in &hits {
                    println!(
                        "{}. [{:.3}] {} ({})\n   {}\n",
                        h.rank,
                        h.score,
                        h.title,
                        h.source,
                        one_line(&h.text, 200)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ask {
            question,
            k,
            query,
            json,
        } => {
            let app = App::open(settings).await?;
            let answer = app.ask(&question, &query.into_query(k)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!("{}\n", answer.answer);
                if !answer.citations.is_empty() {
                    println!("Sources:");
                    for c in &answer.citations {
                        let page = c.page.map(|p| format!(", page {p}")).unwrap_or_default();
                        println!(
                            "  [{}] {} ({}{page})\n      \"{}\"",
                            c.n,
                            c.title,
                            c.source,
                            one_line(&c.quote, 160)
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            command: EvalCommand::Answers(args),
        } => eval_answers_command(settings, args).await,
        Command::Eval {
            command:
                EvalCommand::Retrieval {
                    beir,
                    split,
                    mode,
                    scratch,
                    json,
                },
        } => {
            let data = eval::load(&beir, &split)?;
            let name = dir_name(&beir);
            let dir = scratch.unwrap_or_else(|| settings.data_dir.join("eval").join(&name));
            let settings = settings.scratch(dir);
            let app = App::open(settings).await?;
            let bar = progress_bar(data.corpus.len() as u64, json);
            let options = IngestOptions {
                collection: eval::COLLECTION.into(),
                ..Default::default()
            };
            let report = app
                .ingestor()?
                .ingest_inputs(&data.corpus, &options, &ingest_progress(bar.clone()))
                .await?;
            bar.finish_and_clear();
            let mut modes = serde_json::Map::new();
            for m in mode {
                let scores = eval::score(&app, &data, m).await?;
                if !json {
                    println!(
                        "{m:>6}: nDCG@10 {:.4}  recall@10 {:.4}  recall@100 {:.4}  MRR@10 {:.4}  ({:.1} ms/query)",
                        scores.ndcg_at_10,
                        scores.recall_at_10,
                        scores.recall_at_100,
                        scores.mrr_at_10,
                        scores.ms_per_query
                    );
                }
                modes.insert(m.to_string(), serde_json::to_value(scores)?);
            }
            let out = serde_json::json!({
                "dataset": name,
                "split": split,
                "queries": data.queries.len(),
                "documents": data.corpus.len(),
                "chunks": report.chunks,
                "embedded_chunks": report.embedded_chunks,
                "ingest_seconds": report.seconds,
                "embedder": app.embedder.model_id(),
                "modes": modes,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{name} {split}: {} queries over {} documents ({} chunks)",
                    data.queries.len(),
                    data.corpus.len(),
                    report.chunks
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete {
            documents,
            collection,
        } => {
            let app = App::open(settings).await?;
            let ingestor = app.ingestor()?;
            let mut missing = Vec::new();
            for name in &documents {
                // A source names every document of that name in the
                // collection (one per owner scope).
                let mut docs = app.docs.documents_by_source(&collection, name).await?;
                if docs.is_empty() {
                    docs.extend(app.docs.document(name).await?);
                }
                if docs.is_empty() {
                    missing.push(name.as_str());
                }
                for doc in docs {
                    ingestor.delete(&doc.id).await?;
                    println!("deleted {} ({} chunks)", doc.source, doc.chunk_count);
                }
            }
            anyhow::ensure!(
                missing.is_empty(),
                "no document {} in collection {collection:?} (give a source as ingest named it, or a document id)",
                missing.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { addr, open } => {
            let app = Arc::new(App::open(settings).await?);
            let keys = app.docs.keys().await?;
            let live_keys = keys.iter().filter(|k| k.revoked_at.is_none()).count();
            let open = open || (addr.ip().is_loopback() && live_keys == 0);
            anyhow::ensure!(
                open || live_keys > 0,
                "serving on {addr} needs API keys and there are none: create one with `rag keys create --name NAME --role reader`, or pass --open to serve without keys (anyone who can reach {addr} could then read, upload and delete)"
            );
            if open {
                eprintln!("open mode: no API key needed (see `rag serve --help`)");
            } else {
                eprintln!("API keys required ({live_keys} active)");
            }
            // Load the model before taking traffic.
            app.generator().await?;
            server::serve(app, addr, open).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy {
            overlay,
            namespace,
            timeout,
            kubectl,
            print,
        } => deploy(&overlay, &namespace, timeout, &kubectl, print).await,
        Command::Status { namespace, json } => {
            let client = kube::Client::try_default().await?;
            let rollouts = cluster::status(&client, &namespace).await?;
            print_rollouts(&rollouts, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command } => {
            let app = App::open(settings).await?;
            match command {
                KeysCommand::Create {
                    name,
                    role,
                    groups,
                    json,
                } => {
                    let role = rag_core::KeyRole::parse(&role).ok_or_else(|| {
                        anyhow::anyhow!("unknown role {role:?}; roles: reader, uploader, admin")
                    })?;
                    let groups: Vec<String> = groups
                        .into_iter()
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect();
                    let (key, record) =
                        keys::create(app.docs.as_ref(), &name, role, groups).await?;
                    if json {
                        let mut value = serde_json::to_value(&record)?;
                        value["key"] = key.into();
                        println!("{value}");
                    } else {
                        println!("{key}");
                        eprintln!(
                            "key {} ({}, {}, groups: {}) created; it is shown only now",
                            record.id,
                            record.name,
                            record.role.as_str(),
                            if record.groups.is_empty() {
                                "none".to_string()
                            } else {
                                record.groups.join(", ")
                            }
                        );
                    }
                }
                KeysCommand::List { json } => {
                    let keys = app.docs.keys().await?;
                    if json {
                        println!("{}", serde_json::to_string(&keys)?);
                    } else {
                        for k in keys {
                            println!(
                                "{}  {:<8}  {:<20}  groups: {:<20}  created {}{}",
                                k.id,
                                k.role.as_str(),
                                k.name,
                                k.groups.join(","),
                                k.created_at,
                                k.revoked_at
                                    .map(|r| format!("  REVOKED {r}"))
                                    .unwrap_or_default()
                            );
                        }
                    }
                }
                KeysCommand::Revoke { id } => {
                    let now = chrono::Utc::now().to_rfc3339();
                    anyhow::ensure!(
                        app.docs.revoke_key(&id, &now).await?,
                        "no active key {id} (`rag keys list` shows them)"
                    );
                    println!("revoked {id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Generate {
                    model,
                    prompt_tokens,
                    max_tokens,
                    runs,
                    device,
                    peer,
                    concurrent,
                },
        } => {
            let mut settings = settings;
            if let Some(model) = model {
                settings.generator.model = model;
            }
            let app = App::open(settings).await?;
            let path = app.generator_path()?;
            let device = rag_generator::device(&device)?;
            let model_path = path.clone();
            let generator = tokio::task::spawn_blocking(move || {
                rag_generator::CandleGenerator::load_on(&model_path, &device)
            })
            .await??;
            bench::generate(&generator, &path, prompt_tokens, max_tokens, runs, peer).await?;
            if concurrent > 0 {
                bench::concurrent(&generator, prompt_tokens, max_tokens, concurrent).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Ingest {
                    corpus,
                    limit,
                    peer,
                },
        } => {
            let app = App::open(settings).await?;
            bench::ingest(&app, &corpus, limit, &peer).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Load {
                    url,
                    concurrency,
                    duration,
                    questions,
                    key,
                    pid,
                },
        } => {
            let text = std::fs::read_to_string(&questions)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", questions.display()))?;
            let questions: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l)?;
                    v["question"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow::anyhow!("a line without `question`: {l}"))
                })
                .collect::<anyhow::Result<_>>()?;
            let report = load::run(load::LoadOptions {
                url,
                concurrency,
                duration: std::time::Duration::from_secs_f64(duration.max(0.0)),
                questions,
                key,
                pid,
            })
            .await?;
            println!("{report}");
            Ok(if report["failed"] == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Bench {
            command:
                BenchCommand::Query {
                    corpus,
                    sizes,
                    queries,
                    scratch,
                },
        } => {
            let dir =
                scratch.unwrap_or_else(|| settings.data_dir.join("bench").join(dir_name(&corpus)));
            let settings = settings.scratch(dir);
            let app = App::open(settings).await?;
            bench::query(&app, &corpus, &sizes, queries).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => {
            let app = App::open(settings).await?;
            let report = doctor(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "documents {}, chunks {}, vectors {}, orphan vectors {}, missing vectors {}, duplicate chunks {}",
                    report.documents,
                    report.chunks,
                    report.vectors,
                    report.orphan_vectors,
                    report.missing_vectors,
                    report.duplicate_chunks
                );
            }
            Ok(if report.is_consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

async fn doctor(app: &App) -> anyhow::Result<ConsistencyReport> {
    use std::collections::{HashMap, HashSet};
    let rows = app.docs.chunk_ids().await?;
    let vectors = app.vectors.chunk_ids().await?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in rows.iter().chain(vectors.iter()) {
        *counts.entry(id).or_default() += 1;
    }
    let row_set: HashSet<&str> = rows.iter().map(String::as_str).collect();
    let vec_set: HashSet<&str> = vectors.iter().map(String::as_str).collect();
    let mut sorted: Vec<&str> = row_set.iter().copied().collect();
    sorted.sort_unstable();
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(sorted.join("\n")))
    };
    Ok(ConsistencyReport {
        documents: app.docs.document_count().await?,
        chunks: rows.len(),
        vectors: vectors.len(),
        orphan_vectors: vec_set.difference(&row_set).count(),
        missing_vectors: row_set.difference(&vec_set).count(),
        duplicate_chunks: (rows.len() - row_set.len()) + (vectors.len() - vec_set.len()),
        fingerprint,
    })
}

fn models_command(settings: &Settings, command: ModelsCommand) -> anyhow::Result<ExitCode> {
    let dir = settings.models_dir.clone();
    match command {
        ModelsCommand::List => {
            for m in models::MODELS {
                let state = if m.is_installed(&dir) {
                    "installed"
                } else {
                    "not installed"
                };
                let kind = match m.kind {
                    models::Kind::Embedder => "embedder",
                    models::Kind::Generator => "generator",
                    models::Kind::Runtime => "runtime",
                };
                println!(
                    "{:<30} {:<10} {:<14} {}",
                    m.name, kind, state, m.description
                );
            }
        }
        ModelsCommand::Fetch { names } => {
            let names = if names.is_empty() {
                let mut names = vec![settings.embedder.model.clone()];
                if settings.embedder.runtime == config::EmbedderRuntime::Onnx {
                    names.push(models::ONNX_RUNTIME.to_string());
                }
                names.push(settings.generator.model.clone());
                names
            } else {
                names
            };
            for name in names {
                let spec = models::spec(&name)?;
                if spec.fetch(&dir)? {
                    println!(
                        "installed {} into {}",
                        spec.name,
                        dir.join(spec.dir).display()
                    );
                } else {
                    println!(
                        "{} is already installed in {}",
                        spec.name,
                        dir.join(spec.dir).display()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows ingest progress on `bar`: documents done, chunks embedded, rate.
fn ingest_progress(bar: ProgressBar) -> impl Fn(Progress) + Send + Sync {
    let embedded = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    move |p: Progress| match p {
        Progress::Started { .. } => {}
        Progress::Embedded { chunks } => {
            let total = embedded.fetch_add(chunks, std::sync::atomic::Ordering::Relaxed) + chunks;
            let rate = total as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{total} chunks embedded, {rate:.1} chunks/s"));
        }
        Progress::Document { done, outcome } => {
            bar.set_position(done as u64);
            if let DocumentOutcome::Failed { source, reason } = outcome {
                bar.println(format!("failed: {source}: {reason}"));
            }
        }
    }
}

/// Options of `rag eval answers`.
#[derive(clap::Args)]
struct EvalAnswersArgs {
    #[arg(long)]
    questions: PathBuf,
    /// Ingest this folder into a scratch data directory first (reused
    /// while unchanged); without it, the configured data directory.
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// A previous run's --out folder, compared in the reports.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// TOML of `metric = minimum`: exit 4 when a metric falls short.
    #[arg(long)]
    thresholds: Option<PathBuf>,
    /// Price per 1,000 tokens (prompt and completion) for the cost column.
    #[arg(long, default_value_t = 0.0)]
    price_per_1k_tokens: f64,
    /// Start again instead of resuming the results in --out.
    #[arg(long)]
    fresh: bool,
}

async fn eval_answers_command(
    mut settings: Settings,
    args: EvalAnswersArgs,
) -> anyhow::Result<ExitCode> {
    use eval_answers as ea;
    let questions = ea::load_questions(&args.questions)?;
    let baseline: Option<ea::Report> = match &args.baseline {
        Some(dir) => {
            let path = dir.join("summary.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("baseline {}: {e}", path.display()))?;
            Some(serde_json::from_str(&text)?)
        }
        None => None,
    };
    if let Some(corpus) = &args.corpus {
        let dir = settings.data_dir.join("eval").join(dir_name(corpus));
        settings = settings.scratch(dir);
    }
    let app = Arc::new(App::open(settings).await?);
    if let Some(corpus) = &args.corpus {
        let files = rag_ingest::collect_files(std::slice::from_ref(corpus))?;
        let bar = progress_bar(files.len() as u64, false);
        let report = app
            .ingestor()?
            .ingest(
                &files,
                &IngestOptions::default(),
                &ingest_progress(bar.clone()),
            )
            .await?;
        bar.finish_and_clear();
        eprintln!(
            "corpus: {} documents ({} unchanged since the last run), {} chunks embedded now",
            report.documents, report.unchanged, report.embedded_chunks
        );
    }
    let files = ea::OutFiles::new(&args.out)?;
    if args.fresh {
        let _ = std::fs::remove_file(&files.results);
    }
    let wanted: std::collections::HashSet<&str> = questions.iter().map(|q| q.id.as_str()).collect();
    let mut results: Vec<ea::QuestionResult> = ea::done_results(&files.results)?
        .into_iter()
        .filter(|r| wanted.contains(r.id.as_str()))
        .collect();
    let done: std::collections::HashSet<String> = results.iter().map(|r| r.id.clone()).collect();
    let todo: Vec<ea::Question> = questions
        .iter()
        .filter(|q| !done.contains(&q.id))
        .cloned()
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} of {} questions already answered",
            done.len(),
            questions.len()
        );
    }
    // Load the model before the clock starts for the first question.
    app.generator().await?;
    let bar = ProgressBar::new(todo.len() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} questions [{elapsed_precise}, ETA {eta}]",
            )
            .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for q in todo {
        let (app, slots) = (app.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            ea::evaluate(&app, &q, &SearchFilter::default()).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let r = joined??;
        ea::append_result(&files.results, &r)?;
        results.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let order: std::collections::HashMap<&str, usize> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id.as_str(), i))
        .collect();
    results.sort_by_key(|r| order[r.id.as_str()]);
    let report = ea::report(&results, &app, args.price_per_1k_tokens);
    std::fs::write(&files.summary, serde_json::to_string_pretty(&report)?)?;
    let markdown = ea::markdown(&report, baseline.as_ref());
    std::fs::write(&files.markdown, &markdown)?;
    std::fs::write(&files.html, ea::html(&report, &results, baseline.as_ref()))?;
    println!("{markdown}");
    println!("wrote {}", args.out.display());
    if let Some(path) = &args.thresholds {
        let failures = ea::check_thresholds(path, &report.overall)?;
        if !failures.is_empty() {
            eprintln!("below the thresholds of {}:", path.display());
            for f in &failures {
                eprintln!("  {f}");
            }
            return Ok(ExitCode::from(4));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The last component of a folder's path, for naming its scratch store.
fn dir_name(path: &std::path::Path) -> String {
    path.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "corpus".into())
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} documents {msg} [{elapsed_precise}, ETA {eta}]",
        )
        .expect("valid template"),
    );
    bar
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// Takes the re-sync Lease in this pod's namespace, as this pod (its host
/// name); `None` when another replica holds it.
async fn resync_lease(name: &str) -> anyhow::Result<Option<cluster::LeaseLock>> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("--lease needs a Kubernetes API (in a pod, or a kubeconfig): {e}")
    })?;
    let namespace = client.default_namespace().to_string();
    let identity =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("rag-{}", std::process::id()));
    let lock = cluster::LeaseLock::new(client, &namespace, name, &identity, RESYNC_LEASE);
    Ok(lock.acquire_or_renew().await?.then_some(lock))
}

/// How long the re-sync Lease lasts without renewal; it is renewed three
/// times as often.
const RESYNC_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

async fn deploy(
    overlay: &str,
    namespace: &str,
    timeout: u64,
    kubectl: &str,
    print: bool,
) -> anyhow::Result<ExitCode> {
    let dir = if overlay.contains('/') {
        PathBuf::from(overlay)
    } else {
        PathBuf::from("k8s/overlays").join(overlay)
    };
    anyhow::ensure!(
        dir.join("kustomization.yaml").exists(),
        "no overlay at {} (overlays: embedded, gpu, vllm, cluster; run from the repository root or give a folder)",
        dir.display()
    );
    let objects = cluster::parse_objects(&cluster::render(&dir, kubectl)?)?;
    if print {
        for o in &objects {
            let kind = o
                .types
                .as_ref()
                .map(|t| t.kind.as_str())
                .unwrap_or_default();
            let name = o.metadata.name.as_deref().unwrap_or_default();
            if cluster::is_cluster_scoped(kind) {
                println!("{kind} {name}");
            } else {
                let ns = o.metadata.namespace.as_deref().unwrap_or(namespace);
                println!("{kind} {ns}/{name}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = kube::Client::try_default().await?;
    let applied = cluster::apply(&client, &objects, namespace).await?;
    for a in &applied {
        let change = match a.change {
            cluster::Change::Created => "created",
            cluster::Change::Configured => "configured",
            cluster::Change::Unchanged => "unchanged",
        };
        let ns = a
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        println!("{change:<10} {} {ns}{}", a.kind, a.name);
    }
    let rollouts = cluster::wait_ready(
        &client,
        &applied,
        std::time::Duration::from_secs(timeout),
        std::time::Duration::from_secs(2),
    )
    .await?;
    print_rollouts(&rollouts, false)?;
    Ok(if rollouts.iter().all(|r| r.done) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "still rolling out after {timeout} s: see `rag status --namespace {namespace}` and `kubectl get events -n {namespace}`"
        );
        ExitCode::from(5)
    })
}

fn print_rollouts(rollouts: &[cluster::Rollout], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rollouts)?);
        return Ok(());
    }
    for r in rollouts {
        let state = if r.done { "ready" } else { "waiting" };
        println!(
            "{state:<10} {} {}: {} of {} ready, {} updated",
            r.kind, r.name, r.ready, r.desired, r.updated
        );
    }
    Ok(())
}
