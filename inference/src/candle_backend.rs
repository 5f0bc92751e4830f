use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{quantized_gemma3, qwen2};
use rag_core::{ChatMessage, Error, Generation, GenerationRequest, Generator, Result, TextSink};
use tokenizers::Tokenizer;

use crate::batched::{Decoder, Precision};
use crate::engine::{self, BatchStats, Job, Sequence, Vocab};
use crate::tokenizer_from_gguf;

/// Sequences decoded together at most, unless set otherwise
/// ([`CandleGenerator::set_max_batch`]).
pub const DEFAULT_MAX_BATCH: usize = 8;

/// How a loaded model runs requests.
enum Backend {
    /// llama and qwen2: an engine thread decodes concurrent requests
    /// together (see `engine.rs`).
    Batched {
        jobs: std::sync::mpsc::Sender<Job>,
        settings: Arc<engine::Settings>,
        stats: Arc<BatchStats>,
    },
    /// gemma3 (candle's model, whose cache holds one sequence): one
    /// request at a time, in turn on the lock.
    Single(Box<Mutex<quantized_gemma3::ModelWeights>>),
}

/// Why a model could not be loaded: the file, and what went wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("loading the model {}", path.display())]
pub struct LoadError {
    pub path: std::path::PathBuf,
    #[source]
    source: rag_core::BoxError,
}

/// A Hugging Face `config.json` of the qwen2 family as candle's config,
/// with the defaults transformers leaves out (v5 nests `rope_theta` and may
/// write `sliding_window: null`).
fn qwen2_config(raw: &serde_json::Value) -> anyhow::Result<qwen2::Config> {
    let mut cfg = raw.clone();
    let layers = cfg["num_hidden_layers"].clone();
    let defaults = [
        ("sliding_window", cfg["max_position_embeddings"].clone()),
        ("max_window_layers", layers),
        ("use_sliding_window", serde_json::json!(false)),
        ("tie_word_embeddings", serde_json::json!(false)),
        ("hidden_act", serde_json::json!("silu")),
        ("rms_norm_eps", serde_json::json!(1e-6)),
        (
            "rope_theta",
            raw["rope_parameters"]["rope_theta"]
                .as_f64()
                .map_or(serde_json::json!(1_000_000.0), |t| serde_json::json!(t)),
        ),
    ];
    for (key, value) in defaults {
        if cfg[key].is_null() {
            cfg[key] = value;
        }
    }
    Ok(serde_json::from_value(cfg)?)
}

/// A model run in-process by candle: a quantized GGUF file, or safetensors
/// weights.
///
/// Concurrent requests to a llama or qwen2 model are decoded together, up
/// to the batch limit; gemma3 answers one at a time. Cloning is cheap and
/// shares the model.
#[derive(Clone)]
pub struct CandleGenerator {
    shared: Arc<Shared>,
    /// The chat template (Jinja); a clone may use another on the same model.
    template: Arc<str>,
}

struct Shared {
    backend: Backend,
    vocab: Arc<Vocab>,
    bos_token: String,
    eos_token: String,
    device: Device,
    context_window: usize,
    model_id: String,
}

enum Weights {
    Batched(Decoder),
    Single(quantized_gemma3::ModelWeights),
}

/// What a loader found, before the backend starts.
struct Loaded {
    tokenizer: Tokenizer,
    template: String,
    bos_token: String,
    eos_token: String,
    stop_ids: Vec<u32>,
    device: Device,
    context_window: usize,
    model_id: String,
}

impl Loaded {
    /// The generator over `model`: a batched decoder gets its engine
    /// thread.
    fn start(self, model: Weights) -> anyhow::Result<CandleGenerator> {
        let vocab = Arc::new(Vocab {
            tokenizer: self.tokenizer,
            stop_ids: self.stop_ids,
        });
        let backend = match model {
            Weights::Batched(decoder) => {
                let settings = Arc::new(engine::Settings {
                    max_batch: AtomicUsize::new(DEFAULT_MAX_BATCH),
                    prefix_cache: AtomicBool::new(false),
                });
                let stats = Arc::new(BatchStats::default());
                let jobs = engine::start(decoder, vocab.clone(), settings.clone(), stats.clone())?;
                Backend::Batched {
                    jobs,
                    settings,
                    stats,
                }
            }
            Weights::Single(model) => Backend::Single(Box::new(Mutex::new(model))),
        };
        Ok(CandleGenerator {
            shared: Arc::new(Shared {
                backend,
                vocab,
                bos_token: self.bos_token,
                eos_token: self.eos_token,
                device: self.device,
                context_window: self.context_window,
                model_id: self.model_id,
            }),
            template: self.template.into(),
        })
    }
}

