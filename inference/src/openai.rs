//! Any server that speaks OpenAI's chat completions API: vLLM, TGI,
//! Ollama's `/v1`, llama.cpp's server, or another `rag serve`.
//!
//! One client for all of them: the request uses only the common fields
//! (plus `repetition_penalty`, which vLLM, TGI and llama.cpp read and the
//! others ignore). Streaming reads Server-Sent Events by hand: the format is
//! a few lines of `data: {json}` and an SSE crate would add a dependency for
//! less than this file's parser.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use rag_core::{Error, FinishReason, Generation, GenerationRequest, Generator, Result, TextSink};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Where the server is and how patient to be with it. `Debug` leaves the
/// API key out.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL up to and including `/v1`, e.g. `http://vllm:8000/v1`.
    pub base_url: String,
    /// The model name the server knows.
    pub model: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// The served model's context window (prompt and answer), for budgeting.
    pub context_window: usize,
    /// Longest wait for the response to start, for a whole non-streamed
    /// answer, and between two pieces of a stream.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries on 429, 502, 503, 504 and connection failures, with
    /// exponential backoff (or the server's `Retry-After`).
    pub max_retries: u32,
    pub initial_backoff: Duration,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("context_window", &self.context_window)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            context_window: 4096,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            initial_backoff: Duration::from_millis(250),
        }
    }
}

/// A generator backed by an OpenAI-compatible server.
#[derive(Clone)]
pub struct OpenAiGenerator {
    config: OpenAiConfig,
    client: reqwest::Client,
    url: String,
}

impl OpenAiGenerator {
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(format!(
                "generator URL {base:?} must start with http:// or https://"
            )));
        }
        let url = format!("{base}/chat/completions");
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::internal("building the HTTP client").with_source(e))?;
        Ok(Self {
            config,
            client,
            url,
        })
    }

    fn body(&self, request: &GenerationRequest, stream: bool) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
            "stream": stream,
        });
        if let Some(p) = request.top_p {
            body["top_p"] = json!(p);
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        if request.repeat_penalty != 1.0 {
            body["repetition_penalty"] = json!(request.repeat_penalty);
        }
        if request.ignore_eos {
            // vLLM's and TGI's name; others ignore it.
            body["ignore_eos"] = json!(true);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// Posts `body`, retrying what may succeed later; returns a response
    /// with a success status or the error the caller can act on.
    async fn send(&self, body: &Value) -> Result<reqwest::Response> {
        let mut attempt = 0;
        loop {
            let mut builder = self.client.post(&self.url).json(body);
            if let Some(key) = &self.config.api_key {
                builder = builder.bearer_auth(key);
            }
            let outcome = tokio::time::timeout(self.config.timeout, builder.send()).await;
            let (error, retry_after) = match outcome {
                Ok(Ok(response)) if response.status().is_success() => return Ok(response),
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let message = error_message(&response.text().await.unwrap_or_default());
                    let error = self.status_error(status, &message);
                    if !retryable(status) {
                        return Err(error);
                    }
                    (error, retry_after)
                }
                Ok(Err(e)) => (
                    Error::unavailable(format!(
                        "the model server at {} cannot be reached",
                        self.url
                    ))
                    .with_source(e),
                    None,
                ),
                Err(_) => (
                    Error::unavailable(format!(
                        "the model server at {} did not answer within {} s",
                        self.url,
                        self.config.timeout.as_secs()
                    )),
                    None,
                ),
            };
            if attempt >= self.config.max_retries {
                return Err(error);
            }
            let backoff = self.config.initial_backoff * 2u32.pow(attempt);
            let wait = retry_after.map_or(backoff, |r| r.min(Duration::from_secs(30)));
            tracing::warn!(attempt, ?wait, "model server: {error}; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn status_error(&self, status: StatusCode, message: &str) -> Error {
        let what = format!("the model server answered {status}: {message}");
        match status.as_u16() {
            400 | 413 | 422 => Error::invalid(format!("{what} (the request was rejected)")),
            401 | 403 => Error::unavailable(format!(
                "{what}; check the generator's API key (generator.api_key)"
            )),
            404 => Error::unavailable(format!(
                "{what}; check the generator URL ({}) and model name ({:?})",
                self.url, self.config.model
            )),
            429 => Error::busy(what),
            _ => Error::unavailable(what),
        }
    }

    async fn complete(&self, request: &GenerationRequest) -> Result<Generation> {
        let response = self.send(&self.body(request, false)).await?;
        let body: Value = tokio::time::timeout(self.config.timeout, response.json())
            .await
            .map_err(|_| Error::unavailable("the model server stopped sending its answer"))?
            .map_err(|e| {
                Error::unavailable("the model server's answer is not JSON").with_source(e)
            })?;
        let choice = &body["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                Error::unavailable(format!(
                    "the model server's answer has no choices[0].message.content: {body}"
                ))
            })?
            .to_string();
        let (prompt_tokens, completion_tokens) = self.usage(&body["usage"], request, &text);
        Ok(Generation {
            text: text.trim().to_string(),
            prompt_tokens,
            completion_tokens,
            finish_reason: finish_reason(&choice["finish_reason"]),
        })
    }

    /// Token counts from the server's `usage`, estimated when it has none.
    fn usage(&self, usage: &Value, request: &GenerationRequest, text: &str) -> (usize, usize) {
        let count = |key: &str| usage[key].as_u64().map(|n| n as usize);
        (
            count("prompt_tokens").unwrap_or_else(|| {
                self.count_prompt_tokens(&request.messages)
                    .unwrap_or_default()
            }),
            count("completion_tokens").unwrap_or(text.len().div_ceil(4)),
        )
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// The message of an error body: OpenAI's `{error: {message}}`, TGI's and
/// vLLM's `{message}` / `{error: "..."}`, or the text itself.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .or_else(|| v["message"].as_str())
            .or_else(|| v["detail"].as_str())
            .map(str::to_string)
    });
    message.unwrap_or_else(|| {
        let text = body.trim();
        if text.is_empty() {
            "(no message)".to_string()
        } else {
            text.chars().take(500).collect()
        }
    })
}

