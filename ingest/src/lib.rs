//! From files to stored, embedded chunks.
//!
//! `load` turns a file into a [`LoadedDocument`] (title, tags, clean text),
//! `chunk` splits it into passages sized in the embedder's own tokens, and
//! [`Ingestor`] writes vectors and rows so that a crash at any moment leaves
//! a store that the next run repairs (see ARCHITECTURE.md, "Ingest order").

mod chunk;
pub mod form;
mod formats;
#[doc(hidden)]
pub mod fuzzing;
mod load;
mod pipeline;

pub use chunk::{ChunkOptions, Chunker, TextChunk};
pub use load::{Limits, LoadedDocument, SUPPORTED_EXTENSIONS, load_bytes, load_file, load_text};
pub use pipeline::{
    DocumentOutcome, IngestOptions, IngestReport, Ingestor, Input, Progress, WRITER_TIMEOUT_S,
    collect_files, delete_unreferenced, embedding_text, repair, target,
};

/// Test helpers shared with the end-to-end tests.
#[doc(hidden)]
pub mod testing {
    pub use crate::formats::pdf_fixture::{build as build_pdf, bytes as pdf_bytes};
    pub use lopdf;
}
