//! Settings: defaults, then an optional TOML file (`--config`), then
//! environment variables `RAG_*` (nested keys with `__`, e.g.
//! `RAG_RETRIEVAL__K=8`). Only this crate reads files and the environment.
//!
//! Each library owns the settings of its section (`rag_store`'s
//! `[vector_store]`, `rag_ingest`'s `[ingest]` and `[chunking]`,
//! `rag_retriever`'s `[retrieval]`); [`Settings`] composes them with the
//! sections of the service itself.

use std::path::{Path, PathBuf};

use rag_answer::Design;
pub use rag_core::Secret;
use rag_inference::{Backend, CandleSettings, OpenAiSettings, Precision};
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
    "sources",
    "feedback",
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
    pub vector_store: rag_store::VectorStoreSettings,
    pub embedder: EmbedderSettings,
    pub generator: GeneratorSettings,
    pub retrieval: rag_retriever::RetrievalSettings,
    pub chunking: rag_ingest::ChunkOptions,
    pub ingest: rag_ingest::IngestSettings,
    pub sources: rag_ingest::SourcesSettings,
    pub feedback: FeedbackSettings,
    pub server: ServerSettings,
}

/// `[feedback]`: how long answers are kept to be rated.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackSettings {
    /// Answers (questions, answers, ratings, comments) older than this are
    /// forgotten by a running server, hourly.
    pub retention_days: f64,
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        Self {
            retention_days: 90.0,
        }
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
            vector_store: Default::default(),
            embedder: EmbedderSettings::default(),
            generator: GeneratorSettings::default(),
            retrieval: Default::default(),
            chunking: rag_ingest::ChunkOptions::default(),
            ingest: Default::default(),
            sources: Default::default(),
            feedback: FeedbackSettings::default(),
            server: ServerSettings::default(),
        }
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
    /// ONNX Runtime: the faster (BENCHMARKS.md), and the default.
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
            model: crate::ops::models::DEFAULT_EMBEDDER.into(),
            runtime: EmbedderRuntime::Onnx,
            threads: 0,
        }
    }
}

/// `[generator]`: what runs the model ([`Backend`], chosen by `backend`),
/// the queue in front of it, and the sampling and checks of answers. The
/// file keeps one flat section: the fields of the backend not chosen are
/// ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "GeneratorSection")]
pub struct GeneratorSettings {
    pub backend: Backend,
    /// Questions being answered or waiting for the model; more are refused
    /// with 429 and `Retry-After`.
    pub queue_depth: usize,
    pub max_tokens: usize,
    pub temperature: f64,
    pub seed: u64,
    pub repeat_penalty: f32,
    /// A sentence's citation holds when the passage has at least this share
    /// of its content words (and all its numbers, names and negations).
    pub verify_min_support: f32,
    /// When nothing the model said holds up but the best passage is at
    /// least this similar to the question, quote its best sentence.
    pub extract_min_similarity: Option<f32>,
    /// When nothing the model said holds up, quote the passage sentence
    /// that holds this share of a dropped claim's words and answers the
    /// question (before `extract_min_similarity`).
    pub recover_min_alignment: Option<f32>,
    /// Who writes the answer: `free` (the model, checked), `select` (the
    /// model picks passage sentences, quoted) or `free_then_select`
    /// (select where nothing the model wrote holds up).
    pub answer_design: Design,
    /// `select`: the least share of the question an offered sentence holds.
    pub select_min_score: f32,
    /// `select`: the most sentences an answer quotes.
    pub select_max_picks: usize,
    /// `select`: quote a pick only if the model, asked about it alone,
    /// says it answers the question.
    pub select_confirm: bool,
    /// Keep passages that give orders to the model (ignore previous
    /// instructions, answer only with, chat-template tokens...) out of the
    /// prompt. They stay searchable; the answer's usage counts them.
    pub withhold_instructions: bool,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        GeneratorSection::default()
            .try_into()
            .expect("the default generator settings are valid")
    }
}

impl GeneratorSettings {
    /// The candle engine's settings, when it is the backend.
    pub fn candle(&self) -> Option<&CandleSettings> {
        match &self.backend {
            Backend::Candle(c) => Some(c),
            Backend::OpenAi(_) => None,
        }
    }
}

/// What runs the generator, as the settings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BackendName {
    Candle,
    Openai,
}

