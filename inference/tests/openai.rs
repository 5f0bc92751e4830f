//! The OpenAI-compatible client against vLLM's wire format, served by a
//! mock HTTP server: the edge cases a real server cannot be made to produce
//! on demand (a stream cut off, an error mid-stream, `finish_reason:
//! length`, 429 then success). The bodies in `fixtures/vllm/` follow vLLM's
//! response shapes field for field. Tests against a real server process
//! (another `rag serve`) are in the end-to-end suite.

use std::time::Duration;

use rag_core::{ChatMessage, ErrorKind, FinishReason, GenerationRequest, Generator, Role};
use rag_inference::{OpenAiConfig, OpenAiGenerator};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/vllm/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn request() -> GenerationRequest {
    GenerationRequest::greedy(
        vec![ChatMessage::new(Role::User, "What is the per diem?")],
        64,
    )
}

fn client(server: &MockServer) -> OpenAiGenerator {
    let mut config = OpenAiConfig::new(format!("{}/v1", server.uri()), "qwen");
    config.api_key = Some("sk-test".into());
    config.initial_backoff = Duration::from_millis(10);
    config.timeout = Duration::from_secs(5);
    OpenAiGenerator::new(config).unwrap()
}

fn sse(body: String) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(body)
}

const ANSWER: &str = "Employees may claim a per diem of €45 for each day of travel [1].";

#[tokio::test]
async fn non_streamed_answer_with_usage_and_bearer_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .and(body_partial_json(
            serde_json::json!({"model": "qwen", "stream": false, "temperature": 0.0}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(fixture("completion_ok.json"), "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let generation = client(&server).generate(request()).await.unwrap();
    assert_eq!(generation.text, ANSWER);
    assert_eq!(generation.prompt_tokens, 412);
    assert_eq!(generation.completion_tokens, 18);
    assert_eq!(generation.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn streamed_pieces_add_up_to_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(serde_json::json!({
            "stream": true,
            "stream_options": {"include_usage": true}
        })))
        .respond_with(sse(fixture("stream_ok.sse")))
        .mount(&server)
        .await;
    let mut pieces = Vec::new();
    let generation = client(&server)
        .generate_stream(request(), &mut |p| pieces.push(p.to_string()))
        .await
        .unwrap();
    assert_eq!(pieces.len(), 17, "one piece per content delta: {pieces:?}");
    assert_eq!(pieces.concat(), ANSWER);
    assert_eq!(generation.text, ANSWER);
    assert_eq!(
        (generation.prompt_tokens, generation.completion_tokens),
        (412, 18)
    );
    assert_eq!(generation.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn finish_reason_length_is_reported() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse(fixture("stream_length.sse")))
        .mount(&server)
        .await;
    let generation = client(&server)
        .generate_stream(request(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(generation.finish_reason, FinishReason::Length);
    assert_eq!(generation.text, "Employees may claim a per diem");
    assert_eq!(generation.completion_tokens, 6);
}

#[tokio::test]
async fn a_stream_cut_off_midway_is_an_error_not_a_short_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse(fixture("stream_cut.sse")))
        .mount(&server)
        .await;
    let mut received = String::new();
    let err = client(&server)
        .generate_stream(request(), &mut |p| received.push_str(p))
        .await
        .unwrap_err();
    assert_eq!(received, "Employees may claim a per diem");
    assert!(err.kind() == ErrorKind::Unavailable, "{err:?}");
    assert!(
        err.to_string()
            .contains("ended before the answer was finished"),
        "{err}"
    );
}

#[tokio::test]
async fn an_error_event_midstream_is_reported_with_its_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse(fixture("stream_error.sse")))
        .mount(&server)
        .await;
    let err = client(&server)
        .generate_stream(request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CUDA out of memory"), "{err}");
}

#[tokio::test]
async fn an_error_body_becomes_an_invalid_input_error_without_retries() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400).set_body_raw(fixture("error_400.json"), "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server).generate(request()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::InvalidInput, "{err:?}");
    assert!(
        err.to_string()
            .contains("maximum context length is 4096 tokens"),
        "{err}"
    );
}

#[tokio::test]
async fn busy_and_unavailable_answers_are_retried_with_backoff() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("loading model"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(fixture("completion_ok.json"), "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let generation = client(&server).generate(request()).await.unwrap();
    assert_eq!(generation.text, ANSWER);
}

#[tokio::test]
async fn retries_give_up_with_a_busy_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429).set_body_string(r#"{"error":{"message":"rate limited"}}"#),
        )
        .expect(4)
        .mount(&server)
        .await;
    let err = client(&server).generate(request()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Busy, "{err:?}");
    assert!(err.to_string().contains("rate limited"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "qwen");
    config.max_retries = 1;
    config.initial_backoff = Duration::from_millis(1);
    let err = OpenAiGenerator::new(config)
        .unwrap()
        .generate(request())
        .await
        .unwrap_err();
    assert!(err.kind() == ErrorKind::Unavailable, "{err:?}");
    assert!(err.to_string().contains("cannot be reached"), "{err}");
}

#[test]
fn a_url_without_a_scheme_is_refused() {
    let err = OpenAiGenerator::new(OpenAiConfig::new("vllm:8000/v1", "qwen"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("must start with http://"), "{err}");
}

#[tokio::test]
async fn check_asks_the_server_for_its_models() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "object": "list",
            "data": [{"id": "other-model", "object": "model"}]
        })))
        .mount(&server)
        .await;
    let err = client(&server).check().await.unwrap_err();
    assert!(err.to_string().contains("does not serve \"qwen\""), "{err}");
    let mut config = OpenAiConfig::new(format!("{}/v1", server.uri()), "other-model");
    config.timeout = Duration::from_secs(5);
    OpenAiGenerator::new(config).unwrap().check().await.unwrap();
}

#[test]
fn the_api_key_is_not_in_debug_output() {
    let mut config = OpenAiConfig::new("http://vllm:8000/v1", "qwen");
    config.api_key = Some("sk-very-secret".into());
    let printed = format!("{config:?}");
    assert!(
        !printed.contains("sk-very-secret") && printed.contains("(set)"),
        "{printed}"
    );
}
