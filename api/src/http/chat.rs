//! `POST /v1/chat/completions`: OpenAI's chat API, answered from the
//! documents.
//!
//! Two models are served under it:
//! - `rag` (the default): the last user message is the question; the answer
//!   is grounded in retrieved passages and the response carries
//!   `citations`, `abstained` and per-stage timings in `usage`.
//! - the generator's own model id (as `GET /v1/models` lists it): the
//!   messages go to the model as they are, without retrieval. This is what
//!   another `rag serve` uses when it runs this one as its remote generator.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures_util::StreamExt;
use rag_core::{Answer, ChatMessage, Role, SearchFilter, SearchMode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, parse};
use super::{AppState, MAX_K};
use crate::app::{App, Query, Sampling};
use crate::keys::Caller;

/// The model name of grounded answers.
pub const RAG_MODEL: &str = "rag";
/// Largest `max_tokens` a request may ask for.
const MAX_TOKENS: usize = 4096;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    max_completion_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    rag: RagOptions,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct InMessage {
    role: Role,
    content: Content,
}

/// A message's content: a string, or OpenAI's list of parts of which the
/// text parts are read.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The RAG options: `"rag": {"collection", "k", "mode", "filters": {"tags"}}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RagOptions {
    collection: Option<String>,
    k: Option<usize>,
    mode: Option<SearchMode>,
    #[serde(default)]
    filters: Filters,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Filters {
    #[serde(default)]
    tags: Vec<String>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

impl ChatRequest {
    fn sampling(&self) -> Result<Sampling, ApiError> {
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(n) = max_tokens
            && (n == 0 || n > MAX_TOKENS)
        {
            return Err(bad_request(format!(
                "max_tokens must be between 1 and {MAX_TOKENS}, got {n}"
            )));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(bad_request(format!(
                "temperature must be between 0 and 2, got {t}"
            )));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(bad_request(format!(
                "top_p must be above 0 and at most 1, got {p}"
            )));
        }
        Ok(Sampling {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p.filter(|&p| p < 1.0),
            seed: self.seed,
            stop: match &self.stop {
                None => vec![],
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            }
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        })
    }

    fn query(&self, caller: &Caller) -> Result<Query, ApiError> {
        if let Some(k) = self.rag.k
            && (k == 0 || k > MAX_K)
        {
            return Err(bad_request(format!(
                "rag.k must be between 1 and {MAX_K}, got {k}"
            )));
        }
        Ok(Query {
            k: self.rag.k,
            mode: self.rag.mode,
            filter: SearchFilter {
                collection: self.rag.collection.clone(),
                tags: self.rag.filters.tags.clone(),
                groups: caller.groups.clone(),
            },
            sampling: self.sampling()?,
        })
    }
}

fn chunk_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// A new answer's id: what `POST /v1/feedback` rates it by.
pub(crate) fn answer_id() -> String {
    chunk_id()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn finish_reason(completion_tokens: usize, max_tokens: usize) -> &'static str {
    if completion_tokens >= max_tokens {
        "length"
    } else {
        "stop"
    }
}

/// `usage` of a response: OpenAI's token counts plus the per-stage costs.
fn usage_json(answer: &Answer) -> Value {
    let u = &answer.usage;
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "retrieval_ms": u.retrieval_ms,
        "generation_ms": u.generation_ms,
        "passages_used": u.passages_used,
        "passages_left_out": u.passages_left_out,
        "passages_withheld": u.passages_withheld,
        "sentences_dropped": u.sentences_dropped,
    })
}

