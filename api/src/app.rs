//! Wiring: opens the stores and models named by the settings, and answers
//! questions (retrieve, then generate, then check the citations).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rag_core::{
    Answer, Citation, DocumentStore, Embedder, Error, GenerationRequest, Generator, Hit, Reranker,
    SearchFilter, SearchMode, TextSink, Usage, VectorStore,
};
use rag_embed::{BertEmbedder, OrtEmbedder};
use rag_generator::{CandleGenerator, OpenAiConfig, OpenAiGenerator, grounding};
use rag_ingest::{Chunker, Ingestor};
use rag_retriever::{EmbeddingReranker, RetrieveOptions, Retriever};
use rag_store::{EdgeVectorStore, QdrantServerStore, SqlDocumentStore};

use crate::config::{EmbedderRuntime, GeneratorBackend, Settings};
use crate::models;

/// What a caller may set of one retrieval; the rest comes from the
/// settings.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub k: Option<usize>,
    pub mode: Option<SearchMode>,
    pub filter: SearchFilter,
    pub sampling: Sampling,
}

/// A request's overrides of the generator settings.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// A place in the generation queue (see [`App::reserve`]).
pub struct GenerationSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Share of an answer's words a passage must contain for an uncited
/// answer to be attributed to it.
const MIN_ATTRIBUTION: f32 = 0.5;

pub struct App {
    pub settings: Settings,
    pub embedder: Arc<dyn Embedder>,
    /// The embedder's tokenizer: chunks are sized in its tokens.
    pub tokenizer: tokenizers::Tokenizer,
    pub vectors: Arc<dyn VectorStore>,
    pub docs: Arc<dyn DocumentStore>,
    pub retriever: Retriever,
    generator: tokio::sync::OnceCell<Arc<dyn Generator>>,
    /// One permit per generation running or waiting: a full queue refuses
    /// new questions at once (429) instead of letting them pile up.
    generation_slots: Arc<tokio::sync::Semaphore>,
}

fn not_fetched(name: &str, path: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "model {name} is not installed at {}; run `rag models fetch` (models directory: $RAG_MODELS_DIR or ./models)",
        path.display()
    )
}

