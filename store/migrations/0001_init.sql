-- Portable SQL: the same migration runs on SQLite (embedded) and Postgres (cluster).
-- List-valued fields are JSON text; ids are text (hashes and UUIDs), never
-- dialect-specific auto-increment columns.

CREATE TABLE IF NOT EXISTS documents (
    id            TEXT PRIMARY KEY,
    collection    TEXT NOT NULL,
    source        TEXT NOT NULL,
    title         TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    tags          TEXT NOT NULL,
    access_groups TEXT NOT NULL,
    chunk_count   BIGINT NOT NULL,
    ingested_at   TEXT NOT NULL,
    UNIQUE (collection, source)
);

CREATE TABLE IF NOT EXISTS chunks (
    id          TEXT PRIMARY KEY,
    document_id TEXT NOT NULL,
    ordinal     BIGINT NOT NULL,
    body        TEXT NOT NULL,
    heading     TEXT NOT NULL,
    page        BIGINT,
    token_count BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (document_id, ordinal);

CREATE TABLE IF NOT EXISTS ingest_runs (
    id          TEXT PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    report      TEXT
);
