//! The thread that owns a batched model and the decoding of each request.
//!
//! Requests arrive on a channel. Before each decoding step the thread takes
//! one waiting request (while the batch has fewer than `max_batch`
//! sequences), prefills it and adds it to the running batch; the step then
//! decodes one token of every sequence in one pass, and a sequence leaves
//! the batch as soon as it ends. A request never waits for another to
//! finish, and one prefill at a time keeps the running answers going
//! while a queue of long prompts is admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use rag_core::{FinishReason, Generation, GenerationRequest};
use tokenizers::Tokenizer;

use crate::batched::{Batch, Decoder, Prefilled};

/// How many recent tokens the repetition penalty looks at.
const REPEAT_LAST_N: usize = 64;

/// What decoding needs of the tokenizer.
pub(crate) struct Vocab {
    pub tokenizer: Tokenizer,
    pub stop_ids: Vec<u32>,
}

/// One request for the engine.
pub(crate) struct Job {
    pub request: GenerationRequest,
    pub prompt_ids: Vec<u32>,
    /// Settled text as it is decoded; closed by the caller when nobody
    /// listens any more.
    pub pieces: tokio::sync::mpsc::UnboundedSender<String>,
    pub done: tokio::sync::oneshot::Sender<anyhow::Result<Generation>>,
}

/// Counters of how the engine batched its work.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Decoding steps run.
    pub steps: AtomicU64,
    /// Tokens those steps decoded (the sum of their batch sizes).
    pub tokens: AtomicU64,
    /// The largest batch a step ran.
    pub widest: AtomicUsize,
    /// Prompt tokens run through the model.
    pub prefilled: AtomicU64,
    /// Prompt tokens whose keys and values came from the prompt before
    /// (the system prompt and instructions every answer shares).
    pub reused: AtomicU64,
}

impl BatchStats {
    /// Steps, tokens and the widest batch, read together.
    pub fn snapshot(&self) -> (u64, u64, usize) {
        (
            self.steps.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
            self.widest.load(Ordering::Relaxed),
        )
    }
}

/// The decoding state of one request: sampling, stop sequences, and the
/// text held back until it is settled.
pub(crate) struct Sequence {
    request: GenerationRequest,
    prompt_tokens: usize,
    sampler: LogitsProcessor,
    /// Prompt and generated tokens, for the repetition penalty.
    tokens: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    sent: usize,
    hold_back: usize,
    finish: FinishReason,
}

