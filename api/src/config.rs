//! Settings: defaults, then an optional TOML file (`--config`), then
//! environment variables `RAG_*` (nested keys with `__`, e.g.
//! `RAG_RETRIEVAL__K=8`). Only this crate reads files and the environment.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The top-level keys of a config file: [`Settings`]' fields.
const SECTIONS: &[&str] = &[
    "data_dir",
    "models_dir",
    "database",
    "vector_store",
    "embedder",
    "generator",
    "retrieval",
    "chunking",
    "ingest",
    "server",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the vector store and the SQLite database live.
    pub data_dir: PathBuf,
    /// Where `rag models fetch` installs models (`RAG_MODELS_DIR`).
    pub models_dir: PathBuf,
    pub database: Database,
    pub vector_store: VectorStoreSettings,
    pub embedder: EmbedderSettings,
    pub generator: GeneratorSettings,
    pub retrieval: Retrieval,
    pub chunking: rag_ingest::ChunkOptions,
    pub ingest: IngestSettings,
    pub server: ServerSettings,
}

/// What one document may cost: over a limit, that document fails with the
/// reason and the run goes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    pub max_document_mb: f64,
    pub max_pages: usize,
    pub max_text_mb: f64,
    pub parse_timeout_s: f64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        let limits = rag_ingest::Limits::default();
        let mb = |bytes: usize| bytes as f64 / f64::from(1 << 20);
        Self {
            max_document_mb: mb(limits.max_bytes),
            max_pages: limits.max_pages,
            max_text_mb: mb(limits.max_text_bytes),
            parse_timeout_s: limits.parse_timeout.as_secs_f64(),
        }
    }
}

impl IngestSettings {
    pub fn limits(&self) -> anyhow::Result<rag_ingest::Limits> {
        let bytes = |mb: f64, key: &str| {
            anyhow::ensure!(
                mb > 0.0 && mb.is_finite(),
                "ingest.{key} must be a positive number of MiB"
            );
            Ok((mb * f64::from(1 << 20)) as usize)
        };
        anyhow::ensure!(self.max_pages > 0, "ingest.max_pages must be at least 1");
        anyhow::ensure!(
            self.parse_timeout_s > 0.0 && self.parse_timeout_s.is_finite(),
            "ingest.parse_timeout_s must be a positive number of seconds"
        );
        Ok(rag_ingest::Limits {
            max_bytes: bytes(self.max_document_mb, "max_document_mb")?,
            max_pages: self.max_pages,
            max_text_bytes: bytes(self.max_text_mb, "max_text_mb")?,
            parse_timeout: std::time::Duration::from_secs_f64(self.parse_timeout_s),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Longest a request may take before it is answered 504; streamed chat
    /// answers are bounded by the generator's own timeouts instead.
    pub request_timeout_s: f64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            request_timeout_s: 300.0,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            models_dir: PathBuf::from("models"),
            database: Database::default(),
            vector_store: VectorStoreSettings::default(),
            embedder: EmbedderSettings::default(),
            generator: GeneratorSettings::default(),
            retrieval: Retrieval::default(),
            chunking: rag_ingest::ChunkOptions::default(),
            ingest: IngestSettings::default(),
            server: ServerSettings::default(),
        }
    }
}

/// The vector store: the embedded engine in `data_dir/vectors`, or a
/// Qdrant server or cluster when `url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorStoreSettings {
    /// gRPC address of a Qdrant server, e.g. `http://qdrant:6334`; empty:
    /// embedded.
    pub url: String,
    pub api_key: Secret,
    pub collection: String,
    pub shard_number: u32,
    pub replication_factor: u32,
    pub write_consistency_factor: u32,
    pub timeout_s: f64,
    /// Creating the collection and its indexes (a cluster is slower).
    pub create_timeout_s: f64,
}

impl Default for VectorStoreSettings {
    fn default() -> Self {
        let d = rag_store::ServerSettings::default();
        Self {
            url: String::new(),
            api_key: Secret::default(),
            collection: d.collection,
            shard_number: d.shard_number,
            replication_factor: d.replication_factor,
            write_consistency_factor: d.write_consistency_factor,
            timeout_s: d.timeout.as_secs_f64(),
            create_timeout_s: d.create_timeout.as_secs_f64(),
        }
    }
}

