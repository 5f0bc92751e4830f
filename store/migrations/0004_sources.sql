-- Documents from a source (`rag sources`) carry the web address people
-- read them at and the source's name; documents ingested by path or
-- uploaded have neither.
ALTER TABLE documents ADD COLUMN url TEXT;
ALTER TABLE documents ADD COLUMN origin TEXT;
CREATE INDEX documents_by_origin ON documents (origin);

-- Places documents are synced from. `config` is the connector's settings
-- and `state` where the last completed sync got to, both JSON.
CREATE TABLE sources (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    config        TEXT NOT NULL,
    collection    TEXT NOT NULL,
    tags          TEXT NOT NULL,
    access_groups TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    synced_at     TEXT
);