/// The RAG fields every grounded response carries (the final chunk of a
/// stream too): the checked answer text, its citations and counts.
fn rag_fields(answer: &Answer) -> Value {
    json!({
        "answer": answer.answer,
        "abstained": answer.abstained,
        "citations": answer.citations,
        "verified_citations": answer.verified_citations,
        "removed_citations": answer.removed_citations,
    })
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "answers", request_body = ChatRequest,
    responses(
        (status = 200, description = "OpenAI's chat.completion, plus `answer`, `abstained`, `citations`, `verified_citations`, `removed_citations`, `answer_id` (for POST /v1/feedback) and per-stage `usage`; with `stream: true`, Server-Sent Events of chat.completion.chunk whose last chunk carries the same, then `[DONE]`"),
        (status = 400, description = "Bad input; the message names the field", body = super::error::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::error::ErrorBody),
        (status = 404, description = "Unknown model", body = super::error::ErrorBody),
        (status = 429, description = "Generation queue full; see Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "A backend is down; see Retry-After", body = super::error::ErrorBody)))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let app = state.app.clone();
    let req: ChatRequest = parse(&body)?;
    if req.messages.is_empty() {
        return Err(bad_request(
            "`messages` is empty: send at least the user's question",
        ));
    }
    let last = req.messages.last().expect("not empty");
    if last.role != Role::User || last.content.text().trim().is_empty() {
        return Err(bad_request(
            "the last message must be the user's question (role \"user\", non-empty content)",
        ));
    }
    let generator = app.generator().await?;
    let model = req.model.clone().unwrap_or_else(|| RAG_MODEL.into());
    let raw = if model == RAG_MODEL {
        false
    } else if model == generator.model_id() {
        true
    } else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "model {model:?} does not exist; use {RAG_MODEL:?} for answers from the documents or {:?} for the model alone (GET /v1/models)",
                generator.model_id()
            ),
        ));
    };
    // Refuse at once, before the stream starts, when the queue is full.
    let slot = app.reserve()?;
    if raw {
        let messages: Vec<ChatMessage> = req
            .messages
            .iter()
            .map(|m| ChatMessage::new(m.role, m.content.text()))
            .collect();
        let sampling = req.sampling()?;
        if req.stream {
            return Ok(stream_raw(app, slot, model, messages, sampling));
        }
        let generation = app.generate(slot, messages, &sampling, &mut |_| {}).await?;
        let (finish, usage) = generation_fields(&generation);
        return Ok(Json(json!({
            "id": chunk_id(),
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": finish,
            }],
            "usage": usage,
        }))
        .into_response());
    }

    let user_turns: Vec<String> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.text())
        .collect();
    let question = rag_answer::conversation::standalone_question(&user_turns);
    let query = req.query(&caller)?;
    let max_tokens = query
        .sampling
        .max_tokens
        .unwrap_or(app.settings.generator.max_tokens);
    if req.stream {
        return Ok(stream_answer(
            app, caller, slot, model, question, query, max_tokens,
        ));
    }
    let answer = app.ask_stream(slot, &question, &query, &mut |_| {}).await?;
    let id = answer_id();
    super::feedback::remember(&app, &caller, &id, &question, &answer).await;
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.answer},
            "finish_reason": finish_reason(answer.usage.completion_tokens, max_tokens),
        }],
        "usage": usage_json(&answer),
    });
    merge(&mut body, rag_fields(&answer));
    body["answer_id"] = id.into();
    Ok(Json(body).into_response())
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// One `chat.completion.chunk` event.
fn chunk(id: &str, created: i64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// The first chunk of a stream: the assistant's role, no text yet.
fn role_chunk(id: &str, created: i64, model: &str) -> Value {
    chunk(
        id,
        created,
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )
}

/// A chunk carrying a piece of the answer's text.
fn content_chunk(id: &str, created: i64, model: &str, text: &str) -> Value {
    chunk(id, created, model, json!({"content": text}), None)
}

/// OpenAI's `finish_reason` and `usage` of a bare generation.
fn generation_fields(generation: &rag_core::Generation) -> (&'static str, Value) {
    let finish = match generation.finish_reason {
        rag_core::FinishReason::Length => "length",
        rag_core::FinishReason::Stop => "stop",
    };
    let usage = json!({
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    });
    (finish, usage)
}

type Events = tokio::sync::mpsc::UnboundedSender<Event>;

fn send(events: &Events, value: &Value) {
    // A closed channel means the client left; the answer finishes unread.
    let _ = events.send(Event::default().data(value.to_string()));
}

fn sse_response(rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Response {
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Streams a grounded answer: a role chunk, the checked answer sentence
/// by sentence as each passes the answer policy's checks, then a final
/// chunk with `finish_reason`, `usage` and the RAG fields, then `[DONE]`.
/// What a client assembles from the content chunks is exactly `answer`
/// (and the non-streamed `content`): text the checks remove is never sent.
fn stream_answer(
    app: Arc<App>,
    caller: Arc<Caller>,
    slot: crate::app::GenerationSlot,
    model: String,
    question: String,
    query: Query,
    max_tokens: usize,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(super::error::in_this_request(async move {
        let (id, created) = (answer_id(), now());
        send(&tx, &role_chunk(&id, created, &model));
        let mut streamed = String::new();
        let result = app
            .ask_stream(slot, &question, &query, &mut |piece| {
                streamed.push_str(piece);
                send(&tx, &content_chunk(&id, created, &model, piece));
            })
            .await;
        match result {
            Ok(answer) => {
                // The policy streams every checked sentence; when nothing
                // was admitted the model was not called, and the
                // abstention goes out here.
                if streamed.is_empty() {
                    send(&tx, &content_chunk(&id, created, &model, &answer.answer));
                } else if streamed != answer.answer {
                    tracing::error!(
                        streamed,
                        answer = answer.answer,
                        "the streamed text differs from the checked answer"
                    );
                }
                super::feedback::remember(&app, &caller, &id, &question, &answer).await;
                let finish = finish_reason(answer.usage.completion_tokens, max_tokens);
                let mut last = chunk(&id, created, &model, json!({}), Some(finish));
                last["usage"] = usage_json(&answer);
                merge(&mut last, rag_fields(&answer));
                last["answer_id"] = id.clone().into();
                send(&tx, &last);
            }
            Err(e) => send(&tx, &ApiError::from(e).body()),
        }
        let _ = tx.send(Event::default().data("[DONE]"));
    }));
    sse_response(rx)
}

/// Streams the model alone, in OpenAI's chunk format.
fn stream_raw(
    app: Arc<App>,
    slot: crate::app::GenerationSlot,
    model: String,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(super::error::in_this_request(async move {
        let (id, created) = (chunk_id(), now());
        send(&tx, &role_chunk(&id, created, &model));
        let result = app
            .generate(slot, messages, &sampling, &mut |piece| {
                send(&tx, &content_chunk(&id, created, &model, piece));
            })
            .await;
        match result {
            Ok(generation) => {
                let (finish, usage) = generation_fields(&generation);
                let mut last = chunk(&id, created, &model, json!({}), Some(finish));
                last["usage"] = usage;
                send(&tx, &last);
            }
            Err(e) => send(&tx, &ApiError::from(e).body()),
        }
        let _ = tx.send(Event::default().data("[DONE]"));
    }));
    sse_response(rx)
}
