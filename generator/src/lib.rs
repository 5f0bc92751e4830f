//! Grounded answers: the prompt, the model, and the checks on what it said.
//!
//! - [`grounding`]: numbered passages in, citations checked out. Pure
//!   functions, shared by every backend.
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
pub mod grounding;
mod openai;
mod qgemv;

pub use candle_backend::{CandleGenerator, DEFAULT_MAX_BATCH, device};
pub use engine::BatchStats;
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use openai::{OpenAiConfig, OpenAiGenerator};

/// The number of threads candle's CPU kernels use: `RAYON_NUM_THREADS`,
/// else the physical cores (which candle looks up again at every call).
pub fn candle_threads() -> usize {
    candle_core::utils::get_num_threads()
}
