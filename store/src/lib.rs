//! Storage engines behind the `VectorStore` and `DocumentStore` traits.
//!
//! - [`EdgeVectorStore`]: Qdrant's in-process engine (`qdrant-edge`), the
//!   embedded default.
//! - [`QdrantServerStore`]: a Qdrant server or cluster over gRPC, the same
//!   behaviour for the cluster scale.
//! - [`SqlDocumentStore`]: documents and chunks in SQL through sqlx, on
//!   SQLite (embedded) or Postgres (cluster), with one set of migrations.

mod edge;
mod fusion;
pub mod server;
mod settings;
mod sharded;
mod sql;

pub use edge::{EdgeVectorStore, HnswBuild};
pub use server::{QdrantServerStore, ServerSettings};
pub use settings::VectorStoreSettings;
pub use sharded::ShardedEdgeStore;
pub use sql::SqlDocumentStore;

/// Test helpers shared with other crates' tests.
#[doc(hidden)]
pub mod testing {
    use sqlx::any::{AnyPoolOptions, install_default_drivers};

    /// A new, empty database on the test Postgres server that
    /// `RAG_TEST_POSTGRES_URL` names (scripts/start-postgres.sh starts one),
    /// as a URL. `None` (the test skips, and says so) when the variable is
    /// not set, unless `RAG_REQUIRE_POSTGRES` is (as `.ci/run` does): then
    /// a missing server is a failure.
    pub async fn postgres_database(prefix: &str) -> Option<String> {
        let Ok(server) = std::env::var("RAG_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("RAG_REQUIRE_POSTGRES").is_none(),
                "RAG_REQUIRE_POSTGRES is set but RAG_TEST_POSTGRES_URL is not"
            );
            eprintln!("skipped: RAG_TEST_POSTGRES_URL is not set");
            return None;
        };
        install_default_drivers();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&server)
            .await
            .expect("the test Postgres server answers");
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("creating a test database");
        let (base, _) = server.rsplit_once('/').expect("a database URL");
        Some(format!("{base}/{name}"))
    }
}
