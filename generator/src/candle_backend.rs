use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use rag_core::{
    ChatMessage, Error, FinishReason, Generation, GenerationRequest, Generator, Result,
};
use tokenizers::Tokenizer;

use crate::tokenizer_from_gguf;

/// How many recent tokens the repetition penalty looks at.
const REPEAT_LAST_N: usize = 64;

enum Model {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Model {
    fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Model::Llama(m) => m.forward(input, pos),
            Model::Qwen2(m) => m.forward(input, pos),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            Model::Llama(m) => m.clear_kv_cache(),
            Model::Qwen2(m) => m.clear_kv_cache(),
        }
    }
}

/// A quantized GGUF model run in-process by candle.
///
/// One generation at a time per loaded model: requests queue on its lock.
/// Cloning is cheap and shares the model.
#[derive(Clone)]
pub struct CandleGenerator {
    shared: Arc<Shared>,
}

struct Shared {
    model: Mutex<Model>,
    tokenizer: Tokenizer,
    template: String,
    bos_token: String,
    eos_token: String,
    stop_ids: Vec<u32>,
    device: Device,
    context_window: usize,
    model_id: String,
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
    /// Loads a GGUF model on the CPU. The tokenizer is `tokenizer.json`
    /// beside the file when there is one, else built from the GGUF itself.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let device = Device::Cpu;
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
        let template =
            metadata_string(&content, "tokenizer.chat_template").unwrap_or_else(|| CHATML.into());
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
        let context_window =
            metadata_u32(&content, &format!("{arch}.context_length")).unwrap_or(2048) as usize;
        let model = match arch.as_str() {
            "llama" => Model::Llama(quantized_llama::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            "qwen2" => Model::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            other => anyhow::bail!(
                "{}: model architecture {other:?} is not supported; supported: llama, qwen2",
                path.display()
            ),
        };
        let model_id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            shared: Arc::new(Shared {
                model: Mutex::new(model),
                tokenizer,
                template,
                bos_token,
                eos_token,
                stop_ids,
                device,
                context_window,
                model_id,
            }),
        })
    }

    /// The prompt text for `messages`, rendered by the model's own chat
    /// template.
    pub fn render(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
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
        env.add_template("chat", &self.shared.template)?;
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
        self.shared
            .tokenizer
            .encode(text, false)
            .map(|e| e.len())
            .unwrap_or(0)
    }

    fn run(&self, request: &GenerationRequest) -> anyhow::Result<Generation> {
        let prompt = self.render(&request.messages)?;
        let prompt_ids = self
            .shared
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(anyhow::Error::msg)?
            .get_ids()
            .to_vec();
        anyhow::ensure!(
            prompt_ids.len() + request.max_tokens <= self.shared.context_window,
            "the prompt ({} tokens) plus the answer ({} tokens) exceeds the model's context of {} tokens",
            prompt_ids.len(),
            request.max_tokens,
            self.shared.context_window
        );
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
        let mut sampler = LogitsProcessor::from_sampling(request.seed, sampling);
        let mut model = self.shared.model.lock().unwrap_or_else(|p| p.into_inner());
        model.clear_kv_cache();

        let mut tokens = prompt_ids.clone();
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        let mut input = Tensor::new(prompt_ids.as_slice(), &self.shared.device)?.unsqueeze(0)?;
        let mut pos = 0;
        while generated.len() < request.max_tokens {
            let logits = model.forward(&input, pos)?.squeeze(0)?;
            pos += input.dim(1)?;
            let logits = if request.repeat_penalty == 1.0 {
                logits
            } else {
                let start = tokens.len().saturating_sub(REPEAT_LAST_N);
                candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    request.repeat_penalty,
                    &tokens[start..],
                )?
            };
            let next = sampler.sample(&logits)?;
            if self.shared.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            tokens.push(next);
            generated.push(next);
            text = self
                .shared
                .tokenizer
                .decode(&generated, true)
                .map_err(anyhow::Error::msg)?;
            if let Some(cut) = request
                .stop
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(cut);
                finish = FinishReason::Stop;
                break;
            }
            input = Tensor::new(&[next], &self.shared.device)?.unsqueeze(0)?;
        }
        Ok(Generation {
            text: text.trim().to_string(),
            prompt_tokens: prompt_ids.len(),
            completion_tokens: generated.len(),
            finish_reason: finish,
        })
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

    async fn generate(&self, request: GenerationRequest) -> Result<Generation> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.run(&request))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| Error::internal(format!("generation failed: {e:#}")))
    }
}
