//! Fakes of the traits, for the unit tests of the crates built on them.
//! Deterministic and free of models: a [`FakeGenerator`] replies what its
//! test tells it and counts one token per word.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::{
    ChatMessage, FinishReason, Generation, GenerationRequest, Generator, Result, TextSink,
};

type Reply = Box<dyn Fn(&GenerationRequest) -> String + Send + Sync>;

/// A generator that answers with a function of the request, and remembers
/// every request it was given.
pub struct FakeGenerator {
    context_window: usize,
    reply: Reply,
    requests: Mutex<Vec<GenerationRequest>>,
    counted: AtomicUsize,
}

impl FakeGenerator {
    /// Always replies `text`.
    pub fn replying(text: impl Into<String>) -> Self {
        let text = text.into();
        Self::with(move |_| text.clone())
    }

    /// Replies what `reply` makes of each request.
    pub fn with(reply: impl Fn(&GenerationRequest) -> String + Send + Sync + 'static) -> Self {
        Self {
            context_window: 4096,
            reply: Box::new(reply),
            requests: Mutex::default(),
            counted: AtomicUsize::new(0),
        }
    }

    pub fn context(mut self, tokens: usize) -> Self {
        self.context_window = tokens;
        self
    }

    /// The requests generated from, in order.
    pub fn requests(&self) -> Vec<GenerationRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Calls to [`Generator::count_tokens`] and
    /// [`Generator::count_prompt_tokens`] so far.
    pub fn token_counts(&self) -> usize {
        self.counted.load(Ordering::Relaxed)
    }

    /// Tokens of a prompt: its words, and 4 per message for the template.
    pub fn tokens_of(messages: &[ChatMessage]) -> usize {
        messages
            .iter()
            .map(|m| m.content.split_whitespace().count() + 4)
            .sum()
    }
}

#[async_trait]
impl Generator for FakeGenerator {
    fn model_id(&self) -> &str {
        "fake"
    }

    fn context_window(&self) -> usize {
        self.context_window
    }

    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize> {
        self.counted.fetch_add(1, Ordering::Relaxed);
        Ok(Self::tokens_of(messages))
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.counted.fetch_add(1, Ordering::Relaxed);
        Ok(text.split_whitespace().count())
    }

    async fn generate_stream(
        &self,
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Generation> {
        let text = (self.reply)(&request);
        for piece in text.split_inclusive(' ') {
            sink(piece);
        }
        let generation = Generation {
            prompt_tokens: Self::tokens_of(&request.messages),
            completion_tokens: text.split_whitespace().count(),
            text,
            finish_reason: FinishReason::Stop,
        };
        self.requests.lock().unwrap().push(request);
        Ok(generation)
    }
}

/// An embedder without a model: each word is hashed to one of
/// `dimension` axes, and the counts normalised. Texts sharing words are
/// near; texts sharing none are orthogonal.
pub struct FakeEmbedder {
    pub dimension: usize,
}

impl Default for FakeEmbedder {
    fn default() -> Self {
        Self { dimension: 64 }
    }
}

impl crate::Embedder for FakeEmbedder {
    fn model_id(&self) -> &str {
        "fake-embedder"
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|text| {
                let mut v = vec![0.0f32; self.dimension];
                for word in text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                {
                    // FNV-1a: stable across runs and platforms.
                    let hash = word
                        .to_lowercase()
                        .bytes()
                        .fold(0xcbf29ce484222325u64, |h, b| {
                            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
                        });
                    v[(hash % self.dimension as u64) as usize] += 1.0;
                }
                let norm = v
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
                    .sqrt()
                    .max(f32::EPSILON);
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect())
    }
}
