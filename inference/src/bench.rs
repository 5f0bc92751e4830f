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
    /// The process's peak resident memory so far (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The process's peak resident memory (`VmHWM`), in MiB, where the system
/// says.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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
    // Every run prefills the whole prompt (the same one each time): the
    // prefix cache is measured by `prefix_cache`.
    let cached = generator.prefix_cache();
    generator.set_prefix_cache(false);
    let request = |n: usize| GenerationRequest {
        ignore_eos: true,
        ..GenerationRequest::greedy(vec![ChatMessage::new(Role::User, question.clone())], n)
    };
    // Warm-up: kernels compiled and caches allocated outside the clock.
    generator.generate(request(2)).await?;
    let mut out = Vec::new();
    for run in 0..runs {
        // The first token's time is taken in the same run as the others
        // (when its text arrives), so that one slow run cannot move it.
        let started = Instant::now();
        let mut first = None;
        let full = generator
            .generate_stream(request(max_tokens), &mut |_| {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            })
            .await?;
        let total = started.elapsed().as_secs_f64();
        let ttft = first.unwrap_or(total);
        let decoded = full.completion_tokens.saturating_sub(1);
        out.push(GenerateRun {
            engine: "rag-candle",
            model: generator.model_id().to_string(),
            device: generator.device_name(),
            run,
            prompt_tokens: full.prompt_tokens,
            completion_tokens: full.completion_tokens,
            ttft_s: ttft,
            prefill_tokens_per_s: full.prompt_tokens as f64 / ttft,
            decode_tokens_per_s: decoded as f64 / (total - ttft).max(1e-9),
            total_s: total,
            peak_rss_mib: peak_rss_mib(),
        });
    }
    generator.set_prefix_cache(cached);
    Ok(out)
}

/// Time to first token of prompts that share their start, with and
/// without the prefix cache.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixRun {
    pub engine: &'static str,
    pub model: String,
    /// Tokens of each prompt (the shared system prompt and a question of
    /// its own).
    pub prompt_tokens: usize,
    /// Tokens the prompts share.
    pub shared_tokens: usize,
    pub ttft_without_s: f64,
    pub ttft_with_s: f64,
}

/// Prompts shaped like answers' (a system prompt of about `shared_tokens`
/// tokens shared by all, then a question of about `own_tokens` of its
/// own), each asked twice: with the prefix cache off, then on, after one
/// prompt that fills the cache. Medians of `runs` questions.
pub async fn prefix_cache(
    generator: &CandleGenerator,
    shared_tokens: usize,
    own_tokens: usize,
    runs: usize,
) -> anyhow::Result<PrefixRun> {
    let system = prompt(generator, shared_tokens);
    let messages = |i: usize| {
        let own = format!(
            "Question {i}: {}",
            "What does the policy say about trips booked before approval? ".repeat(
                (own_tokens / generator.count_tokens("What does the policy say?").max(1)).max(1)
            )
        );
        vec![
            ChatMessage::new(Role::System, system.clone()),
            ChatMessage::new(Role::User, own),
        ]
    };
    let ttft = |i: usize| async move {
        let started = Instant::now();
        let out = generator
            .generate(GenerationRequest::greedy(messages(i), 1))
            .await?;
        anyhow::Ok((started.elapsed().as_secs_f64(), out.prompt_tokens))
    };
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut tokens = 0;
    let cached = generator.prefix_cache();
    generator.set_prefix_cache(false);
    for i in 0..runs {
        without.push(ttft(i).await?.0);
    }
    generator.set_prefix_cache(true);
    ttft(runs).await?;
    for i in 0..runs {
        let (t, n) = ttft(runs + 1 + i).await?;
        with.push(t);
        tokens = n;
    }
    generator.set_prefix_cache(cached);
    let shared = generator.count_tokens(&generator.render(&messages(0)[..1])?);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(PrefixRun {
        engine: "rag-candle",
        model: generator.model_id().to_string(),
        prompt_tokens: tokens,
        shared_tokens: shared,
        ttft_without_s: median(&mut without),
        ttft_with_s: median(&mut with),
    })
}

/// Several requests at once: aggregate decoding speed.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrentRun {
    pub engine: &'static str,
    pub model: String,
    pub device: &'static str,
    /// Requests sent together.
    pub clients: usize,
    /// Sequences the model was allowed to decode together.
    pub max_batch: usize,
    /// Tokens generated by all requests.
    pub completion_tokens: usize,
    /// From sending the requests to the last answer.
    pub seconds: f64,
    /// `completion_tokens / seconds`.
    pub tokens_per_s: f64,
    /// Mean over the requests of their own time.
    pub mean_latency_s: f64,
}

