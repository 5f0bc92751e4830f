//! Generation speed: prefill and decode tokens/s and the time to first
//! token, measured the same way for every backend and device. Used by
//! `rag bench generate` and by `examples/bench_generate.rs` (the small
//! binary carried to a GPU machine).

use std::time::Instant;

use rag_core::{ChatMessage, GenerationRequest, Generator, Role};
use serde::Serialize;

use crate::CandleGenerator;

/// The benchmark's question: about `prompt_tokens` tokens of prose (in the
/// model's tokens) and an instruction that asks for a long answer.
pub fn prompt(generator: &CandleGenerator, prompt_tokens: usize) -> String {
    let sentence =
        "The travel policy says that trips are booked in the travel tool after approval. ";
    let per = generator.count_tokens(sentence).max(1);
    format!(
        "{}\nSummarise the text above in one long paragraph.",
        sentence.repeat((prompt_tokens / per).max(1))
    )
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRun {
    pub engine: &'static str,
    pub model: String,
    pub device: &'static str,
    pub run: usize,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prefill plus the first token.
    pub ttft_s: f64,
    pub prefill_tokens_per_s: f64,
    /// Tokens after the first, per second.
    pub decode_tokens_per_s: f64,
    /// Prefill and every token.
    pub total_s: f64,
}

/// Greedy generation of exactly `max_tokens` tokens (end-of-sequence is
/// ignored) after a prompt of about `prompt_tokens` tokens of prose, `runs`
/// times after one warm-up.
pub async fn generate(
    generator: &CandleGenerator,
    prompt_tokens: usize,
    max_tokens: usize,
    runs: usize,
) -> anyhow::Result<Vec<GenerateRun>> {
    let question = prompt(generator, prompt_tokens);
    let request = |n: usize| GenerationRequest {
        ignore_eos: true,
        ..GenerationRequest::greedy(vec![ChatMessage::new(Role::User, question.clone())], n)
    };
    // Warm-up: kernels compiled and caches allocated outside the clock.
    generator.generate(request(2)).await?;
    let mut out = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let first = generator.generate(request(1)).await?;
        let ttft = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let full = generator.generate(request(max_tokens)).await?;
        let total = started.elapsed().as_secs_f64();
        let decoded = full.completion_tokens.saturating_sub(1);
        out.push(GenerateRun {
            engine: "rag-candle",
            model: generator.model_id().to_string(),
            device: generator.device_name(),
            run,
            prompt_tokens: first.prompt_tokens,
            completion_tokens: full.completion_tokens,
            ttft_s: ttft,
            prefill_tokens_per_s: first.prompt_tokens as f64 / ttft,
            decode_tokens_per_s: decoded as f64 / (total - ttft).max(1e-9),
            total_s: total,
        });
    }
    Ok(out)
}
