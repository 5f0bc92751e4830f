-- Several documents may share a collection and a source: one per owner
-- scope (ARCHITECTURE.md, "Invariants"). SQLite cannot drop a table
-- constraint, so the table is rebuilt without UNIQUE (collection, source).
CREATE TABLE documents_v3 (
    id            TEXT PRIMARY KEY,
    collection    TEXT NOT NULL,
    source        TEXT NOT NULL,
    title         TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    tags          TEXT NOT NULL,
    access_groups TEXT NOT NULL,
    chunk_count   BIGINT NOT NULL,
    ingested_at   TEXT NOT NULL
);
-- The content hash is cleared: earlier versions left the old groups and
-- tags on the vectors of a regrouped document, and the next ingest of each
-- document now reads it again and sets its labels on every vector (no
-- text is embedded again: chunk ids are unchanged).
INSERT INTO documents_v3 (id, collection, source, title, content_hash, tags, access_groups,
                          chunk_count, ingested_at)
    SELECT id, collection, source, title, '', tags, access_groups, chunk_count, ingested_at
    FROM documents;
DROP TABLE documents;
ALTER TABLE documents_v3 RENAME TO documents;
CREATE INDEX documents_by_source ON documents (collection, source);

-- Writers that share the database and the vector store (API replicas, the
-- re-sync job): each live one renews its heartbeat (database clock, unix
-- seconds) and marks the chunks whose vectors it is writing or relying on
-- before it commits them. Vectors are deleted only under `vector_lock`,
-- and only when neither committed nor marked by a live writer.
CREATE TABLE ingest_writers (
    id           TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);
CREATE TABLE inflight_chunks (
    writer_id TEXT NOT NULL,
    chunk_id  TEXT NOT NULL,
    PRIMARY KEY (writer_id, chunk_id)
);
CREATE INDEX inflight_by_chunk ON inflight_chunks (chunk_id);
-- One row; updating it takes the lock until the transaction ends.
CREATE TABLE vector_lock (
    id    BIGINT PRIMARY KEY,
    taken BIGINT NOT NULL
);
INSERT INTO vector_lock (id, taken) VALUES (1, 0);
