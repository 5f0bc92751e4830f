-- Answers the service gave, so that the reader can rate them (POST
-- /v1/feedback) and `rag eval export-feedback` can turn the ratings into
-- questions. `key_id` is the API key that asked (NULL in open mode): only
-- that key may rate the answer.
CREATE TABLE answers (
    id         TEXT PRIMARY KEY,
    key_id     TEXT,
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    citations  TEXT NOT NULL,
    abstained  BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    rating     TEXT,
    comment    TEXT,
    rated_at   TEXT
);
CREATE INDEX answers_by_rating ON answers (rated_at);