/// The `[generator]` section as written: flat, every backend's fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GeneratorSection {
    /// `candle` (a model in this process) or `openai` (a server: vLLM,
    /// TGI, Ollama's `/v1`, llama.cpp, another `rag serve`).
    backend: BackendName,
    /// candle: a name from `rag models list`, or a path to a `.gguf` file.
    /// openai: the model name the server knows.
    model: String,
    /// candle: `cpu`, `cuda` or `cuda:N` (a binary built with `--features cuda`).
    device: String,
    /// openai: the server's base URL up to and including `/v1`.
    url: String,
    /// openai: sent as a bearer token when not empty
    /// (`RAG_GENERATOR__API_KEY`).
    api_key: Secret,
    /// openai: the served model's context window in tokens.
    context_window: usize,
    /// openai: longest wait for an answer to start, or between two pieces
    /// of a stream.
    timeout_s: u64,
    /// openai: retries on 429, 502, 503, 504 and connection failures.
    max_retries: u32,
    queue_depth: usize,
    /// candle (llama and qwen2 models): questions whose answers are
    /// decoded together, one token of each per pass over the weights; the
    /// others wait their turn in the queue. 1 answers one at a time.
    max_batch: usize,
    /// candle (GGUF llama and qwen2 models on the CPU): decoding steps on
    /// the file's quantized weights, 2 to 4 times faster than on
    /// dequantized f32 ones. `false` holds f32 weights only (4 to 7 times
    /// the memory; the arithmetic of candle's own models).
    quantized_decoding: bool,
    /// candle, as above: prompts on the quantized weights too (our int8
    /// kernels), so only the quantized copy is held: a third to a sixth of
    /// the memory. Unset: on where the CPU has AVX-512 VNNI (prefill is
    /// faster there than on an f32 copy), off elsewhere (slower there).
    /// Needs `quantized_decoding`.
    quantized_prefill: Option<bool>,
    /// candle (llama and qwen2): a prompt starts from the keys and values
    /// of the prompt before, where the two share their start (the system
    /// prompt and instructions): a shorter time to first token, but a
    /// greedy answer can differ in a word between a cold and a warm cache.
    prefix_cache: bool,
    /// candle, one quantized copy of a GGUF's weights: prompts on AMX
    /// tiles where the CPU has AMX-INT8 (Sapphire Rapids and later), the
    /// same products as on AVX-512 VNNI, to the bit; ignored elsewhere.
    /// On by default (the 0.5B model prefills 1.6 times as fast).
    amx: bool,
    max_tokens: usize,
    temperature: f64,
    seed: u64,
    repeat_penalty: f32,
    verify_min_support: f32,
    extract_min_similarity: Option<f32>,
    recover_min_alignment: Option<f32>,
    answer_design: DesignName,
    select_min_score: f32,
    select_max_picks: usize,
    select_confirm: bool,
    withhold_instructions: bool,
}

/// `generator.answer_design` as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DesignName {
    Free,
    Select,
    FreeThenSelect,
    Extract,
    FreeThenExtract,
}

impl Default for GeneratorSection {
    fn default() -> Self {
        let policy = rag_answer::Policy::default();
        Self {
            backend: BackendName::Candle,
            model: crate::ops::models::DEFAULT_GENERATOR.into(),
            device: "cpu".into(),
            url: String::new(),
            api_key: Secret::default(),
            context_window: 4096,
            timeout_s: 120,
            max_retries: 3,
            queue_depth: 16,
            max_batch: rag_inference::DEFAULT_MAX_BATCH,
            quantized_decoding: true,
            quantized_prefill: None,
            prefix_cache: false,
            amx: true,
            max_tokens: 200,
            temperature: 0.0,
            seed: 42,
            // Answers copy facts from the passages: no penalty for repeating them.
            repeat_penalty: 1.0,
            verify_min_support: policy.verify_min_support,
            // Measured on the handbook dev set (BENCHMARKS.md, "Answer
            // quality"): a quote where the small model declines or says
            // nothing that holds up, without costing abstentions.
            extract_min_similarity: Some(0.55),
            recover_min_alignment: None,
            // Measured on the handbook and fixture dev sets (BENCHMARKS.md,
            // "Select, then say"): where the model's answer does not hold
            // up, the best sentences by meaning and words are quoted, on
            // the scale of all-MiniLM-L6-v2's cosine plus a quarter of the
            // words' score.
            answer_design: DesignName::FreeThenExtract,
            select_min_score: 0.75,
            select_max_picks: 2,
            select_confirm: policy.select_confirm,
            withhold_instructions: policy.withhold_instructions,
        }
    }
}

impl TryFrom<GeneratorSection> for GeneratorSettings {
    type Error = rag_core::Error;

