//! Wiring: opens the stores and models named by the settings, and answers
//! questions (retrieve, then generate, then check the citations).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rag_answer::Policy;
use rag_core::{
    Answer, DocumentStore, Embedder, EmbedderRecord, Error, GenerationRequest, Generator, Hit,
    Reranker, SearchFilter, SearchMode, TextSink, VectorStore,
};
use rag_embed::{BertEmbedder, NomicEmbedder, OrtEmbedder};
use rag_inference::{Backend, CandleGenerator, OpenAiGenerator};
use rag_ingest::{Chunker, Ingestor};
use rag_retriever::{EmbeddingReranker, RetrieveOptions, Retriever};
use rag_store::{EdgeVectorStore, QdrantServerStore, ShardedEdgeStore, SqlDocumentStore};

use crate::config::{EmbedderRuntime, Settings};
use crate::ops::models;

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

/// The configured embedder, and the tokenizer chunks are counted in.
pub async fn load_embedder(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Embedder>, tokenizers::Tokenizer)> {
    let spec = models::spec(&settings.embedder.model)?;
    if !spec.is_installed(&settings.models_dir) {
        return Err(not_fetched(spec.name, &settings.models_dir.join(spec.dir)));
    }
    let model_dir = settings.models_dir.join(spec.dir);
    Ok(match settings.embedder.runtime {
        // Read from its GGUF by candle whatever the runtime setting says:
        // there is no ONNX graph of it.
        _ if spec.is_gguf_embedder() => {
            let path = spec.path(&settings.models_dir);
            let e = tokio::task::spawn_blocking(move || NomicEmbedder::load(&path))
                .await?
                .with_context(|| format!("loading the embedder {} on candle", spec.name))?;
            let tokenizer = e.tokenizer().clone();
            (Arc::new(e) as Arc<dyn Embedder>, tokenizer)
        }
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
                .with_context(|| format!("loading the embedder {} on ONNX Runtime", spec.name))?;
            let tokenizer = e.tokenizer().clone();
            (Arc::new(e), tokenizer)
        }
        EmbedderRuntime::Candle => {
            let e = BertEmbedder::load(&model_dir)
                .with_context(|| format!("loading the embedder {} on candle", spec.name))?;
            let tokenizer = e.tokenizer().clone();
            (Arc::new(e), tokenizer)
        }
    })
}

/// What an embedder records itself as (`rag_core::EmbedderRecord`).
pub fn embedder_record(embedder: &dyn Embedder) -> EmbedderRecord {
    EmbedderRecord {
        model: embedder.model_id().to_string(),
        dimension: embedder.dimension(),
    }
}

/// The embedder a data directory's vectors were made with; `None` for a
/// new one.
pub async fn recorded_embedder(docs: &dyn DocumentStore) -> anyhow::Result<Option<EmbedderRecord>> {
    Ok(match docs.embedder().await? {
        Some(recorded) => Some(recorded),
        None if docs.document_count().await? > 0 => Some(legacy_embedder()),
        None => None,
    })
}

/// Documents but no record: made before embedders were recorded, when
/// MiniLM was the only one (either runtime, the same vectors).
fn legacy_embedder() -> EmbedderRecord {
    EmbedderRecord {
        model: LEGACY_EMBEDDER.to_string(),
        dimension: 384,
    }
}

/// Refuses a data directory whose vectors another embedder made, and
/// records the embedder in one that has none recorded. `embedded`: the
/// vector store is the embedded one, which `rag reembed` rebuilds.
async fn check_embedder(
    docs: &dyn DocumentStore,
    embedder: &dyn Embedder,
    embedded: bool,
) -> anyhow::Result<()> {
    let configured = embedder_record(embedder);
    let recorded = match docs.embedder().await? {
        Some(recorded) => recorded,
        None => {
            let first = if docs.document_count().await? > 0 {
                legacy_embedder()
            } else {
                configured.clone()
            };
            docs.record_first_embedder(&first).await?
        }
    };
    if recorded == configured {
        return Ok(());
    }
    let what_to_do = if embedded {
        "or stop the service and run `rag reembed` to make the vectors again with the \
         configured one"
    } else {
        "or, to change embedders with a Qdrant server, set vector_store.collection to a new \
         collection and database.url to a new database and ingest the documents again \
         (`rag reembed` rebuilds the embedded store only)"
    };
    anyhow::bail!(
        "the vectors of this knowledge base were made by the embedder {} ({}-d), but {} ({}-d) \
         is configured: set embedder.model back to {}, {what_to_do}",
        recorded.model,
        recorded.dimension,
        configured.model,
        configured.dimension,
        recorded.model,
    )
}