impl VectorStoreSettings {
    pub fn server(&self) -> anyhow::Result<rag_store::ServerSettings> {
        for (name, value) in [
            ("timeout_s", self.timeout_s),
            ("create_timeout_s", self.create_timeout_s),
        ] {
            anyhow::ensure!(
                value > 0.0 && value.is_finite(),
                "vector_store.{name} must be a positive number of seconds"
            );
        }
        anyhow::ensure!(
            self.shard_number > 0
                && self.replication_factor > 0
                && self.write_consistency_factor > 0,
            "vector_store.shard_number, replication_factor and write_consistency_factor must be at least 1"
        );
        Ok(rag_store::ServerSettings {
            url: self.url.clone(),
            api_key: (!self.api_key.0.is_empty()).then(|| self.api_key.0.clone()),
            collection: self.collection.clone(),
            shard_number: self.shard_number,
            replication_factor: self.replication_factor,
            write_consistency_factor: self.write_consistency_factor,
            timeout: std::time::Duration::from_secs_f64(self.timeout_s),
            create_timeout: std::time::Duration::from_secs_f64(self.create_timeout_s),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// `sqlite://...` or `postgres://...`; empty means `DATA_DIR/meta.db`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderSettings {
    /// A name from `rag models list`.
    pub model: String,
    pub runtime: EmbedderRuntime,
    /// CPU threads for ONNX Runtime; 0 means all cores.
    pub threads: usize,
}

/// What runs the embedding model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderRuntime {
    /// ONNX Runtime: the faster (ARCHITECTURE.md), and the default.
    Onnx,
    /// candle's BERT: no native library needed.
    Candle,
}

impl EmbedderRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            EmbedderRuntime::Onnx => "onnx",
            EmbedderRuntime::Candle => "candle",
        }
    }
}

impl EmbedderSettings {
    /// The thread count to run with: `threads`, or every core when it is 0.
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        Self {
            model: crate::models::DEFAULT_EMBEDDER.into(),
            runtime: EmbedderRuntime::Onnx,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorSettings {
    /// `candle` (a model in this process) or `openai` (a server: vLLM,
    /// TGI, Ollama's `/v1`, llama.cpp, another `rag serve`).
    pub backend: GeneratorBackend,
    /// candle: a name from `rag models list`, or a path to a `.gguf` file.
    /// openai: the model name the server knows.
    pub model: String,
    /// candle: `cpu`, or `cuda` (a binary built with `--features cuda`).
    pub device: String,
    /// openai: the server's base URL up to and including `/v1`.
    pub url: String,
    /// openai: sent as a bearer token when not empty
    /// (`RAG_GENERATOR__API_KEY`).
    pub api_key: Secret,
    /// openai: the served model's context window in tokens.
    pub context_window: usize,
    /// openai: longest wait for an answer to start, or between two pieces
    /// of a stream.
    pub timeout_s: u64,
    /// openai: retries on 429, 502, 503, 504 and connection failures.
    pub max_retries: u32,
    /// Questions being answered or waiting for the model; more are refused
    /// with 429 and `Retry-After`.
    pub queue_depth: usize,
    /// candle (llama and qwen2 models): questions whose answers are
    /// decoded together, one token of each per pass over the weights; the
    /// others wait their turn in the queue. 1 answers one at a time.
    pub max_batch: usize,
    /// Decoding steps on the GGUF file's quantized weights (CPU, llama and
    /// qwen2): 2 to 4 times faster than on the dequantized ones, which
    /// prefill always uses. `false` decodes on the dequantized weights too.
    pub quantized_decoding: bool,
    pub max_tokens: usize,
    pub temperature: f64,
    pub seed: u64,
    pub repeat_penalty: f32,
    /// A citation is verified when every sentence citing it has at least
    /// this share of its content words in the cited passage.
    pub verify_min_support: f32,
    /// Keep passages that give orders to the model (ignore previous
    /// instructions, answer only with, chat-template tokens...) out of the
    /// prompt. They stay searchable; the answer's usage counts them.
    pub withhold_instructions: bool,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            backend: GeneratorBackend::Candle,
            model: crate::models::DEFAULT_GENERATOR.into(),
            device: "cpu".into(),
            url: String::new(),
            api_key: Secret::default(),
            context_window: 4096,
            timeout_s: 120,
            max_retries: 3,
            queue_depth: 16,
            max_batch: rag_generator::DEFAULT_MAX_BATCH,
            quantized_decoding: true,
            max_tokens: 200,
            temperature: 0.0,
            seed: 42,
            // Answers copy facts from the passages: no penalty for repeating them.
            repeat_penalty: 1.0,
            verify_min_support: 0.5,
            withhold_instructions: true,
        }
    }
}