/// `clients` greedy requests of exactly `max_tokens` tokens each, sent at
/// once, after prompts of about `prompt_tokens` tokens (a little longer
/// for each client, so rows differ in length), decoded with the model's
/// batch limit set to `max_batch`.
pub async fn concurrent(
    generator: &CandleGenerator,
    prompt_tokens: usize,
    max_tokens: usize,
    clients: usize,
    max_batch: usize,
) -> anyhow::Result<ConcurrentRun> {
    let requests: Vec<GenerationRequest> = (0..clients)
        .map(|i| GenerationRequest {
            ignore_eos: true,
            ..GenerationRequest::greedy(
                vec![ChatMessage::new(
                    Role::User,
                    prompt(generator, prompt_tokens + 16 * i),
                )],
                max_tokens,
            )
        })
        .collect();
    generator.set_max_batch(max_batch);
    // Warm-up outside the clock.
    generator
        .generate(GenerationRequest {
            max_tokens: 2,
            ..requests[0].clone()
        })
        .await?;
    let started = Instant::now();
    let answers = futures_util::future::join_all(requests.into_iter().map(|r| async move {
        let own = Instant::now();
        let answer = generator.generate(r).await;
        (answer, own.elapsed().as_secs_f64())
    }))
    .await;
    let seconds = started.elapsed().as_secs_f64();
    generator.set_max_batch(crate::DEFAULT_MAX_BATCH);
    let mut tokens = 0;
    let mut latency = 0.0;
    for (answer, own) in answers {
        tokens += answer?.completion_tokens;
        latency += own;
    }
    Ok(ConcurrentRun {
        engine: "rag-candle",
        model: generator.model_id().to_string(),
        device: generator.device_name(),
        clients,
        max_batch,
        completion_tokens: tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        mean_latency_s: latency / clients as f64,
    })
}

/// One product of a prompt with one weight matrix, on one path: the
/// fastest of its runs (the minimum, since the host's noise only adds).
#[derive(Debug, Clone, Serialize)]
pub struct KernelRun {
    pub format: String,
    /// `f32` (candle's gemm on the dequantized weights), `vnni` or `amx`
    /// (ours on the quantized tiles).
    pub path: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    pub best_ms: f64,
    /// Multiply-adds per second, in billions.
    pub gmacs: f64,
}

/// `tokens` by `(rows, cols)` weights of each format our tiles take, on
/// each path this CPU has, `runs` times each (arbitrary weights: candle's
/// quantization of normal values).
pub fn kernels(
    rows: usize,
    cols: usize,
    tokens: usize,
    runs: usize,
) -> anyhow::Result<Vec<KernelRun>> {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use crate::qgemv::{Format, QMatrix};

    anyhow::ensure!(
        crate::qgemv::available(),
        "our tiles need AVX-512 VNNI, which this CPU lacks"
    );
    let cpu = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (tokens, cols), &cpu)?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?;
        let mut best = f64::MAX;
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            f()?;
            best = best.min(started.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let amx_was = crate::qgemv::amx_enabled();
    let mut out = Vec::new();
    for (dtype, format) in [
        (GgmlDType::Q4K, Format::Q4K),
        (GgmlDType::Q6K, Format::Q6K),
        (GgmlDType::Q5_0, Format::Q5_0),
        (GgmlDType::Q8_0, Format::Q8_0),
    ] {
        let w = QTensor::quantize(&Tensor::randn(0f32, 1.0, (rows, cols), &cpu)?, dtype)?;
        let dense = w.dequantize(&cpu)?.t()?;
        let matrix = QMatrix::new(format, &w.data()?, rows, cols)?;
        let mut paths: Vec<(&'static str, f64)> = vec![(
            "f32",
            best(&mut || {
                x.matmul(&dense)?;
                Ok(())
            })?,
        )];
        for (path, amx) in [("vnni", false), ("amx", true)] {
            if crate::use_amx(amx) != amx {
                continue;
            }
            let seconds = best(&mut || {
                QMatrix::gemv_many(&[&matrix], &xs);
                Ok(())
            })?;
            paths.push((path, seconds));
        }
        crate::use_amx(false);
        for (path, seconds) in paths {
            out.push(KernelRun {
                format: format!("{format:?}"),
                path,
                rows,
                cols,
                tokens,
                best_ms: seconds * 1e3,
                gmacs: (rows * cols * tokens) as f64 / seconds / 1e9,
            });
        }
    }
    crate::use_amx(amx_was);
    Ok(out)
}
