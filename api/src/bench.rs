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
