//! Inference: the models behind `rag_core::Generator`.
//!
//! - [`CandleGenerator`]: quantized GGUF models (llama, qwen2, gemma3
//!   families) and qwen2 safetensors weights run in-process with candle, on
//!   the CPU or (feature `cuda`) a GPU. Concurrent requests to llama and
//!   qwen2 models are decoded together in one batch (`engine.rs` over
//!   `batched.rs`).
//! - [`OpenAiGenerator`]: any OpenAI-compatible server (vLLM, TGI, Ollama,
//!   llama.cpp, another `rag serve`).

mod batched;
pub mod bench;
mod candle_backend;
mod decode_attention;
mod engine;
mod gguf_tokenizer;
mod openai;
mod qgemm;
mod qgemv;
mod settings;

pub use batched::Precision;
pub use candle_backend::{CandleGenerator, DEFAULT_MAX_BATCH, LoadError};
pub use engine::BatchStats;
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use openai::{OpenAiConfig, OpenAiGenerator};
pub use settings::{Backend, CandleSettings, Device, OpenAiSettings};

/// Prompts on AMX tiles (`qgemv.rs`) where this CPU and kernel have
/// AMX-INT8, for the whole process: the same products as without, to the
/// bit. Returns whether prompts will use them.
pub fn use_amx(on: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    return qgemv::amx::set(on);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = on;
        false
    }
}

/// The number of threads candle's CPU kernels use: `RAYON_NUM_THREADS`,
/// else the physical cores (which candle looks up again at every call).
pub fn candle_threads() -> usize {
    candle_core::utils::get_num_threads()
}
