//! Prometheus metrics (`GET /metrics`): requests and their latency, the
//! time of each stage of an answer, tokens in and out, the generation
//! queue, answers by outcome, and ingest counters.
//!
//! Recorded through the `metrics` facade; the exporter renders the text
//! format on request (no listener of its own).

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rag_core::{Answer, Error, Usage};

/// Seconds: 5 ms to 2 minutes, for HTTP requests and answer stages.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the process-wide recorder, once; later calls get the same
/// handle. The lock makes "once" hold when routers are built at the same
/// time (tests do).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = &*installed {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "rag_http_requests_total",
        "HTTP requests by route and status"
    );
    describe_histogram!(
        "rag_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route (to the first byte of a streamed answer)"
    );
    describe_histogram!(
        "rag_stage_duration_seconds",
        metrics::Unit::Seconds,
        "time of each stage of an answer: retrieval, generation"
    );
    describe_counter!(
        "rag_tokens_total",
        "tokens through the generator: prompt, completion"
    );
    describe_counter!(
        "rag_answers_total",
        "answers by outcome: answered, abstained, error"
    );
    describe_counter!(
        "rag_retrieval_label_mismatches_total",
        "hits dropped because their vector's labels did not match the committed document \
         (defence in depth; non-zero outside an ingest's relabelling is a bug)"
    );
    // Counted by `rag_answer`.
    describe_counter!(
        "rag_answer_sentences_dropped_total",
        "sentences of model answers left out because no given passage supports them"
    );
    describe_counter!(
        "rag_passages_withheld_total",
        "relevant passages kept from the model because they give it orders (prompt injection)"
    );
    describe_gauge!(
        "rag_generation_queue_depth",
        "questions being answered or waiting for the generator"
    );
    describe_counter!(
        "rag_ingest_documents_total",
        "uploaded documents by outcome"
    );
    describe_counter!("rag_ingest_chunks_total", "chunks committed by uploads");
}

pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    counter!("rag_http_requests_total", &labels).increment(1);
    histogram!(
        "rag_http_request_duration_seconds",
        "method" => method.to_string(),
        "route" => route.to_string()
    )
    .record(took.as_secs_f64());
}

pub fn stage(name: &'static str, took: Duration) {
    histogram!("rag_stage_duration_seconds", "stage" => name).record(took.as_secs_f64());
}

pub fn generation(prompt_tokens: usize, completion_tokens: usize, took: Duration) {
    stage("generation", took);
    counter!("rag_tokens_total", "kind" => "prompt").increment(prompt_tokens as u64);
    counter!("rag_tokens_total", "kind" => "completion").increment(completion_tokens as u64);
}

/// The generation of an answer, when the model was called for it.
pub fn answer_usage(usage: &Usage) {
    if usage.prompt_tokens > 0 {
        generation(
            usage.prompt_tokens,
            usage.completion_tokens,
            Duration::from_millis(usage.generation_ms),
        );
    }
    if usage.sentences_dropped > 0 {
        counter!("rag_answer_sentences_dropped_total").increment(usage.sentences_dropped as u64);
    }
}

pub fn answer(answer: &Result<Answer, Error>) {
    let outcome = match answer {
        Ok(a) if a.abstained => "abstained",
        Ok(_) => "answered",
        Err(_) => "error",
    };
    counter!("rag_answers_total", "outcome" => outcome).increment(1);
}

pub fn queue_depth(depth: usize) {
    gauge!("rag_generation_queue_depth").set(depth as f64);
}

pub fn ingest_report(report: &rag_ingest::IngestReport) {
    for (outcome, n) in [
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("skipped", report.skipped),
        ("failed", report.failed),
    ] {
        counter!("rag_ingest_documents_total", "outcome" => outcome).increment(n as u64);
    }
    counter!("rag_ingest_chunks_total").increment(report.chunks as u64);
}
