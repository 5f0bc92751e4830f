use async_trait::async_trait;
use rag_core::{
    AnswerRecord, ApiKeyRecord, BoxError, ChunkRecord, DocumentRecord, DocumentStore,
    EmbedderRecord, Error, KeyRole, ReferenceLock, Result, SourceRecord, WriterLease,
};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Documents and chunks in SQL. The statements are written once for both
/// SQLite and Postgres (through sqlx's `Any` driver and `$n` placeholders).
pub struct SqlDocumentStore {
    pool: AnyPool,
    /// The database's clock in unix seconds: writers' heartbeats are judged
    /// on one clock, whatever the writers' own clocks say.
    now: &'static str,
}

const SQLITE_NOW: &str = "CAST(strftime('%s', 'now') AS BIGINT)";
const POSTGRES_NOW: &str = "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)";
/// Ids bound per statement: under every driver's parameter limit.
const BATCH: usize = 200;

fn db_error(e: impl Into<BoxError>) -> Error {
    Error::unavailable("the metadata database is unavailable").with_source(e)
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
            // Not the URL: it may hold a password.
            .map_err(|e| {
                Error::unavailable("connecting to the metadata database").with_source(e)
            })?;
        // Processes that share a SQLite file migrate one at a time (sqlx
        // locks Postgres itself, not SQLite): the others wait, then find
        // the migrations applied.
        let _migrating = match sqlite_path(url) {
            Some(db) => Some(lock_file(db.with_extension("migrate.lock")).await?),
            None => None,
        };
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::unavailable("migrating the metadata database").with_source(e))?;
        Ok(Self {
            pool,
            now: if sqlite { SQLITE_NOW } else { POSTGRES_NOW },
        })
    }
}

/// The file a `sqlite:` URL names; `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// Takes an exclusive lock on `path` (created if missing), waiting for
/// another process that holds it; released when the file is dropped.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        // Read-only once it exists: a lock needs no write access, and the
        // file may belong to another user (the sync jobs run as their own).
        let file = match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?,
            opened => opened?,
        };
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| Error::internal("locking the metadata database").with_source(e))?
    .map_err(|e: std::io::Error| {
        Error::unavailable("locking the metadata database for its migrations").with_source(e)
    })
}

