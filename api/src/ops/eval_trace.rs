//! `rag eval answers --record` and `--replay`: each question's retrieval,
//! the prompts the model was given and what it wrote, kept so that the
//! answer policy (admission, packing, checks, quoting, abstention) can run
//! again over them in seconds, without the model.
//!
//! A replay puts [`Replayer`] where the model was: it answers a prompt
//! with the text recorded for that exact prompt, and counts tokens as the
//! recording did. Greedy decoding makes that what the model would write
//! again. When the policy builds a prompt that was not recorded (it packs
//! other passages, or words the prompt otherwise), the replay of that
//! question is void ([`Replayer::missed`]) and the question is asked of
//! the model afresh. So is one whose sampling changed (`max_tokens`,
//! `stop`, ...).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rag_core::{
    ChatMessage, Error, FinishReason, Generation, GenerationRequest, Generator, Hit, Result,
    TextSink,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One question as it was answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub id: String,
    /// The question asked (a follow-up made standalone).
    pub asked: String,
    /// The top 10 retrieved (where the gold rank is measured).
    pub hits: Vec<Hit>,
    /// The hits the answer was made from.
    pub answer_hits: Vec<Hit>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub context_window: usize,
    /// Token counts taken while the prompt was packed, by the sha256 of
    /// what was counted.
    #[serde(default)]
    pub token_counts: BTreeMap<String, usize>,
    /// Each call of the model.
    #[serde(default)]
    pub generations: Vec<Recorded>,
    pub retrieval_ms: u64,
    pub generation_ms: u64,
    pub total_ms: u64,
}

/// A request (its prompt and sampling) and what the model wrote for it
/// (the streamed pieces, joined).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub request: GenerationRequest,
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the recorder saw of the model.
#[derive(Default)]
struct Log {
    token_counts: BTreeMap<String, usize>,
    generations: Vec<Recorded>,
}

fn text_key(text: &str) -> String {
    hex::encode(Sha256::digest(format!("text\0{text}")))
}

fn prompt_key(messages: &[ChatMessage]) -> String {
    let json = serde_json::to_string(messages).expect("messages serialize");
    hex::encode(Sha256::digest(format!("prompt\0{json}")))
}

/// A generation's key: its prompt and every sampling setting.
fn request_key(request: &GenerationRequest) -> String {
    let json = serde_json::to_string(request).expect("requests serialize");
    hex::encode(Sha256::digest(format!("request\0{json}")))
}

/// The model, with every prompt, completion and token count it gives
/// written down.
pub struct Recorder {
    inner: Arc<dyn Generator>,
    log: Mutex<Log>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn Generator>) -> Self {
        Self {
            inner,
            log: Mutex::default(),
        }
    }

    /// The calls so far: (token counts, generations).
    pub fn take(&self) -> (BTreeMap<String, usize>, Vec<Recorded>) {
        let mut log = self.log.lock().expect("not poisoned");
        (
            std::mem::take(&mut log.token_counts),
            std::mem::take(&mut log.generations),
        )
    }
}

#[async_trait]
impl Generator for Recorder {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn context_window(&self) -> usize {
        self.inner.context_window()
    }

    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize> {
        let n = self.inner.count_prompt_tokens(messages)?;
        let mut log = self.log.lock().expect("not poisoned");
        log.token_counts.insert(prompt_key(messages), n);
        Ok(n)
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        let n = self.inner.count_tokens(text)?;
        let mut log = self.log.lock().expect("not poisoned");
        log.token_counts.insert(text_key(text), n);
        Ok(n)
    }