fn metadata_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok().cloned())
}

fn metadata_u32(content: &gguf_file::Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// ChatML, for GGUF files that carry no template of their own.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

impl CandleGenerator {
    /// Loads a model on the CPU: see [`CandleGenerator::load_on`].
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_on(path, &Device::Cpu)
    }

    /// Loads a GGUF file, or a folder of safetensors weights with its
    /// `config.json` and `tokenizer.json` (qwen2 family; bf16 on CUDA, f32 on
    /// the CPU). A GGUF's tokenizer is `tokenizer.json` beside the file when
    /// there is one, else built from the GGUF itself.
    pub fn load_on(path: &Path, device: &Device) -> Result<Self, LoadError> {
        Self::load_with(path, device, Precision::default())
    }

    /// [`CandleGenerator::load_on`], with a GGUF's llama or qwen2 weights
    /// held as `precision` says on the CPU (other models and devices ignore
    /// it).
    pub fn load_with(
        path: &Path,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        Self::read(path, device, precision).map_err(|e| LoadError {
            path: path.to_owned(),
            source: e.into(),
        })
    }

    fn read(path: &Path, device: &Device, precision: Precision) -> anyhow::Result<Self> {
        if path.is_dir() {
            return Self::load_safetensors(path, device);
        }
        let device = device.clone();
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("opening the model {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        let arch = metadata_string(&content, "general.architecture").unwrap_or_default();
        let tokenizer_json = path.with_file_name("tokenizer.json");
        let tokenizer = if tokenizer_json.exists() {
            Tokenizer::from_file(&tokenizer_json).map_err(anyhow::Error::msg)?
        } else {
            tokenizer_from_gguf(&content)?
        };
        // The template: the GGUF's own, else `tokenizer_config.json` beside
        // the file (Hugging Face's), else ChatML.
        let tokenizer_config: serde_json::Value =
            std::fs::read_to_string(path.with_file_name("tokenizer_config.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let template = metadata_string(&content, "tokenizer.chat_template")
            .or_else(|| {
                tokenizer_config["chat_template"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| CHATML.into());
        let token = |key: &str| {
            metadata_u32(&content, key)
                .and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let bos_token = token("tokenizer.ggml.bos_token_id");
        let eos_token = token("tokenizer.ggml.eos_token_id");
        let mut stop_ids: Vec<u32> = metadata_u32(&content, "tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect();
        for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = tokenizer.token_to_id(end) {
                stop_ids.push(id);
            }
        }
        let mut context_window =
            metadata_u32(&content, &format!("{arch}.context_length")).unwrap_or(2048) as usize;
        if arch == "gemma3" {
            // candle's quantized gemma3 masks its sliding-window layers only
            // while prefilling, not when decoding one token at a time: past
            // the window, decoding would attend to tokens it must not see.
            // So prompt and answer together stay inside the window.
            if let Some(window) = metadata_u32(&content, "gemma3.attention.sliding_window") {
                context_window = context_window.min(window as usize);
            }
        }
        let model = match arch.as_str() {
            "llama" | "qwen2" => Weights::Batched(
                Decoder::from_gguf(&content, &mut file, &device, precision)
                    .with_context(|| format!("loading {}", path.display()))?,
            ),
            "gemma3" => Weights::Single(quantized_gemma3::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            other => anyhow::bail!(
                "{}: model architecture {other:?} is not supported; supported: llama, qwen2, gemma3",
                path.display()
            ),
        };
        let model_id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Loaded {
            tokenizer,
            template,
            bos_token,
            eos_token,
            stop_ids,
            device,
            context_window,
            model_id,
        }
        .start(model)
    }

    fn load_safetensors(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let read_json = |name: &str| -> anyhow::Result<serde_json::Value> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        };
        let raw = read_json("config.json")?;
        let family = raw["model_type"].as_str().unwrap_or_default();
        anyhow::ensure!(
            family == "qwen2",
            "{}: model_type {family:?} is not supported for safetensors weights; supported: qwen2 (other families: use a GGUF file)",
            dir.display()
        );
        let config = qwen2_config(&raw)?;
        let dtype = if device.is_cuda() {
            match raw["torch_dtype"].as_str().or(raw["dtype"].as_str()) {
                Some("float16") => DType::F16,
                _ => DType::BF16,
            }
        } else {
            DType::F32
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        anyhow::ensure!(
            !files.is_empty(),
            "{}: no .safetensors files",
            dir.display()
        );
        // SAFETY: the files are mapped read-only and not changed while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
        let model = Weights::Batched(Decoder::from_qwen2(&config, vb)?);
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}/tokenizer.json: {e}", dir.display()))?;
        let tokenizer_config = read_json("tokenizer_config.json").unwrap_or_default();
        let special = |key: &str| -> String {
            let v = &tokenizer_config[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let template = tokenizer_config["chat_template"]
            .as_str()
            .map_or_else(|| CHATML.to_string(), str::to_string);
        let (bos_token, eos_token) = (special("bos_token"), special("eos_token"));
        let mut stop_ids: Vec<u32> = tokenizer.token_to_id(&eos_token).into_iter().collect();
        for end in ["<|im_end|>", "<|endoftext|>"] {
            stop_ids.extend(tokenizer.token_to_id(end));
        }
        Loaded {
            tokenizer,
            template,
            bos_token,
            eos_token,
            stop_ids,
            device: device.clone(),
            context_window: config.max_position_embeddings,
            model_id: dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
        .start(model)
    }

    /// The same model with another chat template (Jinja, as in a
    /// `tokenizer_config.json`): for base models, whose own template (if
    /// any) expects instruction tuning they do not have.
    /// The error says why the template does not parse.
    pub fn with_template(&self, template: &str) -> Result<Self, minijinja::Error> {
        minijinja::Environment::new().template_from_str(template)?;
        Ok(Self {
            shared: self.shared.clone(),
            template: template.into(),
        })
    }

    /// `cpu` or `cuda`.
    pub fn device_name(&self) -> &'static str {
        if self.shared.device.is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
    }

    /// The prompt text for `messages`, rendered by the model's own chat
    /// template.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, minijinja::Error> {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.template)?;
        let rendered = env.get_template("chat")?.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => &self.shared.bos_token,
            eos_token => &self.shared.eos_token,
        })?;
        Ok(rendered)
    }

    /// Tokens in `text` by this model's tokenizer.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.encode(text).len()
    }

    /// The token ids of `text`, as the model reads it in a prompt (control
    /// tokens spelled in the text become control tokens).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.shared
            .vocab
            .tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.shared
            .vocab
            .tokenizer
            .decode(ids, true)
            .unwrap_or_default()
    }

    /// Sets how many requests are decoded together at most (1: one at a
    /// time), for every clone of this model. Models that cannot batch
    /// (gemma3) ignore it.
    pub fn set_max_batch(&self, rows: usize) {
        if let Backend::Batched { settings, .. } = &self.shared.backend {
            settings.max_batch.store(rows.max(1), Ordering::Relaxed);
        }
    }

    /// Whether a prompt starts from the keys and values of the prompt
    /// before it where the two share their first tokens (every answer's
    /// prompt starts with the same system prompt and instructions). Off by
    /// default: the shorter prefill rounds differently in its last digits,
    /// so a greedy answer to the same prompt can differ between a cold and
    /// a warm cache. llama and qwen2 models; others ignore it.
    pub fn set_prefix_cache(&self, on: bool) {
        if let Backend::Batched { settings, .. } = &self.shared.backend {
            settings.prefix_cache.store(on, Ordering::Relaxed);
        }
    }

    /// Whether the prefix cache is on ([`CandleGenerator::set_prefix_cache`]).
    pub fn prefix_cache(&self) -> bool {
        match &self.shared.backend {
            Backend::Batched { settings, .. } => settings.prefix_cache.load(Ordering::Relaxed),
            Backend::Single(_) => false,
        }
    }

    /// How the model batched its decoding steps so far; `None` for models
    /// that cannot batch.
    pub fn batch_stats(&self) -> Option<&BatchStats> {
        match &self.shared.backend {
            Backend::Batched { stats, .. } => Some(stats),
            Backend::Single(_) => None,
        }
    }

    /// The prompt's token ids, checked against the context window.
    fn prompt_ids(&self, request: &GenerationRequest) -> anyhow::Result<Vec<u32>> {
        let prompt = self.render(&request.messages)?;
        let ids = self
            .shared
            .vocab
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(anyhow::Error::msg)?
            .get_ids()
            .to_vec();
        anyhow::ensure!(
            ids.len() + request.max_tokens <= self.shared.context_window,
            "the prompt ({} tokens) plus the answer ({} tokens) exceeds the model's context of {} tokens",
            ids.len(),
            request.max_tokens,
            self.shared.context_window
        );
        Ok(ids)
    }

    /// Generates with a model that cannot batch, on the calling thread,
    /// holding its lock.
    fn run_single(
        &self,
        model: &Mutex<quantized_gemma3::ModelWeights>,
        request: GenerationRequest,
        prompt_ids: Vec<u32>,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<Generation> {
        let mut model = model.lock().unwrap_or_else(|p| p.into_inner());
        let device = &self.shared.device;
        let mut input = Tensor::new(prompt_ids.as_slice(), device)?.unsqueeze(0)?;
        let mut seq = Sequence::new(request, prompt_ids);
        let mut pos = 0;
        if !seq.is_empty() {
            loop {
                // Its cache starts over when a pass starts at position 0.
                let logits = model.forward(&input, pos)?.squeeze(0)?;
                pos += input.dim(1)?;
                match seq.step(&logits, &self.shared.vocab, sink)? {
                    Some(next) => input = Tensor::new(&[next], device)?.unsqueeze(0)?,
                    None => break,
                }
            }
        }
        Ok(seq.finish(sink))
    }
}

#[async_trait]
impl Generator for CandleGenerator {
    fn model_id(&self) -> &str {
        &self.shared.model_id
    }

    fn context_window(&self) -> usize {
        self.shared.context_window
    }

    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize> {
        let prompt = self
            .render(messages)
            .map_err(|e| Error::internal("rendering the chat template").with_source(e))?;
        Ok(CandleGenerator::count_tokens(self, &prompt))
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(CandleGenerator::count_tokens(self, text))
    }

    /// Text goes to `sink` as it is decoded. Text that could be the start
    /// of a stop sequence, or an incomplete UTF-8 character, is held back
    /// until it is settled. When the caller stops listening (drops this
    /// future), generation stops.
    async fn generate_stream(
        &self,
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Generation> {
        let failed = |e: anyhow::Error| Error::internal("generation failed").with_source(e);
        let prompt_ids = self.prompt_ids(&request).map_err(failed)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let outcome = match &self.shared.backend {
            Backend::Batched { jobs, .. } => {
                let (done, result) = tokio::sync::oneshot::channel();
                jobs.send(Job {
                    request,
                    prompt_ids,
                    pieces: tx,
                    done,
                })
                .map_err(|_| Error::internal("the generator's engine has stopped"))?;
                while let Some(piece) = rx.recv().await {
                    sink(&piece);
                }
                result
                    .await
                    .map_err(|_| Error::internal("the generator's engine has stopped"))?
            }
            Backend::Single(_) => {
                let this = self.clone();
                let worker = tokio::task::spawn_blocking(move || {
                    let Backend::Single(model) = &this.shared.backend else {
                        unreachable!("matched above")
                    };
                    // The receiver goes away when the caller stopped listening.
                    this.run_single(model, request, prompt_ids, &mut |piece| {
                        tx.send(piece.to_string()).is_ok()
                    })
                });
                while let Some(piece) = rx.recv().await {
                    sink(&piece);
                }
                worker
                    .await
                    .map_err(|e| Error::internal("the generation task failed").with_source(e))?
            }
        };
        outcome.map_err(failed)
    }
}