impl Sequence {
    pub fn new(request: GenerationRequest, prompt_ids: Vec<u32>) -> Self {
        let sampling = if request.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match request.top_p {
                Some(p) => Sampling::TopP {
                    p,
                    temperature: request.temperature,
                },
                None => Sampling::All {
                    temperature: request.temperature,
                },
            }
        };
        let hold_back = request
            .stop
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        Self {
            sampler: LogitsProcessor::from_sampling(request.seed, sampling),
            prompt_tokens: prompt_ids.len(),
            tokens: prompt_ids,
            generated: Vec::new(),
            text: String::new(),
            sent: 0,
            hold_back,
            finish: FinishReason::Length,
            request,
        }
    }

    /// Whether the request asks for no token at all.
    pub fn is_empty(&self) -> bool {
        self.request.max_tokens == 0
    }

    /// Takes the logits for the next token (`(vocab,)`): picks it, sends
    /// the text it settles to `sink`, and returns it when decoding goes
    /// on, or `None` when the sequence ended (a stop token or sequence,
    /// `max_tokens`, or a sink that returned false).
    pub fn step(
        &mut self,
        logits: &Tensor,
        vocab: &Vocab,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<Option<u32>> {
        let logits = if self.request.repeat_penalty == 1.0 {
            logits.clone()
        } else {
            let start = self.tokens.len().saturating_sub(REPEAT_LAST_N);
            candle_transformers::utils::apply_repeat_penalty(
                logits,
                self.request.repeat_penalty,
                &self.tokens[start..],
            )?
        };
        let next = self.sampler.sample(&logits)?;
        if !self.request.ignore_eos && vocab.stop_ids.contains(&next) {
            self.finish = FinishReason::Stop;
            return Ok(None);
        }
        self.tokens.push(next);
        self.generated.push(next);
        self.text = vocab
            .tokenizer
            .decode(&self.generated, true)
            .map_err(anyhow::Error::msg)?;
        if let Some(cut) = self
            .request
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            self.finish = FinishReason::Stop;
            return Ok(None);
        }
        let mut end = self.text.len().saturating_sub(self.hold_back);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        if self.text[..end].ends_with(char::REPLACEMENT_CHARACTER) {
            end -= char::REPLACEMENT_CHARACTER.len_utf8();
        }
        if end > self.sent && self.text.is_char_boundary(self.sent) {
            let listening = sink(&self.text[self.sent..end]);
            self.sent = end;
            if !listening {
                return Ok(None);
            }
        }
        if self.generated.len() >= self.request.max_tokens {
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Sends what was held back and returns the outcome.
    pub fn finish(self, sink: &mut dyn FnMut(&str) -> bool) -> Generation {
        if self.text.len() > self.sent && self.text.is_char_boundary(self.sent) {
            sink(&self.text[self.sent..]);
        }
        Generation {
            text: self.text.trim().to_string(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated.len(),
            finish_reason: self.finish,
        }
    }
}

/// A request being decoded by the engine.
struct Active {
    seq: Sequence,
    /// The token it feeds to the next step.
    next: u32,
    pieces: tokio::sync::mpsc::UnboundedSender<String>,
    done: tokio::sync::oneshot::Sender<anyhow::Result<Generation>>,
}

impl Active {
    fn step(&mut self, logits: &Tensor, vocab: &Vocab) -> anyhow::Result<Option<u32>> {
        let pieces = &self.pieces;
        self.seq
            .step(logits, vocab, &mut |p| pieces.send(p.to_string()).is_ok())
    }

    fn end(self, outcome: anyhow::Result<()>) {
        let pieces = self.pieces;
        let result = outcome.map(|()| self.seq.finish(&mut |p| pieces.send(p.to_string()).is_ok()));
        // The caller may have gone: nobody to tell.
        let _ = self.done.send(result);
    }
}

/// Starts the engine's thread; it ends when every sender of the returned
/// channel is dropped.
pub(crate) fn start(
    decoder: Decoder,
    vocab: Arc<Vocab>,
    settings: Arc<Settings>,
    stats: Arc<BatchStats>,
) -> anyhow::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("rag-inference".into())
        .spawn(move || run(&decoder, &vocab, &rx, &settings, &stats))?;
    Ok(tx)
}

/// What the generator can change while the engine runs.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Sequences decoded together at most.
    pub max_batch: AtomicUsize,
    /// Whether a prompt starts from the keys and values of the prompt
    /// before where they share their first tokens.
    pub prefix_cache: AtomicBool,
}

/// With the prefix cache on, prompts are prefilled in chunks of this many
/// tokens at fixed positions, and start from the cache at a chunk's end
/// (see [`Decoder::prefill_chunked`]): an answer is then the same to the
/// bit whether its prompt's start was cached or not.
pub(crate) const CHUNK: usize = 64;

/// The last prompt prefilled, and its keys and values.
struct PrefixCache {
    ids: Vec<u32>,
    kv: Prefilled,
}

/// Tokens of `ids` that can start from a cache of `cached`: the shared
/// prefix, short of the whole prompt (its last token runs through the model
/// for the logits), down to a whole number of [`CHUNK`]s.
fn reusable(cached: &[u32], ids: &[u32]) -> usize {
    let shared = cached.iter().zip(ids).take_while(|(a, b)| a == b).count();
    let shared = shared.min(ids.len().saturating_sub(1));
    shared / CHUNK * CHUNK
}