    async fn generate_stream(
        &self,
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Generation> {
        let recorded = request.clone();
        let mut text = String::new();
        let generation = self
            .inner
            .generate_stream(request, &mut |piece| {
                text.push_str(piece);
                sink(piece);
            })
            .await?;
        self.log
            .lock()
            .expect("not poisoned")
            .generations
            .push(Recorded {
                request: recorded,
                text,
                prompt_tokens: generation.prompt_tokens,
                completion_tokens: generation.completion_tokens,
            });
        Ok(generation)
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

/// The model as a [`Trace`] recorded it: the recorded text for a recorded
/// request, the recorded count for a recorded text. Anything else is a
/// miss: an error, and the replay of that question is void.
pub struct Replayer {
    model: String,
    context_window: usize,
    token_counts: BTreeMap<String, usize>,
    generations: BTreeMap<String, Recorded>,
    missed: Mutex<Option<String>>,
}

impl Replayer {
    pub fn new(trace: &Trace) -> Self {
        Self {
            model: trace.model.clone(),
            context_window: trace.context_window,
            token_counts: trace.token_counts.clone(),
            generations: trace
                .generations
                .iter()
                .map(|g| (request_key(&g.request), g.clone()))
                .collect(),
            missed: Mutex::default(),
        }
    }

    /// Why the replay did not hold, if it did not: the first thing asked
    /// that the recording does not have.
    pub fn missed(&self) -> Option<String> {
        self.missed.lock().expect("not poisoned").clone()
    }

    /// The count recorded under `key`, or a miss.
    fn count(&self, key: &str, what: &str) -> Result<usize> {
        self.token_counts.get(key).copied().ok_or_else(|| {
            self.miss(what.to_string());
            Error::unavailable(format!("{what} is not in the recording"))
        })
    }

    fn miss(&self, what: String) {
        self.missed
            .lock()
            .expect("not poisoned")
            .get_or_insert(what);
    }
}

#[async_trait]
impl Generator for Replayer {
    fn model_id(&self) -> &str {
        &self.model
    }

    fn context_window(&self) -> usize {
        self.context_window
    }

    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize> {
        self.count(&prompt_key(messages), "a prompt's token count")
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.count(&text_key(text), "a passage's token count")
    }

    async fn generate_stream(
        &self,
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Generation> {
        let Some(recorded) = self.generations.get(&request_key(&request)) else {
            self.miss("the prompt or its sampling".into());
            return Err(Error::unavailable(
                "the prompt or its sampling differs from the recorded one: the question is asked \
                 afresh",
            ));
        };
        // Piece by piece, as the model streamed it (the checker holds each
        // sentence until it ends, so the split does not change the answer).
        for piece in recorded.text.split_inclusive(' ') {
            sink(piece);
        }
        Ok(Generation {
            text: recorded.text.trim().to_string(),
            prompt_tokens: recorded.prompt_tokens,
            completion_tokens: recorded.completion_tokens,
            finish_reason: FinishReason::Stop,
        })
    }
}

/// The traces of a run's `traces.jsonl`, by question id (the last line of
/// a question wins).
pub fn read(path: &Path) -> anyhow::Result<BTreeMap<String, Trace>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (record one with --record)", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let trace: Trace = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
        out.insert(trace.id.clone(), trace);
    }
    Ok(out)
}

/// Appends `trace` to `path`, one JSON line.
pub fn append(path: &Path, trace: &Trace) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{}", serde_json::to_string(trace)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rag_core::Role;

    use super::*;

    /// A model that writes a fixed text and counts a token per byte.
    struct Fixed(&'static str);

    #[async_trait]
    impl Generator for Fixed {
        fn model_id(&self) -> &str {
            "fixed"
        }

        fn context_window(&self) -> usize {
            4096
        }

        fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize> {
            Ok(messages.iter().map(|m| m.content.len()).sum())
        }

        fn count_tokens(&self, text: &str) -> Result<usize> {
            Ok(text.len())
        }

        async fn generate_stream(
            &self,
            _request: GenerationRequest,
            sink: TextSink<'_>,
        ) -> Result<Generation> {
            sink(self.0);
            Ok(Generation {
                text: self.0.trim().into(),
                prompt_tokens: 11,
                completion_tokens: 3,
                finish_reason: FinishReason::Stop,
            })
        }
    }

    fn request(question: &str) -> GenerationRequest {
        GenerationRequest::greedy(vec![ChatMessage::new(Role::User, question)], 8)
    }

    /// What was recorded comes back for the same prompt and counts; another
    /// prompt or text is a miss, never another prompt's answer.
    #[tokio::test]
    async fn a_replay_gives_back_what_was_recorded_and_misses_the_rest() {
        let recorder = Recorder::new(Arc::new(Fixed(" 28 days. [1] ")));
        assert_eq!(recorder.count_tokens("a passage").unwrap(), 9);
        let prompt = request("How many days?");
        assert_eq!(recorder.count_prompt_tokens(&prompt.messages).unwrap(), 14);
        let mut streamed = String::new();
        recorder
            .generate_stream(prompt.clone(), &mut |p| streamed.push_str(p))
            .await
            .unwrap();
        let (token_counts, generations) = recorder.take();
        let trace = Trace {
            id: "q".into(),
            asked: "How many days?".into(),
            hits: vec![],
            answer_hits: vec![],
            model: "fixed".into(),
            context_window: 4096,
            token_counts,
            generations,
            retrieval_ms: 1,
            generation_ms: 2,
            total_ms: 3,
        };
        // Through JSON, as the file keeps it.
        let trace: Trace = serde_json::from_str(&serde_json::to_string(&trace).unwrap()).unwrap();

        let replayer = Replayer::new(&trace);
        assert_eq!(replayer.count_tokens("a passage").unwrap(), 9);
        assert_eq!(replayer.count_prompt_tokens(&prompt.messages).unwrap(), 14);
        let mut replayed = String::new();
        let generation = replayer
            .generate_stream(prompt, &mut |p| replayed.push_str(p))
            .await
            .unwrap();
        assert_eq!(replayed, streamed);
        assert_eq!(generation.text, "28 days. [1]");
        assert_eq!(
            (generation.prompt_tokens, generation.completion_tokens),
            (11, 3)
        );
        assert_eq!(replayer.missed(), None);

        assert!(replayer.count_tokens("another passage").is_err());
        assert!(replayer.missed().is_some());
        let replayer = Replayer::new(&trace);
        let other = replayer
            .generate_stream(request("How many weeks?"), &mut |_| {})
            .await;
        assert!(other.is_err());
        assert_eq!(
            replayer.missed().as_deref(),
            Some("the prompt or its sampling")
        );
        // The same prompt with other sampling is another request.
        let replayer = Replayer::new(&trace);
        let longer = GenerationRequest {
            max_tokens: 9,
            ..request("How many days?")
        };
        assert!(replayer.generate_stream(longer, &mut |_| {}).await.is_err());
        assert!(replayer.missed().is_some());
    }
}
