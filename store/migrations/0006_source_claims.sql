-- One writer per source across processes (API replicas, `rag sync`, the
-- re-sync CronJob): a sync or a removal claims its source first. A claim
-- lasts until `expires_at` (database clock, unix seconds) unless its
-- holder renews it, so a killed holder's claim lapses by itself.
CREATE TABLE source_claims (
    source     TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
