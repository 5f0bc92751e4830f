//! `rag bench ...`: throughput figures printed as JSON lines, so runs on
//! different machines and settings can be compared side by side.

use std::time::Instant;

use rag_core::{ChatMessage, GenerationRequest, Generator, Role};
use rag_generator::CandleGenerator;
use serde_json::json;

/// Prefill and decode speed of a generator, and the time to first token.
pub async fn generate(
    generator: &CandleGenerator,
    prompt_tokens: usize,
    max_tokens: usize,
    runs: usize,
) -> anyhow::Result<()> {
    // A prompt of about `prompt_tokens` tokens of ordinary prose.
    let sentence =
        "The travel policy says that trips are booked in the travel tool after approval. ";
    let per = generator.count_tokens(sentence).max(1);
    let question = format!(
        "{}\nSummarise the text above in one long paragraph.",
        sentence.repeat(prompt_tokens / per)
    );
    let messages = vec![ChatMessage::new(Role::User, question)];
    for run in 0..runs {
        let first = generator
            .generate(GenerationRequest::greedy(messages.clone(), 1))
            .await?;
        let started = Instant::now();
        let first_again = generator
            .generate(GenerationRequest::greedy(messages.clone(), 1))
            .await?;
        let ttft = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let full = generator
            .generate(GenerationRequest::greedy(messages.clone(), max_tokens))
            .await?;
        let total = started.elapsed().as_secs_f64();
        let decoded = full.completion_tokens.saturating_sub(1);
        debug_assert_eq!(first.prompt_tokens, first_again.prompt_tokens);
        println!(
            "{}",
            json!({
                "engine": "rag-candle",
                "model": generator.model_id(),
                "device": "cpu",
                "run": run,
                "prompt_tokens": full.prompt_tokens,
                "completion_tokens": full.completion_tokens,
                "ttft_s": ttft,
                "prefill_tokens_per_s": full.prompt_tokens as f64 / ttft,
                "decode_tokens_per_s": decoded as f64 / (total - ttft).max(1e-9),
                "total_s": total,
                "dequantized": std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok(),
            })
        );
    }
    Ok(())
}

/// Passages per second of the embedder on a corpus's real chunks, and, with
/// `peer`, of ONNX Runtime on the same weights, passages and thread count,
/// in the same run.
pub async fn embed(
    app: &crate::app::App,
    corpus: &std::path::Path,
    limit: usize,
    peer: bool,
) -> anyhow::Result<()> {
    let files = rag_ingest::collect_files(&[corpus.to_path_buf()])?;
    let chunker = rag_ingest::Chunker::new(app.tokenizer.clone(), app.settings.chunking)?;
    let mut passages = Vec::new();
    for (path, _) in &files {
        let Ok(doc) = rag_ingest::load_file(path) else {
            continue;
        };
        for c in chunker.chunk(&doc) {
            passages.push(rag_ingest::embedding_text(&doc.title, &c.heading, &c.text));
        }
        if passages.len() >= limit {
            break;
        }
    }
    passages.truncate(limit);
    anyhow::ensure!(
        !passages.is_empty(),
        "no passages found under {}",
        corpus.display()
    );
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    // The peer gets the thread count the embedder was opened with.
    let threads = app.settings.embedder.threads();

    let embedder = app.embedder.clone();
    let warm = refs[..refs.len().min(16)].to_vec();
    embedder.embed(&warm)?;
    let started = Instant::now();
    let vectors = embedder.embed(&refs)?;
    let seconds = started.elapsed().as_secs_f64();
    let ours = passages.len() as f64 / seconds;
    println!(
        "{}",
        json!({"engine": format!("rag-{}", app.settings.embedder.runtime.as_str()), "passages": passages.len(), "seconds": seconds,
               "passages_per_s": ours, "threads": threads})
    );
    if !peer {
        return Ok(());
    }
    // Removed when dropped, on the error paths too.
    let scratch = tempfile::tempdir()?;
    let scratch = scratch.path();
    let script = scratch.join("embed_peer.py");
    std::fs::write(&script, crate::models::MINILM_ONNX_SCRIPT)?;
    let passages_file = scratch.join("passages.json");
    let check_file = scratch.join("reference.json");
    std::fs::write(&passages_file, serde_json::to_vec(&passages)?)?;
    std::fs::write(
        &check_file,
        serde_json::to_vec(&vectors[..vectors.len().min(8)])?,
    )?;
    let spec = crate::models::spec(&app.settings.embedder.model)?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(app.settings.models_dir.join(spec.dir))
        .arg(&passages_file)
        .args(["--threads", &threads.to_string(), "--check"])
        .arg(&check_file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the peer failed (it needs onnx, onnxruntime, tokenizers, numpy; set PYTHON): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout)?;
    let peer: serde_json::Value = serde_json::from_str(line.trim())?;
    println!("{}", line.trim());
    let theirs = peer["passages_per_s"].as_f64().unwrap_or(f64::NAN);
    println!("{}", json!({"ratio_rag_over_peer": ours / theirs}));
    Ok(())
}
