//! From files to stored, embedded chunks.
//!
//! `load` turns a file into a [`LoadedDocument`] (title, tags, clean text),
//! `chunk` splits it into passages sized in the embedder's own tokens, and
//! [`Ingestor`] writes vectors and rows so that a crash at any moment leaves
//! a store that the next run repairs (see ARCHITECTURE.md, "Ingest order").

mod chunk;
mod docx;
mod formats;
#[doc(hidden)]
pub mod fuzzing;
mod load;
mod pipeline;
mod reembed;
mod settings;
pub mod sources;
mod writer;

pub use chunk::{ChunkOptions, Chunker, TextChunk};
pub use load::{
    Limits, LoadedDocument, SUPPORTED_EXTENSIONS, extension, load_bytes, load_file, load_text,
};
pub use pipeline::{
    Content, DocumentOutcome, IngestOptions, IngestReport, Ingestor, Input, Progress,
    collect_files, embedding_text,
};
pub use reembed::{ReembedReport, rebuild_vectors};
pub use settings::{IngestSettings, SourcesSettings};
pub use writer::{WRITER_TIMEOUT_S, delete_unreferenced, repair, target};

/// Test helpers shared with the end-to-end tests.
#[doc(hidden)]
pub mod testing {
    pub use crate::docx::fixture::{Block as DocxBlock, build as build_docx};
    pub use crate::formats::pdf_fixture::{build as build_pdf, bytes as pdf_bytes};
    pub use lopdf;

    /// A tokenizer where every whitespace-separated word is one token, for
    /// tests that chunk without a model.
    pub fn word_tokenizer() -> tokenizers::Tokenizer {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0},"unk_token":"[UNK]"}}"#;
        json.parse().expect("a valid tokenizer")
    }
}