fn finish_reason(value: &Value) -> FinishReason {
    match value.as_str() {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[async_trait]
impl Generator for OpenAiGenerator {
    fn model_id(&self) -> &str {
        &self.config.model
    }

    fn context_window(&self) -> usize {
        self.config.context_window
    }

    async fn generate(&self, request: GenerationRequest) -> Result<Generation> {
        self.complete(&request).await
    }

    /// `GET /models` answers and lists the configured model.
    async fn check(&self) -> Result<()> {
        let url = format!("{}/models", self.config.base_url.trim_end_matches('/'));
        let mut builder = self
            .client
            .get(&url)
            .timeout(self.config.connect_timeout * 2);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.map_err(|e| {
            Error::unavailable(format!("the model server at {url} cannot be reached"))
                .with_source(e)
        })?;
        let status = response.status();
        if !status.is_success() {
            let message = error_message(&response.text().await.unwrap_or_default());
            return Err(self.status_error(status, &message));
        }
        let body: Value = response.json().await.unwrap_or_default();
        let served: Vec<&str> = body["data"]
            .as_array()
            .map(|models| models.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        if !served.contains(&self.config.model.as_str()) {
            return Err(Error::unavailable(format!(
                "the model server at {url} does not serve {:?}; it serves: {}",
                self.config.model,
                served.join(", ")
            )));
        }
        Ok(())
    }

    async fn generate_stream(
        &self,
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Generation> {
        let response = self.send(&self.body(&request, true)).await?;
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut text = String::new();
        let mut finish = None;
        let mut usage = Value::Null;
        let mut done = false;
        while !done {
            let next = tokio::time::timeout(self.config.timeout, stream.next())
                .await
                .map_err(|_| {
                    Error::unavailable(format!(
                        "the model server's stream stalled for {} s",
                        self.config.timeout.as_secs()
                    ))
                })?;
            let Some(bytes) = next else { break };
            let bytes = bytes.map_err(|e| {
                Error::unavailable("the model server's stream broke").with_source(e)
            })?;
            buffer.extend_from_slice(&bytes);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue; // blank separators, comments, `event:` lines
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let chunk: Value = serde_json::from_str(data).map_err(|e| {
                    Error::unavailable("the model server sent a malformed event").with_source(e)
                })?;
                if !chunk["error"].is_null() {
                    return Err(Error::unavailable(format!(
                        "the model server failed mid-answer: {}",
                        error_message(data)
                    )));
                }
                let choice = &chunk["choices"][0];
                if let Some(piece) = choice["delta"]["content"].as_str()
                    && !piece.is_empty()
                {
                    text.push_str(piece);
                    sink(piece);
                }
                if !choice["finish_reason"].is_null() {
                    finish = Some(finish_reason(&choice["finish_reason"]));
                }
                if !chunk["usage"].is_null() {
                    usage = chunk["usage"].clone();
                }
            }
        }
        let finish = match (finish, done) {
            (Some(finish), _) => finish,
            (None, true) => FinishReason::Stop,
            (None, false) => {
                return Err(Error::unavailable(format!(
                    "the model server's stream ended before the answer was finished ({} characters in)",
                    text.len()
                )));
            }
        };
        let (prompt_tokens, completion_tokens) = self.usage(&usage, &request, &text);
        Ok(Generation {
            text: text.trim().to_string(),
            prompt_tokens,
            completion_tokens,
            finish_reason: finish,
        })
    }
}