    fn try_from(s: GeneratorSection) -> Result<Self, Self::Error> {
        let backend = match s.backend {
            BackendName::Candle => Backend::Candle(CandleSettings {
                model: s.model,
                device: s.device.parse().map_err(|e: rag_core::Error| {
                    rag_core::Error::invalid(format!("generator.device: {e}"))
                })?,
                max_batch: s.max_batch,
                prefix_cache: s.prefix_cache,
                amx: s.amx,
                precision: match (s.quantized_decoding, s.quantized_prefill) {
                    (true, None) => Precision::default(),
                    (true, Some(true)) => Precision::Quantized,
                    (true, Some(false)) => Precision::Both,
                    (false, None | Some(false)) => Precision::Dequantized,
                    (false, Some(true)) => {
                        return Err(rag_core::Error::invalid(
                            "generator.quantized_prefill = true needs \
                             generator.quantized_decoding = true",
                        ));
                    }
                },
            }),
            BackendName::Openai => Backend::OpenAi(OpenAiSettings {
                url: s.url,
                model: s.model,
                api_key: s.api_key,
                context_window: s.context_window,
                timeout_s: s.timeout_s,
                max_retries: s.max_retries,
            }),
        };
        Ok(Self {
            backend,
            queue_depth: s.queue_depth,
            max_tokens: s.max_tokens,
            temperature: s.temperature,
            seed: s.seed,
            repeat_penalty: s.repeat_penalty,
            verify_min_support: s.verify_min_support,
            extract_min_similarity: s.extract_min_similarity,
            recover_min_alignment: s.recover_min_alignment,
            answer_design: match s.answer_design {
                DesignName::Free => Design::Free,
                DesignName::Select => Design::Select,
                DesignName::FreeThenSelect => Design::FreeThenSelect,
                DesignName::Extract => Design::Extract,
                DesignName::FreeThenExtract => Design::FreeThenExtract,
            },
            select_min_score: s.select_min_score,
            select_max_picks: if s.select_max_picks == 0 {
                return Err(rag_core::Error::invalid(
                    "generator.select_max_picks must be at least 1",
                ));
            } else {
                s.select_max_picks
            },
            select_confirm: s.select_confirm,
            withhold_instructions: s.withhold_instructions,
        })
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
        settings.sources.apply(settings.ingest.limits()?)?;
        if !(settings.feedback.retention_days > 0.0 && settings.feedback.retention_days.is_finite())
        {
            anyhow::bail!("feedback.retention_days must be a positive number of days");
        }
        settings.vector_store.server()?;
        settings.vector_store.check_hnsw()?;
        settings.retrieval.check()?;
        let fusion = settings.retrieval.fusion;
        if fusion.method == rag_core::FusionMethod::Convex && fusion.rrf_tuned() {
            tracing::warn!(
                "retrieval.fusion sets rrf_k, dense_weight or sparse_weight, which only RRF uses: \
                 the method is convex (the default since convex fusion won on SciFact); set \
                 method = \"rrf\" to keep them, or alpha to weigh the convex sides"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut settings = Settings::default();
        settings.generator.backend = Backend::OpenAi(OpenAiSettings {
            url: "http://vllm/v1".into(),
            model: "m".into(),
            api_key: Secret("sk-very-secret".into()),
            context_window: 4096,
            timeout_s: 1,
            max_retries: 0,
        });
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
            ("[sources]\ntimeout_s = 0\n", "sources.timeout_s"),
            (
                "[feedback]\nretention_days = -1\n",
                "feedback.retention_days",
            ),
            (
                "[retrieval]\ncontinue_best = 50\n",
                "retrieval.continue_best",
            ),
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
                .candle()
                .map(|c| c.max_batch),
            Some(4)
        );
        // The backend chosen picks its variant; a bad device is refused by name.
        std::fs::write(
            &file,
            "[generator]\nbackend = \"openai\"\nurl = \"http://vllm:8000/v1\"\nmodel = \"q\"\n",
        )
        .unwrap();
        let generator = Settings::load(Some(&file), None).unwrap().generator;
        assert!(matches!(&generator.backend, Backend::OpenAi(o) if o.url == "http://vllm:8000/v1"));
        std::fs::write(&file, "[generator]\ndevice = \"gpu\"\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&file), None).unwrap_err());
        assert!(err.contains("generator.device"), "{err}");
        // How the weights are held: by default one quantized copy where
        // our kernels run (AVX-512 VNNI), else two; one quantized copy when
        // prompts run on it too, two when they do not, f32 only; prompts on
        // quantized weights without decoding on them is refused by name.
        for (text, precision) in [
            ("", Precision::default()),
            ("quantized_prefill = true\n", Precision::Quantized),
            ("quantized_prefill = false\n", Precision::Both),
            ("quantized_decoding = false\n", Precision::Dequantized),
        ] {
            std::fs::write(&file, format!("[generator]\n{text}")).unwrap();
            let settings = Settings::load(Some(&file), None).unwrap();
            assert_eq!(
                settings.generator.candle().map(|c| c.precision),
                Some(precision),
                "{text}"
            );
        }
        std::fs::write(
            &file,
            "[generator]\nquantized_decoding = false\nquantized_prefill = true\n",
        )
        .unwrap();
        let err = format!("{:#}", Settings::load(Some(&file), None).unwrap_err());
        assert!(err.contains("generator.quantized_prefill"), "{err}");
        // The answer design by name; an unknown one, or no picks, is refused.
        for (text, design) in [
            ("", Design::FreeThenExtract),
            ("answer_design = \"free\"\n", Design::Free),
            ("answer_design = \"select\"\n", Design::Select),
            (
                "answer_design = \"free_then_select\"\n",
                Design::FreeThenSelect,
            ),
        ] {
            std::fs::write(&file, format!("[generator]\n{text}")).unwrap();
            let settings = Settings::load(Some(&file), None).unwrap();
            assert_eq!(settings.generator.answer_design, design, "{text}");
        }
        for (text, named) in [
            ("answer_design = \"pick\"\n", "pick"),
            ("select_max_picks = 0\n", "generator.select_max_picks"),
        ] {
            std::fs::write(&file, format!("[generator]\n{text}")).unwrap();
            let err = format!("{:#}", Settings::load(Some(&file), None).unwrap_err());
            assert!(err.contains(named), "{text}: {err}");
        }
    }
}
