//! Grounded answers: the prompt, the model, and the checks on what it said.
//!
//! - [`grounding`]: numbered passages in, citations checked out. Pure
//!   functions, shared by every backend.
//! - [`CandleGenerator`]: quantized GGUF models (llama, qwen2, gemma3
//!   families) and qwen2 safetensors weights run in-process with candle, on
//!   the CPU or (feature `cuda`) a GPU.
//! - [`OpenAiGenerator`]: any OpenAI-compatible server (vLLM, TGI, Ollama,
//!   llama.cpp, another `rag serve`).

pub mod bench;
mod candle_backend;
mod gguf_tokenizer;
pub mod grounding;
mod openai;

pub use candle_backend::{CandleGenerator, device};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use openai::{OpenAiConfig, OpenAiGenerator};
