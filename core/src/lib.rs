//! Shared types and the traits every backend implements.
//!
//! This crate does no IO: it names what the system talks about (documents,
//! chunks, hits, answers) and the seams between stages (`Embedder`,
//! `VectorStore`, `DocumentStore`, `Generator`). Concrete engines live in
//! other crates and are wired together by `rag-api`.

mod error;
mod ids;
pub mod testing;
mod traits;
mod types;

pub use error::{BoxError, Error, ErrorKind, Result};
pub use ids::{chunk_id, document_id};
pub use traits::{
    DocumentStore, Embedder, Generator, ReferenceLock, Reranker, TextSink, VectorStore, WriterLease,
};
pub use types::*;
