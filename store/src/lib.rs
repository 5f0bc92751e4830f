//! Storage engines behind the `VectorStore` and `DocumentStore` traits.
//!
//! - [`EdgeVectorStore`]: Qdrant's in-process engine (`qdrant-edge`), the
//!   embedded default.
//! - [`SqlDocumentStore`]: documents and chunks in SQL through sqlx, on
//!   SQLite (embedded) or Postgres (cluster), with one set of migrations.

mod edge;
mod sql;

pub use edge::EdgeVectorStore;
pub use sql::SqlDocumentStore;
