//! `rag`: ingest documents, retrieve passages, answer with citations,
//! serve. Parses the command line and runs it (`rag_api::cli`).

use std::process::ExitCode;

use clap::Parser;
use rag_api::cli::{self, Cli};

fn main() -> ExitCode {
    // candle's own models (gemma3) run on dequantized f32 weights: the f32
    // gemm prefills 13-17x faster than candle's quantized kernels on our
    // machines (`rag bench generate`, BENCHMARKS.md). Our llama/qwen2
    // decoder holds its weights as `generator.quantized_decoding` and
    // `quantized_prefill` say and ignores this. Set before any thread
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
        let threads = rag_api::candle_threads();
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
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
