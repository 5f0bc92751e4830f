//! The `rag` service as a library: the wiring of the crates ([`app`]), the
//! settings ([`config`]), the HTTP API ([`http`]), MCP ([`mcp`]), the command line
//! ([`cli`]) and the operations behind some commands ([`ops`]: models,
//! benchmarks, evaluations, the cluster). The binary (`main.rs`) only
//! parses the command line and calls [`cli::run`].

pub mod app;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod ops;

pub use rag_inference::candle_threads;