impl App {
    /// Opens the stores and the embedder; the generator is loaded on first use.
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        let spec = models::spec(&settings.embedder.model)?;
        if !spec.is_installed(&settings.models_dir) {
            return Err(not_fetched(spec.name, &settings.models_dir.join(spec.dir)));
        }
        let model_dir = settings.models_dir.join(spec.dir);
        let (embedder, tokenizer): (Arc<dyn Embedder>, _) = match settings.embedder.runtime {
            EmbedderRuntime::Onnx => {
                let runtime = models::spec(models::ONNX_RUNTIME)?;
                if !runtime.is_installed(&settings.models_dir) {
                    return Err(not_fetched(
                        runtime.name,
                        &runtime.path(&settings.models_dir),
                    ));
                }
                let threads = settings.embedder.threads();
                let e = OrtEmbedder::load(&model_dir, &runtime.path(&settings.models_dir), threads)
                    .with_context(|| {
                        format!("loading the embedder {} on ONNX Runtime", spec.name)
                    })?;
                let tokenizer = e.tokenizer().clone();
                (Arc::new(e), tokenizer)
            }
            EmbedderRuntime::Candle => {
                let e = BertEmbedder::load(&model_dir)
                    .with_context(|| format!("loading the embedder {} on candle", spec.name))?;
                let tokenizer = e.tokenizer().clone();
                (Arc::new(e), tokenizer)
            }
        };
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        let vectors: Arc<dyn VectorStore> = if settings.vector_store.url.is_empty() {
            Arc::new(EdgeVectorStore::open(
                &settings.data_dir.join("vectors"),
                embedder.dimension(),
            )?)
        } else {
            let store =
                QdrantServerStore::connect(settings.vector_store.server()?, embedder.dimension())
                    .await?;
            let fusion = settings.retrieval.fusion;
            anyhow::ensure!(
                store.weighted_fusion()
                    || (fusion.dense_weight == 1.0 && fusion.sparse_weight == 1.0),
                "the Qdrant server is version {}, which ignores fusion weights (they need 1.17 or \
                 later): upgrade the server, or set retrieval.fusion.dense_weight and sparse_weight \
                 to 1.0",
                store.version()
            );
            Arc::new(store)
        };
        let docs: Arc<dyn DocumentStore> =
            Arc::new(SqlDocumentStore::connect(&settings.database_url()).await?);
        if settings.vector_store.url.is_empty() {
            // The embedded vector store is this process's alone (it locks
            // its folder): a writer still registered died with an earlier
            // one, and what it had in flight is for the next repair.
            docs.forget_writers().await?;
        }
        let retriever = Retriever {
            embedder: embedder.clone(),
            vectors: vectors.clone(),
            docs: docs.clone(),
            reranker: settings.retrieval.rerank.then(|| {
                Arc::new(EmbeddingReranker {
                    embedder: embedder.clone(),
                }) as Arc<dyn Reranker>
            }),
        };
        Ok(Self {
            embedder,
            tokenizer,
            vectors,
            docs,
            generation_slots: Arc::new(tokio::sync::Semaphore::new(
                settings.generator.queue_depth.max(1),
            )),
            retriever,
            generator: Default::default(),
            settings,
        })
    }

    pub fn ingestor(&self) -> anyhow::Result<Ingestor> {
        let chunker = Chunker::new(self.tokenizer.clone(), self.settings.chunking)?;
        Ok(Ingestor {
            embedder: self.embedder.clone(),
            vectors: self.vectors.clone(),
            docs: self.docs.clone(),
            chunker: Arc::new(chunker),
            limits: self.settings.ingest.limits()?,
        })
    }

    /// The GGUF file of the configured candle model.
    pub fn generator_path(&self) -> anyhow::Result<PathBuf> {
        let name = &self.settings.generator.model;
        // A path: a .gguf file, or a folder of safetensors weights.
        if name.ends_with(".gguf") || name.contains('/') {
            let path = PathBuf::from(name);
            anyhow::ensure!(
                path.exists(),
                "generator model {} does not exist",
                path.display()
            );
            return Ok(path);
        }
        let spec = models::spec(name)?;
        if !spec.is_installed(&self.settings.models_dir) {
            return Err(not_fetched(
                spec.name,
                &spec.path(&self.settings.models_dir),
            ));
        }
        Ok(spec.path(&self.settings.models_dir))
    }

    /// The configured generator: the candle model (loaded on first use) or
    /// the OpenAI-compatible server.
    pub async fn generator(&self) -> Result<Arc<dyn Generator>, Error> {
        self.generator
            .get_or_try_init(|| async {
                let cfg = &self.settings.generator;
                match cfg.backend {
                    GeneratorBackend::Candle => {
                        let path = self
                            .generator_path()
                            .map_err(|e| Error::unavailable(format!("{e:#}")))?;
                        let device = rag_generator::device(&cfg.device)
                            .map_err(|e| Error::unavailable(format!("{e:#}")))?;
                        let (max_batch, quantized) = (cfg.max_batch, cfg.quantized_decoding);
                        tokio::task::spawn_blocking(move || {
                            let generator = CandleGenerator::load_on(&path, &device)?;
                            generator.set_max_batch(max_batch);
                            generator.set_quantized_decoding(quantized);
                            anyhow::Ok(generator)
                        })
                        .await
                        .map_err(|e| Error::internal(e.to_string()))?
                        .map(|g| Arc::new(g) as Arc<dyn Generator>)
                        .map_err(|e| Error::unavailable(format!("loading the generator: {e:#}")))
                    }
                    GeneratorBackend::Openai => {
                        let mut remote = OpenAiConfig::new(&cfg.url, &cfg.model);
                        remote.api_key = (!cfg.api_key.0.is_empty()).then(|| cfg.api_key.0.clone());
                        remote.context_window = cfg.context_window;
                        remote.timeout = std::time::Duration::from_secs(cfg.timeout_s.max(1));
                        remote.max_retries = cfg.max_retries;
                        Ok(Arc::new(OpenAiGenerator::new(remote)?) as Arc<dyn Generator>)
                    }
                }
            })
            .await
            .cloned()
    }

    /// Generations running or waiting now.
    pub fn generations_in_flight(&self) -> usize {
        self.settings.generator.queue_depth.max(1) - self.generation_slots.available_permits()
    }

    /// The retrieval options of the settings, with a query's overrides.
    pub fn retrieve_options(&self, query: &Query) -> RetrieveOptions {
        let cfg = &self.settings.retrieval;
        RetrieveOptions {
            k: query.k.unwrap_or(cfg.k),
            mode: query.mode.unwrap_or(cfg.mode),
            fusion: cfg.fusion,
            filter: query.filter.clone(),
            dedup_similarity: cfg.dedup_similarity,
            mmr_lambda: cfg.mmr_lambda,
            expand_neighbours: cfg.expand_neighbours,
            exact: false,
            hnsw_ef: cfg.hnsw_ef,
        }
    }

    pub async fn retrieve(&self, question: &str, query: &Query) -> Result<Vec<Hit>, Error> {
        self.retriever
            .retrieve_with(question, &self.retrieve_options(query))
            .await
    }

    /// Answers from the documents, citing them, or says they do not cover it.
    pub async fn ask(&self, question: &str, query: &Query) -> Result<Answer, Error> {
        self.ask_stream(self.reserve()?, question, query, &mut |_| {})
            .await
    }

    /// A place in the generation queue, or [`Error::Busy`] at once when it
    /// is full. Held until the answer is done.
    pub fn reserve(&self) -> Result<GenerationSlot, Error> {
        self.generation_slots
            .clone()
            .try_acquire_owned()
            .map(|permit| GenerationSlot { _permit: permit })
            .map_err(|_| {
                Error::busy(format!(
                    "{} questions are already being answered or waiting (generator.queue_depth); retry shortly",
                    self.settings.generator.queue_depth
                ))
            })
    }

    /// The model alone, without retrieval: the messages as given.
    pub async fn generate(
        &self,
        _slot: GenerationSlot,
        messages: Vec<rag_core::ChatMessage>,
        sampling: &Sampling,
        sink: TextSink<'_>,
    ) -> Result<rag_core::Generation, Error> {
        let generator = self.generator().await?;
        let request = self.generation_request(messages, sampling);
        let prompt_tokens = generator.count_prompt_tokens(&request.messages)?;
        if prompt_tokens + request.max_tokens > generator.context_window() {
            return Err(Error::invalid(format!(
                "the messages ({prompt_tokens} tokens) and max_tokens ({}) exceed the model's context of {} tokens",
                request.max_tokens,
                generator.context_window()
            )));
        }
        let started = Instant::now();
        let generation = generator.generate_stream(request, sink).await?;
        crate::metrics::generation(&generation, started.elapsed());
        Ok(generation)
    }

    fn generation_request(
        &self,
        messages: Vec<rag_core::ChatMessage>,
        sampling: &Sampling,
    ) -> GenerationRequest {
        let cfg = &self.settings.generator;
        GenerationRequest {
            messages,
            max_tokens: sampling.max_tokens.unwrap_or(cfg.max_tokens),
            temperature: sampling.temperature.unwrap_or(cfg.temperature),
            top_p: sampling.top_p,
            seed: sampling.seed.unwrap_or(cfg.seed),
            repeat_penalty: cfg.repeat_penalty,
            stop: sampling.stop.clone(),
            ignore_eos: false,
        }
    }

    /// [`App::ask`], sending the model's text to `sink` as it is generated.
    /// The returned answer is the checked one: citations to passages that
    /// were not given removed, or the abstention when the model declined.
    pub async fn ask_stream(
        &self,
        _slot: GenerationSlot,
        question: &str,
        query: &Query,
        sink: TextSink<'_>,
    ) -> Result<Answer, Error> {
        let answer = self.answer(question, query, sink).await;
        crate::metrics::answer(&answer);
        answer
    }

    /// [`App::ask_stream`]'s work, before it is counted by outcome.
    async fn answer(
        &self,
        question: &str,
        query: &Query,
        sink: TextSink<'_>,
    ) -> Result<Answer, Error> {
        let started = Instant::now();
        let hits = self.retrieve(question, query).await?;
        let retrieval_ms = started.elapsed().as_millis() as u64;
        crate::metrics::stage("retrieval", started.elapsed());
        let cfg = &self.settings.retrieval;
        // Similarity, not the ranking score: it means the same in every mode.
        let best = hits.iter().map(|h| h.similarity).fold(f32::MIN, f32::max);
        let relevant: Vec<&Hit> = hits
            .iter()
            .filter(|h| h.similarity >= cfg.min_score && h.similarity >= best - cfg.relative_cutoff)
            .collect();
        // A passage that gives the model orders is an injection, not a
        // source: even a warning beside it does not stop a small model
        // from obeying (tests/hardening.rs), so it is not given at all.
        let (withheld, relevant): (Vec<&Hit>, Vec<&Hit>) = relevant.into_iter().partition(|h| {
            self.settings.generator.withhold_instructions
                && (grounding::gives_orders(&h.text) || grounding::gives_orders(&h.title))
        });
        if !withheld.is_empty() {
            let sources: Vec<&str> = withheld.iter().map(|h| h.source.as_str()).collect();
            tracing::warn!(
                ?sources,
                "passages that give the model orders were withheld"
            );
            crate::metrics::passages_withheld(withheld.len());
        }
        let passages_withheld = withheld.len();
        let abstain = |usage: Usage| Answer {
            answer: grounding::NOT_COVERED.to_string(),
            abstained: true,
            citations: vec![],
            verified_citations: 0,
            removed_citations: 0,
            usage,
        };
        if relevant.is_empty() {
            return Ok(abstain(Usage {
                retrieval_ms,
                passages_withheld,
                ..Default::default()
            }));
        }

        let generator = self.generator().await?;
        let max_tokens = query
            .sampling
            .max_tokens
            .unwrap_or(self.settings.generator.max_tokens);
        // Passages in rank order while the prompt and the answer fit.
        let mut passages: Vec<String> = Vec::new();
        for hit in &relevant {
            let mut candidate = passages.clone();
            candidate.push(grounding::render_passage(candidate.len() + 1, hit));
            let prompt_tokens =
                generator.count_prompt_tokens(&grounding::build_messages(question, &candidate))?;
            if prompt_tokens + max_tokens > generator.context_window() {
                break;
            }
            passages = candidate;
        }
        if passages.is_empty() {
            return Err(Error::invalid(format!(
                "the question and one passage do not fit the model's context of {} tokens with {max_tokens} answer tokens reserved; ask for fewer max_tokens",
                generator.context_window()
            )));
        }
        let request = self.generation_request(
            grounding::build_messages(question, &passages),
            &query.sampling,
        );
        let gen_started = Instant::now();
        let generation = generator.generate_stream(request, sink).await?;
        crate::metrics::generation(&generation, gen_started.elapsed());
        let usage = Usage {
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            retrieval_ms,
            generation_ms: gen_started.elapsed().as_millis() as u64,
            passages_used: passages.len(),
            passages_left_out: relevant.len() - passages.len(),
            passages_withheld,
        };
        let mut checked = grounding::check_citations(&generation.text, passages.len());
        if grounding::is_refusal(&checked.text) {
            return Ok(abstain(usage));
        }
        if checked.cited.is_empty() {
            // Small models often answer without citing. An answer that
            // draws on one passage is attributed to it; one that matches
            // none is not grounded and is not shown.
            match grounding::attribute(&checked.text, &passages, MIN_ATTRIBUTION) {
                Some(n) => {
                    checked.text = format!("{} [{n}]", checked.text);
                    checked.cited = vec![n];
                }
                None => return Ok(abstain(usage)),
            }
        }
        let min_support = self.settings.generator.verify_min_support;
        let citations: Vec<Citation> = checked
            .cited
            .iter()
            .map(|&n| {
                let hit = relevant[n - 1];
                Citation {
                    n,
                    doc_id: hit.doc_id.clone(),
                    chunk_id: hit.chunk_id.clone(),
                    source: hit.source.clone(),
                    title: hit.title.clone(),
                    page: hit.page,
                    quote: best_quote(&checked.text, &hit.text),
                    verified: grounding::verify_citation(&checked.text, n, &hit.text, min_support),
                }
            })
            .collect();
        Ok(Answer {
            answer: checked.text,
            abstained: false,
            verified_citations: citations.iter().filter(|c| c.verified).count(),
            removed_citations: checked.removed,
            citations,
            usage,
        })
    }
}

/// The sentence of `passage` that shares most words with the answer.
fn best_quote(answer: &str, passage: &str) -> String {
    let sentences = passage
        .split_inclusive(['.', '\n', '!', '?'])
        .map(str::trim)
        .filter(|s| s.chars().filter(|c| c.is_alphanumeric()).count() > 10);
    sentences
        .max_by(|a, b| grounding::support(a, answer).total_cmp(&grounding::support(b, answer)))
        .unwrap_or(passage)
        .trim_start_matches('#')
        .trim()
        .chars()
        .take(400)
        .collect()
}
