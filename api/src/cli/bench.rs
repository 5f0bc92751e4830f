//! `rag bench`: generate, ingest, load and query.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::scratch_name;
use crate::app::App;
use crate::config::Settings;
use crate::ops::{bench, load};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Streaming chat clients against a running `rag serve` for a while:
    /// answers, deliberate 429s and failures, latency percentiles, and the
    /// server's peak memory (with --pid). Prints one JSON object.
    Load(LoadBenchArgs),
    /// Chunks/s of the embedder alone and of the whole ingest pipeline on a
    /// corpus; `--peer` adds peers on the same weights, passages and threads
    /// and prints the ratios.
    Ingest(IngestBenchArgs),
    /// Query latency p50/p95 (embed, search, fetch) per search mode, and the
    /// index's recall@10 against exact search, at the corpus's size and at
    /// `--sizes` chunks (the real chunks plus noisy copies of their vectors).
    Query(QueryBenchArgs),
    /// Prefill and decode tokens/s and time to first token of the generator.
    Generate(GenerateBenchArgs),
}

#[derive(clap::Args)]
pub struct LoadBenchArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Questions asked in turn (JSON lines with a `question`).
    #[arg(long, default_value = "fixtures/questions.jsonl")]
    pub questions: PathBuf,
    /// An API key, when the server needs one.
    #[arg(long, env = "RAG_API_KEY")]
    pub key: Option<String>,
    /// The server's process id, to report its peak resident memory.
    #[arg(long)]
    pub pid: Option<u32>,
}

#[derive(clap::Args)]
pub struct IngestBenchArgs {
    #[arg(long)]
    pub corpus: PathBuf,
    /// Stop reading files once this many chunks are collected.
    #[arg(long, default_value_t = usize::MAX)]
    pub limit: usize,
    /// Peers to run (comma-separated; `--peer` alone is onnxruntime):
    /// `onnxruntime` is Python ONNX Runtime on the same graph
    /// (scripts/bench/embed_peer.py, Python from $PYTHON);
    /// `sentence-transformers` runs the safetensors on PyTorch
    /// (scripts/bench/embed_peer_st.py, Python from $ST_PYTHON).
    #[arg(long, value_enum, num_args = 0..=1, value_delimiter = ',',
          default_missing_value = "onnxruntime")]
    pub peer: Vec<bench::EmbedPeer>,
}

#[derive(clap::Args)]
pub struct QueryBenchArgs {
    #[arg(long)]
    pub corpus: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub sizes: Vec<usize>,
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Where the corpus is ingested; default DATA_DIR/bench/NAME.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct GenerateBenchArgs {
    /// A model name from `rag models list`; default: the configured one.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// `cpu`, or `cuda` when built with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: rag_inference::Device,
    /// Also run the peer on the same GGUF, prompt and thread count in
    /// the same run (mistral.rs's Python wheel; scripts/bench-venv.sh
    /// installs it; `PYTHON` names its python) and print the ratios.
    #[arg(long)]
    pub peer: bool,
    /// Also send this many requests at once, decoded together and then
    /// one at a time, and print the aggregate tokens/s of both.
    #[arg(long, default_value_t = 0)]
    pub concurrent: usize,
}

pub async fn generate(settings: Settings, args: GenerateBenchArgs) -> anyhow::Result<ExitCode> {
    let GenerateBenchArgs {
        model,
        prompt_tokens,
        max_tokens,
        runs,
        device,
        peer,
        concurrent,
    } = args;
    let model = model.unwrap_or_else(|| settings.generator.backend.model().to_string());
    // The weights held as the settings say (generator.quantized_prefill,
    // generator.amx).
    let precision = settings
        .generator
        .candle()
        .map_or_else(Default::default, |c| c.precision);
    if let Some(c) = settings.generator.candle() {
        crate::app::use_amx(c.amx);
    }
    let app = App::open(settings).await?;
    let path = app.generator_path(&model)?;
    let device = device.open()?;
    let model_path = path.clone();
    let generator = tokio::task::spawn_blocking(move || {
        rag_inference::CandleGenerator::load_with(&model_path, &device, precision)
    })
    .await??;
    bench::generate(&generator, &path, prompt_tokens, max_tokens, runs, peer).await?;
    if concurrent > 0 {
        bench::concurrent(&generator, prompt_tokens, max_tokens, concurrent).await?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ingest(settings: Settings, args: IngestBenchArgs) -> anyhow::Result<ExitCode> {
    let IngestBenchArgs {
        corpus,
        limit,
        peer,
    } = args;
    let app = App::open(settings).await?;
    bench::ingest(&app, &corpus, limit, &peer).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn load(args: LoadBenchArgs) -> anyhow::Result<ExitCode> {
    let LoadBenchArgs {
        url,
        concurrency,
        duration,
        questions,
        key,
        pid,
    } = args;
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

pub async fn query(settings: Settings, args: QueryBenchArgs) -> anyhow::Result<ExitCode> {
    let QueryBenchArgs {
        corpus,
        sizes,
        queries,
        scratch,
    } = args;
    let dir = scratch.unwrap_or_else(|| {
        settings
            .data_dir
            .join("bench")
            .join(scratch_name(&settings, &corpus))
    });
    let settings = settings.scratch(dir);
    let app = App::open(settings).await?;
    bench::query(&app, &corpus, &sizes, queries).await?;
    Ok(ExitCode::SUCCESS)
}
