use async_trait::async_trait;
use rag_core::{ApiKeyRecord, ChunkRecord, DocumentRecord, DocumentStore, Error, KeyRole, Result};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Documents and chunks in SQL. The statements are written once for both
/// SQLite and Postgres (through sqlx's `Any` driver and `$n` placeholders).
pub struct SqlDocumentStore {
    pool: AnyPool,
}

fn db_error(e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("metadata database: {e}"))
}

impl SqlDocumentStore {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`) and
    /// runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 8 })
            // When the database is down, a request fails (503) within
            // seconds instead of waiting out sqlx's 30 s default.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never block the writer; a crash leaves
                        // only committed transactions.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| db_error(format!("connecting to {url}: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| db_error(format!("migrating: {e}")))?;
        Ok(Self { pool })
    }
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).expect("a list of strings serialises")
}

fn parse_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn document_from_row(row: &sqlx::any::AnyRow) -> Result<DocumentRecord> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    Ok(DocumentRecord {
        id: get("id")?,
        collection: get("collection")?,
        source: get("source")?,
        title: get("title")?,
        content_hash: get("content_hash")?,
        tags: parse_list(&get("tags")?),
        groups: parse_list(&get("access_groups")?),
        chunk_count: row.try_get::<i64, _>("chunk_count").map_err(db_error)? as usize,
        ingested_at: get("ingested_at")?,
    })
}

fn key_from_row(row: &sqlx::any::AnyRow) -> Result<ApiKeyRecord> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    let role = get("role")?;
    Ok(ApiKeyRecord {
        id: get("id")?,
        name: get("name")?,
        key_hash: get("key_hash")?,
        role: KeyRole::parse(&role)
            .ok_or_else(|| db_error(format!("api_keys: unknown role {role:?}")))?,
        groups: parse_list(&get("groups_json")?),
        created_at: get("created_at")?,
        revoked_at: row
            .try_get::<Option<String>, _>("revoked_at")
            .map_err(db_error)?,
    })
}

fn chunk_from_row(row: &sqlx::any::AnyRow) -> Result<ChunkRecord> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    Ok(ChunkRecord {
        id: get("id")?,
        document_id: get("document_id")?,
        ordinal: row.try_get::<i64, _>("ordinal").map_err(db_error)? as usize,
        text: get("body")?,
        heading: get("heading")?,
        page: row
            .try_get::<Option<i64>, _>("page")
            .map_err(db_error)?
            .map(|p| p as u32),
        token_count: row.try_get::<i64, _>("token_count").map_err(db_error)? as usize,
    })
}

/// Deletes a document's row and its chunks' rows inside `tx`.
async fn delete_rows(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM chunks WHERE document_id = $1",
        "DELETE FROM documents WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

fn ids_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<String>> {
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map_err(db_error))
        .collect()
}

const DOC_COLUMNS: &str =
    "id, collection, source, title, content_hash, tags, access_groups, chunk_count, ingested_at";

#[async_trait]
impl DocumentStore for SqlDocumentStore {
    async fn document_by_source(
        &self,
        collection: &str,
        source: &str,
    ) -> Result<Option<DocumentRecord>> {
        let sql =
            format!("SELECT {DOC_COLUMNS} FROM documents WHERE collection = $1 AND source = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(collection)
            .bind(source)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.as_ref().map(document_from_row).transpose()
    }

    async fn document(&self, id: &str) -> Result<Option<DocumentRecord>> {
        let sql = format!("SELECT {DOC_COLUMNS} FROM documents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.as_ref().map(document_from_row).transpose()
    }

    async fn documents_page(
        &self,
        collection: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<DocumentRecord>, usize)> {
        // One statement shape for both cases: `$1 IS NULL` turns the
        // collection filter off.
        let sql = format!(
            "SELECT {DOC_COLUMNS} FROM documents WHERE ($1 IS NULL OR collection = $1) \
             ORDER BY collection, source LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(collection)
            .bind(limit as i64)
            .bind(offset as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let total = sqlx::query(
            "SELECT COUNT(*) AS n FROM documents WHERE ($1 IS NULL OR collection = $1)",
        )
        .bind(collection)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?
        .try_get::<i64, _>("n")
        .map_err(db_error)? as usize;
        Ok((
            rows.iter().map(document_from_row).collect::<Result<_>>()?,
            total,
        ))
    }

    async fn documents(&self, collection: Option<&str>) -> Result<Vec<DocumentRecord>> {
        let rows = match collection {
            Some(c) => {
                let sql = format!(
                    "SELECT {DOC_COLUMNS} FROM documents WHERE collection = $1 ORDER BY source"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(c)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                let sql =
                    format!("SELECT {DOC_COLUMNS} FROM documents ORDER BY collection, source");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db_error)?;
        rows.iter().map(document_from_row).collect()
    }

    async fn chunk_ids_of(&self, document_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM chunks WHERE document_id = $1 ORDER BY ordinal")
            .bind(document_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        ids_of(&rows)
    }

    async fn replace_document(&self, doc: &DocumentRecord, chunks: &[ChunkRecord]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        delete_rows(&mut tx, &doc.id).await?;
        sqlx::query(
            "INSERT INTO documents (id, collection, source, title, content_hash, tags, \
             access_groups, chunk_count, ingested_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&doc.id)
        .bind(&doc.collection)
        .bind(&doc.source)
        .bind(&doc.title)
        .bind(&doc.content_hash)
        .bind(json_list(&doc.tags))
        .bind(json_list(&doc.groups))
        .bind(chunks.len() as i64)
        .bind(&doc.ingested_at)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        for chunk in chunks {
            sqlx::query(
                "INSERT INTO chunks (id, document_id, ordinal, body, heading, page, token_count) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&chunk.id)
            .bind(&doc.id)
            .bind(chunk.ordinal as i64)
            .bind(&chunk.text)
            .bind(&chunk.heading)
            .bind(chunk.page.map(i64::from))
            .bind(chunk.token_count as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn delete_document(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        delete_rows(&mut tx, id).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn chunks(&self, ids: &[String]) -> Result<Vec<ChunkRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        // Bounded IN lists keep under every driver's parameter limit.
        for batch in ids.chunks(200) {
            let placeholders: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, document_id, ordinal, body, heading, page, token_count FROM chunks \
                 WHERE id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in batch {
                query = query.bind(id);
            }
            let rows = query.fetch_all(&self.pool).await.map_err(db_error)?;
            for row in &rows {
                out.push(chunk_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn chunk_at(&self, document_id: &str, ordinal: usize) -> Result<Option<ChunkRecord>> {
        let row = sqlx::query(
            "SELECT id, document_id, ordinal, body, heading, page, token_count FROM chunks \
             WHERE document_id = $1 AND ordinal = $2",
        )
        .bind(document_id)
        .bind(ordinal as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.as_ref().map(chunk_from_row).transpose()
    }

    async fn chunk_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM chunks")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        ids_of(&rows)
    }

    async fn document_count(&self) -> Result<usize> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM documents")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.try_get::<i64, _>("n").map_err(db_error)? as usize)
    }

    async fn start_run(&self, started_at: &str) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query("INSERT INTO ingest_runs (id, started_at) VALUES ($1, $2)")
            .bind(&id)
            .bind(started_at)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(id)
    }

    async fn create_key(&self, key: &ApiKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, role, groups_json, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(key.role.as_str())
        .bind(json_list(&key.groups))
        .bind(&key.created_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, key_hash, role, groups_json, created_at, revoked_at FROM api_keys \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, name, key_hash, role, groups_json, created_at, revoked_at FROM api_keys \
             WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_key(&self, id: &str, revoked_at: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(revoked_at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn finish_run(&self, run_id: &str, finished_at: &str, report_json: &str) -> Result<()> {
        sqlx::query("UPDATE ingest_runs SET finished_at = $1, report = $2 WHERE id = $3")
            .bind(finished_at)
            .bind(report_json)
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(source: &str, hash: &str) -> DocumentRecord {
        DocumentRecord {
            id: rag_core::document_id("default", source),
            collection: "default".into(),
            source: source.into(),
            title: "T".into(),
            content_hash: hash.into(),
            tags: vec!["a".into()],
            groups: vec!["hr".into()],
            chunk_count: 0,
            ingested_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn chunk(doc: &DocumentRecord, ordinal: usize, text: &str) -> ChunkRecord {
        ChunkRecord {
            id: rag_core::chunk_id(&doc.id, text, 0),
            document_id: doc.id.clone(),
            ordinal,
            text: text.into(),
            heading: "H".into(),
            page: (ordinal == 1).then_some(2),
            token_count: 3,
        }
    }

    #[tokio::test]
    async fn replace_and_delete_documents_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
        exercise(&url).await;
    }

    /// The same on Postgres: `RAG_TEST_POSTGRES_URL` names a server
    /// (scripts/start-postgres.sh starts one); each run gets a new database.
    /// Without it the test is skipped, unless `RAG_REQUIRE_POSTGRES` is set
    /// (as `.ci/run` does), which makes a missing server a failure.
    #[tokio::test]
    async fn replace_and_delete_documents_on_postgres() {
        let Ok(server) = std::env::var("RAG_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("RAG_REQUIRE_POSTGRES").is_none(),
                "RAG_REQUIRE_POSTGRES is set but RAG_TEST_POSTGRES_URL is not"
            );
            eprintln!("skipped: RAG_TEST_POSTGRES_URL is not set");
            return;
        };
        install_default_drivers();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&server)
            .await
            .expect("the test Postgres server answers");
        let name = format!("rag_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let (base, _) = server.rsplit_once('/').unwrap();
        exercise(&format!("{base}/{name}")).await;
    }

    async fn exercise(url: &str) {
        let store = SqlDocumentStore::connect(url).await.unwrap();
        let d = doc("a.md", "h1");
        let chunks = vec![chunk(&d, 0, "one"), chunk(&d, 1, "two")];
        store.replace_document(&d, &chunks).await.unwrap();
        let got = store
            .document_by_source("default", "a.md")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.chunk_count, 2);
        assert_eq!(got.groups, ["hr"]);
        let ids = store.chunk_ids_of(&d.id).await.unwrap();
        assert_eq!(ids, [chunks[0].id.clone(), chunks[1].id.clone()]);
        let mut fetched = store.chunks(&ids).await.unwrap();
        fetched.sort_by_key(|c| c.ordinal);
        assert_eq!(fetched, chunks);

        // Replacing swaps the chunk set whole.
        let d2 = doc("a.md", "h2");
        let new_chunks = vec![chunk(&d2, 0, "three")];
        store.replace_document(&d2, &new_chunks).await.unwrap();
        assert_eq!(store.chunk_ids().await.unwrap(), [new_chunks[0].id.clone()]);
        assert_eq!(
            store.document(&d.id).await.unwrap().unwrap().content_hash,
            "h2"
        );

        // Pages, with and without a collection filter; chunk by ordinal.
        let other = DocumentRecord {
            collection: "other".into(),
            ..doc("b.md", "h")
        };
        store.replace_document(&other, &[]).await.unwrap();
        let (page, total) = store.documents_page(None, 0, 1).await.unwrap();
        assert_eq!((page.len(), total), (1, 2));
        assert_eq!(page[0].source, "a.md");
        let (page, total) = store.documents_page(None, 1, 10).await.unwrap();
        assert_eq!((page[0].source.as_str(), total), ("b.md", 2));
        let (page, total) = store.documents_page(Some("other"), 0, 10).await.unwrap();
        assert_eq!((page.len(), total), (1, 1));
        assert_eq!(
            store.chunk_at(&d.id, 0).await.unwrap().unwrap().text,
            "three"
        );
        assert!(store.chunk_at(&d.id, 1).await.unwrap().is_none());
        store.delete_document(&other.id).await.unwrap();

        store.delete_document(&d.id).await.unwrap();
        assert!(store.chunk_ids().await.unwrap().is_empty());
        assert_eq!(store.document_count().await.unwrap(), 0);

        // Reopening runs the migrations again without harm.
        drop(store);
        let store = SqlDocumentStore::connect(url).await.unwrap();
        let run = store.start_run("t0").await.unwrap();
        store.finish_run(&run, "t1", "{}").await.unwrap();
    }
}