/// The folder of an embedded vector store holding `embedder`'s vectors:
/// `vectors` for MiniLM's (where they always were), `vectors-MODEL` for
/// another's, so that `rag reembed` builds the new ones beside the old.
pub fn vectors_dir(data_dir: &std::path::Path, embedder: &EmbedderRecord) -> std::path::PathBuf {
    if embedder.model == LEGACY_EMBEDDER {
        data_dir.join("vectors")
    } else {
        data_dir.join(format!("vectors-{}", embedder.model))
    }
}

/// The model id of the one embedder there was before they were recorded.
const LEGACY_EMBEDDER: &str = "all-MiniLM-L6-v2";

impl App {
    /// Opens the stores and the embedder; the generator is loaded on first use.
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        let (embedder, tokenizer) = load_embedder(&settings).await?;
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        // Before the vector store: it is opened with the embedder's dimension.
        let docs: Arc<dyn DocumentStore> =
            Arc::new(SqlDocumentStore::connect(&settings.database_url()).await?);
        let embedded = settings.vector_store.is_embedded();
        check_embedder(docs.as_ref(), embedder.as_ref(), embedded).await?;
        let simulated = settings.vector_store.simulated_shards;
        let vectors: Arc<dyn VectorStore> = if settings.vector_store.is_embedded() && simulated > 0
        {
            // Measuring only: the engine split as a sharded cluster is.
            let (path, dimension) = (
                vectors_dir(&settings.data_dir, &embedder_record(embedder.as_ref())),
                embedder.dimension(),
            );
            let store = tokio::task::spawn_blocking(move || {
                ShardedEdgeStore::open(&path, dimension, simulated)
            })
            .await??;
            tracing::warn!(
                shards = simulated,
                "vector_store.simulated_shards: the embedded engine runs split into shards, for \
                 measuring ranking as a sharded cluster ranks; not for serving"
            );
            Arc::new(store)
        } else if settings.vector_store.is_embedded() {
            let hnsw = settings.vector_store.hnsw();
            // Opening replays the engine's write-ahead log: blocking work.
            let (path, dimension) = (
                vectors_dir(&settings.data_dir, &embedder_record(embedder.as_ref())),
                embedder.dimension(),
            );
            let store = tokio::task::spawn_blocking(move || {
                EdgeVectorStore::open_with(&path, dimension, hnsw)
            })
            .await??;
            Arc::new(store)
        } else {
            let store =
                QdrantServerStore::connect(settings.vector_store.server()?, embedder.dimension())
                    .await?;
            let fusion = settings.retrieval.fusion;
            anyhow::ensure!(
                store.weighted_fusion()
                    || fusion.method == rag_core::FusionMethod::Convex
                    || (fusion.dense_weight == 1.0 && fusion.sparse_weight == 1.0),
                "the Qdrant server is version {}, which ignores fusion weights (they need 1.17 or \
                 later): upgrade the server, or set retrieval.fusion.dense_weight and sparse_weight \
                 to 1.0",
                store.version()
            );
            Arc::new(store)
        };
        // A `rag reembed` that switched while the store was being opened
        // would have this process on the old vectors.
        if docs.embedder().await?.as_ref() != Some(&embedder_record(embedder.as_ref())) {
            anyhow::bail!(
                "the embedder of this knowledge base changed while it was being opened (a `rag \
                 reembed` finished): start again"
            );
        }
        if settings.vector_store.is_embedded() {
            // The embedded vector store is this process's alone (it locks
            // its folder): a writer still registered died with an earlier
            // one, and what it had in flight is for the next repair.
            docs.forget_writers().await?;
        }
        Ok(Self::from_parts(
            settings, embedder, tokenizer, vectors, docs, None,
        ))
    }

    /// An app of these parts, opened elsewhere (tests use fakes); the
    /// generator, when given, replaces the configured one.
    pub fn from_parts(
        settings: Settings,
        embedder: Arc<dyn Embedder>,
        tokenizer: tokenizers::Tokenizer,
        vectors: Arc<dyn VectorStore>,
        docs: Arc<dyn DocumentStore>,
        generator: Option<Arc<dyn Generator>>,
    ) -> Self {
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
        Self {
            embedder,
            tokenizer,
            vectors,
            docs,
            generation_slots: Arc::new(tokio::sync::Semaphore::new(
                settings.generator.queue_depth.max(1),
            )),
            retriever,
            generator: tokio::sync::OnceCell::new_with(generator),
            settings,
        }
    }

    pub fn ingestor(&self) -> anyhow::Result<Ingestor> {
        let chunker = Chunker::new(self.tokenizer.clone(), self.settings.chunking)?;
        Ok(Ingestor {
            embedder: self.embedder.clone(),
            vectors: self.vectors.clone(),
            docs: self.docs.clone(),
            chunker: Arc::new(chunker),
            limits: self
                .settings
                .sources
                .apply(self.settings.ingest.limits()?)?,
            context_header: self.settings.ingest.context_header,
        })
    }

    /// The weights of the candle model `name`: a model from `rag models
    /// list`, a `.gguf` file, or a folder of safetensors weights.
    pub fn generator_path(&self, name: &str) -> anyhow::Result<PathBuf> {
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
                match &self.settings.generator.backend {
                    Backend::Candle(cfg) => {
                        // Our own message (which model, how to install it): it
                        // is what an operator acts on, so it is the message.
                        let path = self
                            .generator_path(&cfg.model)
                            .map_err(|e| Error::unavailable(e.to_string()))?;
                        let device = cfg.device;
                        let (max_batch, precision, prefix_cache) =
                            (cfg.max_batch, cfg.precision, cfg.prefix_cache);
                        use_amx(cfg.amx);
                        tokio::task::spawn_blocking(move || {
                            let generator =
                                CandleGenerator::load_with(&path, &device.open()?, precision)?;
                            generator.set_max_batch(max_batch);
                            generator.set_prefix_cache(prefix_cache);
                            anyhow::Ok(generator)
                        })
                        .await
                        .map_err(|e| Error::internal("the loading task failed").with_source(e))?
                        .map(|g| Arc::new(g) as Arc<dyn Generator>)
                        .map_err(|e| Error::unavailable("loading the generator").with_source(e))
                    }
                    Backend::OpenAi(cfg) => {
                        Ok(Arc::new(OpenAiGenerator::new(cfg.config())?) as Arc<dyn Generator>)
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
        self.settings
            .retrieval
            .options(query.k, query.mode, query.filter.clone())
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
        crate::metrics::generation(
            generation.prompt_tokens,
            generation.completion_tokens,
            started.elapsed(),
        );
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
        self.answer_hits(question, query, &hits, started.elapsed(), None, sink)
            .await
    }

    /// [`App::ask`], with the hits the answer was made from: for
    /// evaluation, which scores what reached the prompt. `hits`, when
    /// given, are used instead of retrieving (a replay), and `generator`
    /// instead of the configured model (a recording or a replay of it).
    pub async fn ask_traced(
        &self,
        question: &str,
        query: &Query,
        hits: Option<Vec<Hit>>,
        generator: Option<Arc<dyn Generator>>,
    ) -> Result<(Vec<Hit>, Answer), Error> {
        let _slot = self.reserve()?;
        let started = Instant::now();
        let hits = match hits {
            Some(hits) => hits,
            None => self.retrieve(question, query).await?,
        };
        let answer = self
            .answer_hits(
                question,
                query,
                &hits,
                started.elapsed(),
                generator,
                &mut |_| {},
            )
            .await;
        crate::metrics::answer(&answer);
        Ok((hits, answer?))
    }

    /// The answer policy (`rag_answer`) over retrieved `hits`.
    async fn answer_hits(
        &self,
        question: &str,
        query: &Query,
        hits: &[Hit],
        retrieval: std::time::Duration,
        generator: Option<Arc<dyn Generator>>,
        sink: TextSink<'_>,
    ) -> Result<Answer, Error> {
        crate::metrics::stage("retrieval", retrieval);
        let policy = self.policy();
        let admitted = policy.admit(hits);
        // Without a passage to give it, the model is not loaded or called.
        let mut answer = match admitted.abstention() {
            Some(abstention) => abstention,
            None => {
                let generator = match generator {
                    Some(generator) => generator,
                    None => self.generator().await?,
                };
                let request = self.generation_request(vec![], &query.sampling);
                policy
                    .answer_admitted(
                        generator.as_ref(),
                        Some(self.embedder.as_ref()),
                        question,
                        admitted,
                        request,
                        sink,
                    )
                    .await?
            }
        };
        answer.usage.retrieval_ms = retrieval.as_millis() as u64;
        crate::metrics::answer_usage(&answer.usage);
        Ok(answer)
    }

    /// The answer policy of the settings.
    pub fn policy(&self) -> Policy {
        Policy {
            min_score: self.settings.retrieval.min_score,
            relative_cutoff: self.settings.retrieval.relative_cutoff,
            withhold_instructions: self.settings.generator.withhold_instructions,
            verify_min_support: self.settings.generator.verify_min_support,
            extract_min_similarity: self.settings.generator.extract_min_similarity,
            recover_min_alignment: self.settings.generator.recover_min_alignment,
            design: self.settings.generator.answer_design,
            select_min_score: self.settings.generator.select_min_score,
            select_max_picks: self.settings.generator.select_max_picks,
            select_confirm: self.settings.generator.select_confirm,
            ..Policy::default()
        }
    }
}

/// Prompts on AMX tiles as `generator.amx` says; asked for where the CPU
/// or kernel lacks them, said once in the log.
pub(crate) fn use_amx(on: bool) {
    if rag_inference::use_amx(on) != on {
        tracing::debug!(
            "generator.amx: this CPU or kernel has no AMX-INT8; prompts run on AVX-512"
        );
    }
}
