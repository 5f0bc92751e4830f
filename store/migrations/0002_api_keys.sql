-- API keys: only a hash of each key is kept. Roles: reader, uploader, admin.
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