fn run(
    decoder: &Decoder,
    vocab: &Vocab,
    jobs: &std::sync::mpsc::Receiver<Job>,
    settings: &Settings,
    stats: &BatchStats,
) {
    let mut active: Vec<Active> = Vec::new();
    let mut batch = Batch::default();
    let mut cache: Option<PrefixCache> = None;
    let max_batch = &settings.max_batch;
    loop {
        // Admit one waiting request; block only when there is nothing to do.
        let incoming = if active.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else if active.len() < max_batch.load(Ordering::Relaxed).max(1) {
            jobs.try_recv().ok()
        } else {
            None
        };
        if let Some(job) = incoming {
            let mut admitted = Active {
                seq: Sequence::new(job.request, job.prompt_ids),
                next: 0,
                pieces: job.pieces,
                done: job.done,
            };
            if admitted.seq.is_empty() {
                admitted.end(Ok(()));
                continue;
            }
            let ids = &admitted.seq.tokens;
            let caching = settings.prefix_cache.load(Ordering::Relaxed);
            if !caching {
                cache = None;
            }
            let cached = cache
                .as_ref()
                .map(|c| (c, reusable(&c.ids, ids)))
                .filter(|&(_, reused)| reused > 0);
            let reused = cached.map_or(0, |(_, r)| r);
            let prefilled = if caching {
                decoder.prefill_chunked(cached.map(|(c, r)| (&c.kv, r)), ids, CHUNK)
            } else {
                decoder.prefill(ids)
            };
            if let Ok((_, kv)) = &prefilled {
                stats.reused.fetch_add(reused as u64, Ordering::Relaxed);
                stats
                    .prefilled
                    .fetch_add((ids.len() - reused) as u64, Ordering::Relaxed);
                if caching {
                    cache = Some(PrefixCache {
                        ids: ids.clone(),
                        kv: kv.clone(),
                    });
                }
            }
            let first = prefilled
                .map_err(anyhow::Error::from)
                .and_then(|(logits, kv)| {
                    let token = admitted.step(&logits, vocab)?;
                    if token.is_some() {
                        batch.push(kv)?;
                    }
                    Ok(token)
                });
            match first {
                Ok(Some(token)) => {
                    admitted.next = token;
                    active.push(admitted);
                }
                Ok(None) => admitted.end(Ok(())),
                Err(e) => admitted.end(Err(e)),
            }
        }
        if active.is_empty() {
            continue;
        }
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats
            .tokens
            .fetch_add(active.len() as u64, Ordering::Relaxed);
        stats.widest.fetch_max(active.len(), Ordering::Relaxed);
        let tokens: Vec<u32> = active.iter().map(|a| a.next).collect();
        let outcome = decoder
            .decode(&tokens, &mut batch)
            .map_err(anyhow::Error::from)
            .and_then(|logits| {
                // Per row: `None` while it goes on, else how it ended.
                let mut ended: Vec<Option<anyhow::Result<()>>> = Vec::with_capacity(active.len());
                for (row, entry) in active.iter_mut().enumerate() {
                    ended.push(match entry.step(&logits.get(row)?, vocab) {
                        Ok(Some(token)) => {
                            entry.next = token;
                            None
                        }
                        Ok(None) => Some(Ok(())),
                        Err(e) => Some(Err(e)),
                    });
                }
                let keep: Vec<usize> = (0..ended.len()).filter(|&r| ended[r].is_none()).collect();
                batch.keep(&keep)?;
                Ok(ended)
            });
        match outcome {
            Ok(ended) => {
                for (entry, outcome) in std::mem::take(&mut active).into_iter().zip(ended) {
                    match outcome {
                        Some(result) => entry.end(result),
                        None => active.push(entry),
                    }
                }
            }
            Err(e) => {
                // The batch's state is unknown: every request in it fails.
                let message = format!("{e:#}");
                for entry in active.drain(..) {
                    entry.end(Err(anyhow::anyhow!("{message}")));
                }
                batch = Batch::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt starts from the cache for the whole chunks it shares with
    /// the cached one, never for its own last token (which must run for
    /// the logits), and not at all for less than a chunk.
    #[test]
    fn prompts_reuse_only_the_whole_chunks_of_their_shared_start() {
        let cached: Vec<u32> = (0..4 * CHUNK as u32).collect();
        let mut ids: Vec<u32> = (0..2 * CHUNK as u32 + 30).collect();
        ids.extend([9000, 9001]);
        assert_eq!(reusable(&cached, &ids), 2 * CHUNK);
        // The same prompt again: all its chunks but the one with its last
        // token.
        assert_eq!(reusable(&cached, &cached), 3 * CHUNK);
        // A prompt that is the cached one's start.
        assert_eq!(reusable(&cached, &cached[..CHUNK + 1]), CHUNK);
        assert_eq!(reusable(&cached, &cached[..CHUNK]), 0);
        // Less than a chunk shared: prefilled whole.
        let mut short: Vec<u32> = (0..CHUNK as u32 - 1).collect();
        short.extend([7; 100]);
        assert_eq!(reusable(&cached, &short), 0);
        // Different from the first token.
        assert_eq!(reusable(&cached, &[5; 400]), 0);
        assert_eq!(reusable(&[], &cached), 0);
    }
}