/// What runs the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorBackend {
    Candle,
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retrieval {
    /// Passages retrieved per question.
    pub k: usize,
    /// Below this cosine similarity of the best passage, the documents are
    /// taken not to cover the question and the model is not called.
    pub min_score: f32,
    /// Passages scoring below `best - relative_cutoff` are not shown to the
    /// model (they rarely help and cost prompt tokens).
    pub relative_cutoff: f32,
    /// dense, sparse (BM25) or hybrid (both, fused).
    pub mode: rag_core::SearchMode,
    /// Reciprocal rank fusion of the hybrid mode.
    pub fusion: rag_core::Fusion,
    /// Hits at least this similar to a better one are dropped.
    pub dedup_similarity: f32,
    /// Maximal marginal relevance, 0 (diverse) to 1 (relevant); off when unset.
    pub mmr_lambda: Option<f32>,
    /// A hit that ends mid-sentence takes in the next chunk.
    pub expand_neighbours: bool,
    /// Rescore candidates with the reranker (the embedder's cosine on the
    /// bare passage until a cross-encoder ships).
    pub rerank: bool,
    /// Breadth of the approximate vector search (HNSW ef); unset: the
    /// engine's default. `rag bench query` shows recall against it.
    pub hnsw_ef: Option<usize>,
}

impl Default for Retrieval {
    fn default() -> Self {
        let shaping = rag_retriever::RetrieveOptions::default();
        Self {
            k: 5,
            min_score: 0.25,
            relative_cutoff: 0.25,
            mode: shaping.mode,
            fusion: shaping.fusion,
            dedup_similarity: shaping.dedup_similarity,
            mmr_lambda: shaping.mmr_lambda,
            expand_neighbours: shaping.expand_neighbours,
            rerank: false,
            hnsw_ef: shaping.hnsw_ef,
        }
    }
}

impl Settings {
    /// These settings on a scratch data directory of their own (an
    /// evaluation's or a benchmark's): SQLite and the embedded vector
    /// engine inside it, never the configured database or Qdrant server.
    pub fn scratch(mut self, data_dir: PathBuf) -> Self {
        self.data_dir = data_dir;
        self.database.url = String::new();
        self.vector_store.url = String::new();
        self
    }

    pub fn load(file: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "config file {} does not exist",
                file.display()
            );
            // Sections refuse unknown keys themselves; the top level cannot
            // (every RAG_* variable of the environment lands there), so a
            // misspelt section in the file is caught here.
            let top: std::collections::HashMap<String, config::Value> = config::Config::builder()
                .add_source(config::File::from(file))
                .build()?
                .try_deserialize()?;
            if let Some(unknown) = top.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
                anyhow::bail!(
                    "{}: unknown setting `{unknown}`; known: {}",
                    file.display(),
                    SECTIONS.join(", ")
                );
            }
            builder = builder.add_source(config::File::from(file));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("RAG")
                .prefix_separator("_")
                .separator("__"),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        if let Some(dir) = data_dir {
            settings.data_dir = dir.to_owned();
        }
        settings.ingest.limits()?;
        settings.vector_store.server()?;
        Ok(settings)
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("meta.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }
}

/// A setting that must not be printed: `Debug` shows whether it is set,
/// never its value, so settings can be logged.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "(unset)"
        } else {
            "(set)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut settings = Settings::default();
        settings.generator.api_key = Secret("sk-very-secret".into());
        settings.vector_store.api_key = Secret("qdrant-very-secret".into());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert!(!printed.contains("qdrant-very-secret"), "{printed}");
        let server = format!("{:?}", settings.vector_store.server().unwrap());
        assert!(!server.contains("qdrant-very-secret"), "{server}");
        assert!(printed.contains("api_key: (set)"), "{printed}");
    }

    /// The config files the Kubernetes overlays ship load as they are, and
    /// a misspelt key, in a section or at the top, is refused by name.
    #[test]
    fn overlay_configs_load_and_typos_are_refused() {
        let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
        let mut loaded = 0;
        let folders = std::fs::read_dir(k8s.join("overlays"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .chain([k8s.join("base")]);
        for folder in folders {
            let file = folder.join("rag.toml");
            if file.exists() {
                Settings::load(Some(&file), None)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 4, "{loaded} configs");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rag.toml");
        for (text, named) in [
            ("[generator]\nmax_bacth = 4\n", "max_bacth"),
            ("[generater]\nmax_batch = 4\n", "generater"),
            ("[retrieval]\nmin_scroe = 0.3\n", "min_scroe"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = format!("{:#}", Settings::load(Some(&file), None).unwrap_err());
            assert!(err.contains(named), "{text}: {err}");
        }
        std::fs::write(&file, "[generator]\nmax_batch = 4\n").unwrap();
        assert_eq!(
            Settings::load(Some(&file), None)
                .unwrap()
                .generator
                .max_batch,
            4
        );
    }
}