/// `$from, $from+1, ...`: `n` placeholders.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Takes the vector-deletion lock inside `tx` (a row lock on Postgres, the
/// write lock on SQLite), held until the transaction ends.
async fn take_vector_lock(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    sqlx::query("UPDATE vector_lock SET taken = taken + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Deletes the writers whose heartbeat is older than `timeout_s`, and the
/// marks of writers that are gone; returns how many writers.
async fn forget_dead(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    now: &str,
    timeout_s: i64,
) -> Result<usize> {
    // Marks, then writers: the order `retire_writer` deletes in, so the
    // two never wait on each other's rows.
    let marks = format!(
        "DELETE FROM inflight_chunks WHERE writer_id NOT IN \
         (SELECT id FROM ingest_writers WHERE heartbeat_at >= {now} - $1)"
    );
    sqlx::query(sqlx::AssertSqlSafe(marks))
        .bind(timeout_s)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    let writers = format!("DELETE FROM ingest_writers WHERE heartbeat_at < {now} - $1");
    let gone = sqlx::query(sqlx::AssertSqlSafe(writers))
        .bind(timeout_s)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?
        .rows_affected();
    Ok(gone as usize)
}

/// Writes a document's row and its chunks' rows inside `tx`, replacing
/// what it had.
async fn write_document(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    doc: &DocumentRecord,
    chunks: &[ChunkRecord],
) -> Result<()> {
    delete_rows(tx, &doc.id).await?;
    sqlx::query(
        "INSERT INTO documents (id, collection, source, title, content_hash, tags, \
         access_groups, chunk_count, ingested_at, url, origin) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
    .bind(doc.url.as_deref())
    .bind(doc.origin.as_deref())
    .execute(&mut **tx)
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
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// The vector-deletion lock: an open transaction that holds it.
struct SqlReferenceLock {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

#[async_trait]
impl ReferenceLock for SqlReferenceLock {
    async fn unreferenced(&mut self, chunk_ids: &[String]) -> Result<Vec<String>> {
        // Writers taken for dead are removed for good before this, in a
        // transaction of their own (`forget_dead_writers`, committed
        // before any vector goes): their next heartbeat finds no row and
        // they stop, and their commits are refused (`commit_document`).
        // Every writer still registered counts as live, judged once.
        let mut referenced = std::collections::HashSet::new();
        for batch in chunk_ids.chunks(BATCH) {
            let committed = format!(
                "SELECT id FROM chunks WHERE id IN ({})",
                placeholders(1, batch.len())
            );
            let in_flight = format!(
                "SELECT i.chunk_id AS id FROM inflight_chunks i \
                 JOIN ingest_writers w ON w.id = i.writer_id WHERE i.chunk_id IN ({})",
                placeholders(1, batch.len())
            );
            // Marks first, then rows: a writer commits a document's rows
            // before it clears their marks (outside this lock), so read the
            // other way round a chunk could pass between the two reads and
            // be in neither.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(in_flight));
            for id in batch {
                q = q.bind(id);
            }
            referenced.extend(ids_of(
                &q.fetch_all(&mut *self.tx).await.map_err(db_error)?,
            )?);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(committed));
            for id in batch {
                q = q.bind(id);
            }
            referenced.extend(ids_of(
                &q.fetch_all(&mut *self.tx).await.map_err(db_error)?,
            )?);
        }
        Ok(chunk_ids
            .iter()
            .filter(|id| !referenced.contains(*id))
            .cloned()
            .collect())
    }

    async fn release(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(db_error)
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
        url: row.try_get::<Option<String>, _>("url").map_err(db_error)?,
        origin: row
            .try_get::<Option<String>, _>("origin")
            .map_err(db_error)?,
    })
}

fn source_from_row(row: &sqlx::any::AnyRow) -> Result<SourceRecord> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    Ok(SourceRecord {
        name: get("name")?,
        kind: get("kind")?,
        config: get("config")?,
        collection: get("collection")?,
        tags: parse_list(&get("tags")?),
        groups: parse_list(&get("access_groups")?),
        state: get("state")?,
        created_at: get("created_at")?,
        synced_at: row
            .try_get::<Option<String>, _>("synced_at")
            .map_err(db_error)?,
    })
}

fn answer_from_row(row: &sqlx::any::AnyRow) -> Result<AnswerRecord> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    let opt = |c: &str| row.try_get::<Option<String>, _>(c).map_err(db_error);
    Ok(AnswerRecord {
        id: get("id")?,
        key_id: opt("key_id")?,
        question: get("question")?,
        answer: get("answer")?,
        citations: get("citations")?,
        abstained: row.try_get::<i64, _>("abstained").map_err(db_error)? != 0,
        created_at: get("created_at")?,
        rating: opt("rating")?,
        comment: opt("comment")?,
        rated_at: opt("rated_at")?,
    })
}

const SOURCE_COLUMNS: &str =
    "name, kind, config, collection, tags, access_groups, state, created_at, synced_at";

fn key_from_row(row: &sqlx::any::AnyRow) -> Result<ApiKeyRecord> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    let role = get("role")?;
    Ok(ApiKeyRecord {
        id: get("id")?,
        name: get("name")?,
        key_hash: get("key_hash")?,
        role: KeyRole::parse(&role)
            .ok_or_else(|| Error::internal(format!("api_keys: unknown role {role:?}")))?,
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

const DOC_COLUMNS: &str = "id, collection, source, title, content_hash, tags, access_groups, \
                           chunk_count, ingested_at, url, origin";

#[async_trait]
impl DocumentStore for SqlDocumentStore {
    async fn documents_by_source(
        &self,
        collection: &str,
        source: &str,
    ) -> Result<Vec<DocumentRecord>> {
        let sql = format!(
            "SELECT {DOC_COLUMNS} FROM documents WHERE collection = $1 AND source = $2 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(collection)
            .bind(source)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(document_from_row).collect()
    }

    async fn register_writer(&self, writer: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO ingest_writers (id, heartbeat_at) VALUES ($1, {})",
            self.now
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(writer)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn heartbeat(&self, writer: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE ingest_writers SET heartbeat_at = {} WHERE id = $1",
            self.now
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(writer)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn mark_in_flight(&self, writer: &str, chunk_ids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        take_vector_lock(&mut tx).await?;
        for batch in chunk_ids.chunks(BATCH) {
            let values: Vec<String> = (0..batch.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO inflight_chunks (writer_id, chunk_id) VALUES {} \
                 ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(writer);
            for id in batch {
                q = q.bind(id);
            }
            q.execute(&mut *tx).await.map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn clear_in_flight(&self, writer: &str, chunk_ids: &[String]) -> Result<()> {
        for batch in chunk_ids.chunks(BATCH) {
            let sql = format!(
                "DELETE FROM inflight_chunks WHERE writer_id = $1 AND chunk_id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(writer);
            for id in batch {
                q = q.bind(id);
            }
            q.execute(&self.pool).await.map_err(db_error)?;
        }
        Ok(())
    }

    async fn retire_writer(&self, writer: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for sql in [
            "DELETE FROM inflight_chunks WHERE writer_id = $1",
            "DELETE FROM ingest_writers WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(writer)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn forget_dead_writers(&self, timeout_s: i64) -> Result<usize> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let gone = forget_dead(&mut tx, self.now, timeout_s).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(gone)
    }

    async fn forget_writers(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for sql in ["DELETE FROM inflight_chunks", "DELETE FROM source_claims"] {
            sqlx::query(sql).execute(&mut *tx).await.map_err(db_error)?;
        }
        let gone = sqlx::query("DELETE FROM ingest_writers")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        tx.commit().await.map_err(db_error)?;
        Ok(gone as usize)
    }

    async fn lock_references(&self) -> Result<Box<dyn ReferenceLock>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        take_vector_lock(&mut tx).await?;
        Ok(Box::new(SqlReferenceLock { tx }))
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
             ORDER BY collection, source, id LIMIT $2 OFFSET $3"
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
                    "SELECT {DOC_COLUMNS} FROM documents WHERE collection = $1 ORDER BY source, id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(c)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                let sql =
                    format!("SELECT {DOC_COLUMNS} FROM documents ORDER BY collection, source, id");
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
        take_vector_lock(&mut tx).await?;
        write_document(&mut tx, doc, chunks).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn commit_document(
        &self,
        lease: &WriterLease<'_>,
        doc: &DocumentRecord,
        chunks: &[ChunkRecord],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        take_vector_lock(&mut tx).await?;
        let live = format!(
            "SELECT id FROM ingest_writers WHERE id = $1 AND heartbeat_at >= {} - $2",
            self.now
        );
        let live = sqlx::query(sqlx::AssertSqlSafe(live))
            .bind(lease.writer)
            .bind(lease.timeout_s)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if live.is_none() {
            return Err(Error::unavailable(format!(
                "this ingest lost its writer lease (no heartbeat within {} s), so another \
                 process may have deleted vectors it relied on; nothing more is committed, run \
                 it again",
                lease.timeout_s
            )));
        }
        if let Some(mine) = lease.cover {
            let row = sqlx::query("SELECT access_groups FROM documents WHERE id = $1")
                .bind(&doc.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            if let Some(row) = row {
                let groups = parse_list(
                    &row.try_get::<String, _>("access_groups")
                        .map_err(db_error)?,
                );
                if groups.is_empty() || !groups.iter().all(|g| mine.contains(g)) {
                    return Err(Error::unavailable(
                        "the document changed while it was being written; try again",
                    ));
                }
            }
        }
        write_document(&mut tx, doc, chunks).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn delete_document(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Document rows change under the lock only: two writers of one
        // document, or a delete and a write, never interleave their rows.
        take_vector_lock(&mut tx).await?;
        delete_rows(&mut tx, id).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn chunks(&self, ids: &[String]) -> Result<Vec<ChunkRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        // Bounded IN lists keep under every driver's parameter limit.
        for batch in ids.chunks(BATCH) {
            let sql = format!(
                "SELECT id, document_id, ordinal, body, heading, page, token_count FROM chunks \
                 WHERE id IN ({})",
                placeholders(1, batch.len())
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

    async fn embedder(&self) -> Result<Option<EmbedderRecord>> {
        let row = sqlx::query("SELECT model, dimension FROM embedder WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|row| {
            Ok(EmbedderRecord {
                model: row.try_get("model").map_err(db_error)?,
                dimension: row.try_get::<i64, _>("dimension").map_err(db_error)? as usize,
            })
        })
        .transpose()
    }

    async fn set_embedder(&self, embedder: &EmbedderRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO embedder (id, model, dimension) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET model = excluded.model, dimension = excluded.dimension",
        )
        .bind(&embedder.model)
        .bind(embedder.dimension as i64)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn record_first_embedder(&self, embedder: &EmbedderRecord) -> Result<EmbedderRecord> {
        sqlx::query(
            "INSERT INTO embedder (id, model, dimension) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&embedder.model)
        .bind(embedder.dimension as i64)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        self.embedder()
            .await?
            .ok_or_else(|| Error::internal("the embedder row vanished as it was written"))
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

    async fn add_source(&self, source: &SourceRecord) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO sources (name, kind, config, collection, tags, access_groups, state, \
             created_at, synced_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&source.name)
        .bind(&source.kind)
        .bind(&source.config)
        .bind(&source.collection)
        .bind(json_list(&source.tags))
        .bind(json_list(&source.groups))
        .bind(&source.state)
        .bind(&source.created_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::invalid(format!(
                "a source named {:?} exists already; remove it first or pick another name",
                source.name
            )));
        }
        Ok(())
    }

    async fn sources(&self) -> Result<Vec<SourceRecord>> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM sources ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(source_from_row).collect()
    }

    async fn source(&self, name: &str) -> Result<Option<SourceRecord>> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.as_ref().map(source_from_row).transpose()
    }

    async fn set_source_state(&self, name: &str, state: &str, synced_at: &str) -> Result<()> {
        sqlx::query("UPDATE sources SET state = $1, synced_at = $2 WHERE name = $3")
            .bind(state)
            .bind(synced_at)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn remove_source(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sources WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_source(&self, name: &str, holder: &str, ttl_s: i64) -> Result<bool> {
        // One statement: two processes claiming at once cannot both win
        // (the primary key orders them; the loser's update finds a live
        // claim of another holder and changes nothing).
        let sql = format!(
            "INSERT INTO source_claims (source, holder, expires_at) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (source) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE source_claims.holder = excluded.holder OR source_claims.expires_at <= {now}",
            now = self.now
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(ttl_s)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_source(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM source_claims WHERE source = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn documents_of_origin(&self, origin: &str) -> Result<Vec<DocumentRecord>> {
        let sql =
            format!("SELECT {DOC_COLUMNS} FROM documents WHERE origin = $1 ORDER BY source, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(origin)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(document_from_row).collect()
    }

    async fn record_answer(&self, answer: &AnswerRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO answers (id, key_id, question, answer, citations, abstained, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&answer.id)
        .bind(answer.key_id.as_deref())
        .bind(&answer.question)
        .bind(&answer.answer)
        .bind(&answer.citations)
        .bind(i64::from(answer.abstained))
        .bind(&answer.created_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn rate_answer(
        &self,
        id: &str,
        key_id: Option<&str>,
        rating: &str,
        comment: Option<&str>,
        rated_at: &str,
    ) -> Result<bool> {
        // `key_id IS $5` would be SQLite only: the two cases are spelled out.
        let sql = match key_id {
            Some(_) => {
                "UPDATE answers SET rating = $1, comment = $2, rated_at = $3 \
                 WHERE id = $4 AND key_id = $5"
            }
            None => {
                "UPDATE answers SET rating = $1, comment = $2, rated_at = $3 \
                 WHERE id = $4 AND key_id IS NULL"
            }
        };
        let mut query = sqlx::query(sql)
            .bind(rating)
            .bind(comment)
            .bind(rated_at)
            .bind(id);
        if let Some(key) = key_id {
            query = query.bind(key);
        }
        let done = query.execute(&self.pool).await.map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn rated_answers(&self) -> Result<Vec<AnswerRecord>> {
        let rows = sqlx::query(
            "SELECT id, key_id, question, answer, citations, abstained, created_at, rating, \
             comment, rated_at FROM answers WHERE rating IS NOT NULL ORDER BY rated_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(answer_from_row).collect()
    }

    async fn forget_answers_before(&self, before: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM answers WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
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
            url: None,
            origin: None,
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
        if let Some(url) = crate::testing::postgres_database("rag_test").await {
            exercise(&url).await;
        }
    }

    /// Processes sharing a data directory start at once: the migrations
    /// run once, and every one of them opens the database (no
    /// `UNIQUE constraint failed: _sqlx_migrations.version`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stores_opening_a_new_sqlite_database_together_all_open_it() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
            let opening: Vec<_> = (0..4)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { SqlDocumentStore::connect(&url).await })
                })
                .collect();
            for store in opening {
                let store = store.await.unwrap().unwrap();
                assert_eq!(store.document_count().await.unwrap(), 0);
            }
        }
    }

    /// One embedder recorded at a time; recording another replaces it.
    async fn embedder(store: &SqlDocumentStore) {
        assert_eq!(store.embedder().await.unwrap(), None);
        let minilm = EmbedderRecord {
            model: "all-MiniLM-L6-v2".into(),
            dimension: 384,
        };
        assert_eq!(store.record_first_embedder(&minilm).await.unwrap(), minilm);
        assert_eq!(store.embedder().await.unwrap().as_ref(), Some(&minilm));
        let nomic = EmbedderRecord {
            model: "nomic-embed-text-v1.5".into(),
            dimension: 768,
        };
        // The first one stays first; setting one replaces it.
        assert_eq!(store.record_first_embedder(&nomic).await.unwrap(), minilm);
        store.set_embedder(&nomic).await.unwrap();
        assert_eq!(store.embedder().await.unwrap(), Some(nomic));
    }

    async fn exercise(url: &str) {
        let store = SqlDocumentStore::connect(url).await.unwrap();
        sources(&store).await;
        embedder(&store).await;
        let d = doc("a.md", "h1");
        let chunks = vec![chunk(&d, 0, "one"), chunk(&d, 1, "two")];
        store.replace_document(&d, &chunks).await.unwrap();
        let got = store
            .documents_by_source("default", "a.md")
            .await
            .unwrap()
            .pop()
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

        // Two documents may share a name: one per owner scope.
        let scoped = DocumentRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            groups: vec!["beta".into()],
            ..doc("a.md", "h3")
        };
        store.replace_document(&d2, &new_chunks).await.unwrap();
        store.replace_document(&scoped, &[]).await.unwrap();
        let both = store.documents_by_source("default", "a.md").await.unwrap();
        let mut ids: Vec<&str> = both.iter().map(|d| d.id.as_str()).collect();
        ids.sort();
        let mut expected = [d.id.as_str(), scoped.id.as_str()];
        expected.sort();
        assert_eq!(ids, expected);
        store.delete_document(&scoped.id).await.unwrap();

        // Writers: a committed chunk and a live writer's marked chunk are
        // referenced, anything else is not; a retired or dead writer's
        // marks no longer count.
        let (committed, marked, free) = (
            new_chunks[0].id.clone(),
            rag_core::chunk_id(&d.id, "marked", 0),
            rag_core::chunk_id(&d.id, "free", 0),
        );
        let all = [committed.clone(), marked.clone(), free.clone()];
        store.register_writer("w1").await.unwrap();
        store
            .mark_in_flight("w1", std::slice::from_ref(&marked))
            .await
            .unwrap();
        // Marking twice is harmless.
        store
            .mark_in_flight("w1", std::slice::from_ref(&marked))
            .await
            .unwrap();
        let mut lock = store.lock_references().await.unwrap();
        assert_eq!(
            lock.unreferenced(&all).await.unwrap(),
            std::slice::from_ref(&free)
        );
        lock.release().await.unwrap();
        // A heartbeat older than the timeout is a dead writer's: forgotten,
        // its marks protect nothing.
        assert_eq!(store.forget_dead_writers(-10).await.unwrap(), 1);
        let mut lock = store.lock_references().await.unwrap();
        assert_eq!(
            lock.unreferenced(&all).await.unwrap(),
            [marked.clone(), free.clone()]
        );
        drop(lock); // dropped unreleased: the lock goes with its transaction
        store.register_writer("w1").await.unwrap();
        store
            .clear_in_flight("w1", std::slice::from_ref(&marked))
            .await
            .unwrap();
        let mut lock = store.lock_references().await.unwrap();
        assert_eq!(lock.unreferenced(&all).await.unwrap().len(), 2);
        lock.release().await.unwrap();
        store.mark_in_flight("w1", &all[1..]).await.unwrap();
        let mut lock = store.lock_references().await.unwrap();
        assert!(lock.unreferenced(&all).await.unwrap().is_empty());
        lock.release().await.unwrap();
        store.retire_writer("w1").await.unwrap();
        let mut lock = store.lock_references().await.unwrap();
        assert_eq!(lock.unreferenced(&all).await.unwrap().len(), 2);
        lock.release().await.unwrap();
        store.register_writer("w2").await.unwrap();
        store.mark_in_flight("w2", &all[1..]).await.unwrap();
        assert_eq!(store.forget_dead_writers(60).await.unwrap(), 0);
        assert_eq!(store.forget_dead_writers(-10).await.unwrap(), 1);
        let mut lock = store.lock_references().await.unwrap();
        assert_eq!(lock.unreferenced(&all).await.unwrap().len(), 2);
        lock.release().await.unwrap();
        store.register_writer("w3").await.unwrap();
        store.mark_in_flight("w3", &all[1..]).await.unwrap();
        assert_eq!(store.forget_writers().await.unwrap(), 1);
        let mut lock = store.lock_references().await.unwrap();
        assert_eq!(lock.unreferenced(&all).await.unwrap().len(), 2);
        lock.release().await.unwrap();
        // Committing as a writer: only while its lease is live, and for a
        // restricted writer only over a row it covers.
        assert!(!store.heartbeat("gone").await.unwrap(), "an unknown writer");
        store.register_writer("w4").await.unwrap();
        assert!(store.heartbeat("w4").await.unwrap());
        let lease = |cover| WriterLease {
            writer: "w4",
            timeout_s: 60,
            cover,
        };
        store
            .commit_document(&lease(None), &d2, &new_chunks)
            .await
            .unwrap();
        let beta = ["beta".to_string()];
        let err = store
            .commit_document(&lease(Some(&beta)), &d2, &new_chunks)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("changed while"), "{err}");
        let hr = ["hr".to_string()];
        store
            .commit_document(&lease(Some(&hr)), &d2, &new_chunks)
            .await
            .unwrap();
        let dead = WriterLease {
            timeout_s: -10,
            ..lease(None)
        };
        let err = store
            .commit_document(&dead, &d2, &new_chunks)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("lost its writer lease"), "{err}");
        // A writer taken for dead is gone for good.
        store.forget_dead_writers(-10).await.unwrap();
        assert!(!store.heartbeat("w4").await.unwrap());
        let err = store
            .commit_document(&lease(None), &d2, &new_chunks)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("lost its writer lease"), "{err}");
        store.delete_document(&d.id).await.unwrap();

        // Reopening runs the migrations again without harm.
        drop(store);
        let store = SqlDocumentStore::connect(url).await.unwrap();
        let run = store.start_run("t0").await.unwrap();
        store.finish_run(&run, "t1", "{}").await.unwrap();
    }

    /// Sources, and the url and origin of the documents they bring.
    async fn sources(store: &SqlDocumentStore) {
        let wiki = SourceRecord {
            name: "wiki".into(),
            kind: "git".into(),
            config: r#"{"url":"/srv/wiki.git"}"#.into(),
            collection: "default".into(),
            tags: vec!["hr".into()],
            groups: vec!["staff".into()],
            state: String::new(),
            created_at: "2026-12-02T00:00:00Z".into(),
            synced_at: None,
        };
        store.add_source(&wiki).await.unwrap();
        let err = store.add_source(&wiki).await.unwrap_err();
        assert!(err.to_string().contains("exists already"), "{err}");
        store
            .set_source_state("wiki", r#"{"commit":"abc"}"#, "2026-12-02T01:00:00Z")
            .await
            .unwrap();
        let got = store.source("wiki").await.unwrap().unwrap();
        assert_eq!(got.state, r#"{"commit":"abc"}"#);
        assert_eq!(got.synced_at.as_deref(), Some("2026-12-02T01:00:00Z"));
        assert_eq!(got.groups, ["staff"]);
        assert_eq!(store.sources().await.unwrap().len(), 1);

        let page = DocumentRecord {
            url: Some("https://wiki.example/leave".into()),
            origin: Some("wiki".into()),
            ..doc("leave.md", "h")
        };
        store.replace_document(&page, &[]).await.unwrap();
        store
            .replace_document(&doc("other.md", "h"), &[])
            .await
            .unwrap();
        let mine = store.documents_of_origin("wiki").await.unwrap();
        assert_eq!(mine, std::slice::from_ref(&page));
        assert!(store.documents_of_origin("none").await.unwrap().is_empty());
        store.delete_document(&page.id).await.unwrap();
        store
            .delete_document(&doc("other.md", "h").id)
            .await
            .unwrap();
        assert!(store.remove_source("wiki").await.unwrap());
        assert!(!store.remove_source("wiki").await.unwrap());

        // One holder per source: another is refused while the claim lasts,
        // the holder renews it, a released or lapsed claim goes to the next.
        assert!(store.claim_source("wiki", "a", 60).await.unwrap());
        assert!(!store.claim_source("wiki", "b", 60).await.unwrap());
        assert!(store.claim_source("wiki", "a", 60).await.unwrap());
        assert!(store.claim_source("other", "b", 60).await.unwrap());
        store.release_source("wiki", "b").await.unwrap();
        assert!(!store.claim_source("wiki", "b", 60).await.unwrap());
        store.release_source("wiki", "a").await.unwrap();
        assert!(store.claim_source("wiki", "b", 0).await.unwrap());
        // b's claim lapsed at once (a killed holder's, in effect).
        assert!(store.claim_source("wiki", "a", 60).await.unwrap());
        assert!(!store.claim_source("wiki", "b", 60).await.unwrap());
        // The one process that may write forgets every claim it finds.
        store.forget_writers().await.unwrap();
        assert!(store.claim_source("wiki", "b", 60).await.unwrap());
        store.release_source("wiki", "b").await.unwrap();
        store.release_source("other", "b").await.unwrap();
        assert!(store.source("wiki").await.unwrap().is_none());

        // Answers are rated by the key that asked, and only by it.
        let answer = AnswerRecord {
            id: "a1".into(),
            key_id: Some("key-a".into()),
            question: "How many sick days?".into(),
            answer: "60 days [1].".into(),
            citations: "[]".into(),
            abstained: false,
            created_at: "2026-12-02T00:00:00Z".into(),
            ..Default::default()
        };
        store.record_answer(&answer).await.unwrap();
        let open = AnswerRecord {
            id: "a2".into(),
            key_id: None,
            ..answer.clone()
        };
        store.record_answer(&open).await.unwrap();
        let rate = |id: &'static str, key: Option<&'static str>| {
            store.rate_answer(id, key, "down", Some("wrong"), "2026-12-02T01:00:00Z")
        };
        assert!(!rate("a1", Some("key-b")).await.unwrap());
        assert!(!rate("a1", None).await.unwrap());
        assert!(!rate("a2", Some("key-a")).await.unwrap());
        assert!(store.rated_answers().await.unwrap().is_empty());
        assert!(rate("a1", Some("key-a")).await.unwrap());
        assert!(rate("a2", None).await.unwrap());
        let rated = store.rated_answers().await.unwrap();
        assert_eq!(rated.len(), 2);
        assert_eq!(rated[0].rating.as_deref(), Some("down"));
        assert_eq!(rated[0].comment.as_deref(), Some("wrong"));
        assert_eq!(rated[0].question, "How many sick days?");
        // Retention: answers asked before the cut are forgotten, rated or
        // not; a later one stays.
        let later = AnswerRecord {
            id: "a3".into(),
            created_at: "2026-12-05T00:00:00Z".into(),
            ..answer.clone()
        };
        store.record_answer(&later).await.unwrap();
        assert_eq!(
            store
                .forget_answers_before("2026-12-03T00:00:00Z")
                .await
                .unwrap(),
            2
        );
        assert!(store.rated_answers().await.unwrap().is_empty());
        assert!(rate("a3", Some("key-a")).await.unwrap());
        assert_eq!(store.rated_answers().await.unwrap().len(), 1);
    }
}
