//! Storage engines behind the `VectorStore` and `DocumentStore` traits.
//!
//! - [`EdgeVectorStore`]: Qdrant's in-process engine (`qdrant-edge`), the
//!   embedded default.
//! - [`QdrantServerStore`]: a Qdrant server or cluster over gRPC, the same
//!   behaviour for the cluster scale.
//! - [`SqlDocumentStore`]: documents and chunks in SQL through sqlx, on
//!   SQLite (embedded) or Postgres (cluster), with one set of migrations.

mod edge;
pub mod server;
mod sql;

pub use edge::EdgeVectorStore;
pub use server::{QdrantServerStore, ServerSettings};
pub use sql::SqlDocumentStore;
