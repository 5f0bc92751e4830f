//! Grounded answers: the prompt, the model, and the checks on what it said.
//!
//! - [`grounding`]: numbered passages in, citations checked out. Pure
//!   functions, shared by every backend.
//! - [`CandleGenerator`]: quantized GGUF models (llama, qwen2 families) run
//!   in-process with candle.

mod candle_backend;
mod gguf_tokenizer;
pub mod grounding;

pub use candle_backend::CandleGenerator;
pub use gguf_tokenizer::tokenizer_from_gguf;
