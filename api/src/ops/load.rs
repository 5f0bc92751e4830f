//! `rag bench load`: many streaming chat clients against a running server
//! for a while; what they got (answers, deliberate 429s, failures), the
//! latency they saw, and the server's peak memory.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

pub struct LoadOptions {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub concurrency: usize,
    pub duration: Duration,
    /// Questions asked in turn (at least one).
    pub questions: Vec<String>,
    pub key: Option<String>,
    /// The server's process id, for its peak resident memory (Linux).
    pub pid: Option<u32>,
}

#[derive(Default)]
struct Tally {
    answered: usize,
    shed: usize,
    failed: usize,
    errors: Vec<String>,
    latency: Vec<f64>,
    first_token: Vec<f64>,
}

enum Outcome {
    Answered { total: f64, first: Option<f64> },
    Shed,
    Failed(String),
}

async fn one(client: &reqwest::Client, opts: &LoadOptions, question: &str) -> Outcome {
    let started = Instant::now();
    let mut request = client
        .post(format!(
            "{}/v1/chat/completions",
            opts.url.trim_end_matches('/')
        ))
        .json(&json!({
            "model": "rag",
            "stream": true,
            "messages": [{"role": "user", "content": question}],
        }));
    if let Some(key) = &opts.key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("request: {e}")),
    };
    match response.status().as_u16() {
        200 => {}
        429 => return Outcome::Shed,
        other => return Outcome::Failed(format!("status {other}")),
    }
    let mut stream = response.bytes_stream();
    let mut body = String::new();
    let mut first = None;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(bytes) => body.push_str(&String::from_utf8_lossy(&bytes)),
            Err(e) => return Outcome::Failed(format!("stream: {e}")),
        }
        if first.is_none() && body.contains("\"delta\":{\"content\"") {
            first = Some(started.elapsed().as_secs_f64());
        }
    }
    if body.contains("\"error\":{") {
        return Outcome::Failed("an error event in the stream".into());
    }
    if !body.contains("data: [DONE]") {
        return Outcome::Failed("the stream ended without [DONE]".into());
    }
    Outcome::Answered {
        total: started.elapsed().as_secs_f64(),
        first,
    }
}

fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    Some(values[i])
}

/// Peak resident memory of a process in MiB (`VmHWM`), on Linux.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn run(opts: LoadOptions) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(!opts.questions.is_empty(), "no questions to ask");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .build()?;
    let opts = std::sync::Arc::new(opts);
    let deadline = Instant::now() + opts.duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..opts.concurrency {
        let (client, opts) = (client.clone(), opts.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut turn = worker;
            while Instant::now() < deadline {
                let question = &opts.questions[turn % opts.questions.len()];
                turn += 1;
                match one(&client, &opts, question).await {
                    Outcome::Answered { total, first } => {
                        tally.answered += 1;
                        tally.latency.push(total);
                        tally.first_token.extend(first);
                    }
                    Outcome::Shed => {
                        tally.shed += 1;
                        // A shed client waits as Retry-After asks.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Outcome::Failed(why) => {
                        tally.failed += 1;
                        if tally.errors.len() < 3 {
                            tally.errors.push(why);
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for worker in workers {
        let t = worker.await?;
        all.answered += t.answered;
        all.shed += t.shed;
        all.failed += t.failed;
        all.errors.extend(t.errors);
        all.latency.extend(t.latency);
        all.first_token.extend(t.first_token);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.errors.truncate(5);
    Ok(json!({
        "concurrency": opts.concurrency,
        "duration_s": elapsed,
        "requests": all.answered + all.shed + all.failed,
        "answered": all.answered,
        "shed_429": all.shed,
        "failed": all.failed,
        "errors": all.errors,
        "answers_per_s": all.answered as f64 / elapsed,
        "latency_p50_s": percentile(&mut all.latency, 0.5),
        "latency_p95_s": percentile(&mut all.latency, 0.95),
        "first_token_p50_s": percentile(&mut all.first_token, 0.5),
        "first_token_p95_s": percentile(&mut all.first_token, 0.95),
        "server_peak_rss_mib": opts.pid.and_then(peak_rss_mib),
    }))
}
