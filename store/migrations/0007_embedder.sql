-- The embedder the data directory's vectors were made with (one row):
-- opening it with another one is refused until `rag reembed` has rebuilt
-- the vectors.
CREATE TABLE embedder (
    id        INTEGER PRIMARY KEY,
    model     TEXT NOT NULL,
    dimension BIGINT NOT NULL
);
