//! The embedded engine split into shards, each keeping its own BM25
//! statistics, searched and merged as a sharded Qdrant collection is: every
//! shard answers each side of a query, the sides are merged by score, and
//! a hybrid query is fused once over the merged sides. Qdrant computes IDF
//! per shard, so a term's weight differs from shard to shard; this store
//! shows what that does to ranking on one machine
//! (`vector_store.simulated_shards`, BENCHMARKS.md; one simulated shard is
//! the baseline, so that both sides merge and break ties alike). It is for measuring,
//! not for serving: one engine is faster.

use std::path::Path;

use async_trait::async_trait;
use rag_core::{Result, ScoredChunk, SearchMode, VectorPoint, VectorQuery, VectorStore};

use crate::EdgeVectorStore;

pub struct ShardedEdgeStore {
    shards: Vec<EdgeVectorStore>,
}

impl ShardedEdgeStore {
    /// Opens (or creates) `shards` engines under `path/shard-N`.
    pub fn open(path: &Path, dimension: usize, shards: usize) -> Result<Self> {
        let shards = (0..shards.max(1))
            .map(|n| EdgeVectorStore::open(&path.join(format!("shard-{n}")), dimension))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shards })
    }

    /// The shard a chunk lives on: a stable hash of its id, as Qdrant
    /// places points by id.
    fn shard_of(&self, chunk_id: &str) -> usize {
        let hash = chunk_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % self.shards.len() as u64) as usize
    }

    /// One side of a query on every shard, merged by score.
    async fn merged(&self, query: &VectorQuery) -> Result<Vec<ScoredChunk>> {
        let mut all = Vec::new();
        for shard in &self.shards {
            all.extend(shard.search(query).await?);
        }
        all.sort_by(by_score);
        all.truncate(query.limit);
        Ok(all)
    }
}

/// Best first; ties by chunk id, so that a comparison of shard counts
/// measures the sharding, not the order of ties (the engine's is
/// arbitrary).
fn by_score(a: &ScoredChunk, b: &ScoredChunk) -> std::cmp::Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.chunk_id.cmp(&b.chunk_id))
}

/// Qdrant's weighted RRF contribution of the item at `position` (0-based)
/// in a list: `1 / ((position + 1) / weight + k - 1)`; the same formula
/// the engine applies, so that one simulated shard ranks like the engine.
fn rrf(position: usize, k: usize, weight: f32) -> f32 {
    if weight <= 0.0 {
        return 0.0;
    }
    1.0 / ((position + 1) as f32 / weight + k as f32 - 1.0)
}

#[async_trait]
impl VectorStore for ShardedEdgeStore {
    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()> {
        let mut by_shard: Vec<Vec<VectorPoint>> = self.shards.iter().map(|_| vec![]).collect();
        for point in points {
            let shard = self.shard_of(&point.chunk_id);
            by_shard[shard].push(point);
        }
        for (shard, points) in self.shards.iter().zip(by_shard) {
            shard.upsert(points).await?;
        }
        Ok(())
    }

    async fn delete(&self, chunk_ids: &[String]) -> Result<()> {
        for shard in &self.shards {
            shard.delete(chunk_ids).await?;
        }
        Ok(())
    }

    async fn search(&self, query: &VectorQuery) -> Result<Vec<ScoredChunk>> {
        if query.mode != SearchMode::Hybrid {
            return self.merged(query).await;
        }
        let side = |mode| crate::fusion::side(query, mode);
        let dense = self.merged(&side(SearchMode::Dense)).await?;
        let sparse = self.merged(&side(SearchMode::Sparse)).await?;
        if sparse.is_empty() {
            // A question of stop words only: the dense side alone, as the
            // engine does.
            return Ok(dense.into_iter().take(query.limit).collect());
        }
        let f = query.fusion;
        if f.method == rag_core::FusionMethod::Convex {
            return Ok(crate::fusion::convex(dense, sparse, &f, query.limit));
        }
        let mut fused: Vec<ScoredChunk> = Vec::new();
        for (list, weight) in [(dense, f.dense_weight), (sparse, f.sparse_weight)] {
            for (position, mut hit) in list.into_iter().enumerate() {
                let score = rrf(position, f.rrf_k, weight);
                match fused.iter_mut().find(|h| h.chunk_id == hit.chunk_id) {
                    Some(seen) => seen.score += score,
                    None => {
                        hit.score = score;
                        fused.push(hit);
                    }
                }
            }
        }
        fused.sort_by(by_score);
        fused.truncate(query.limit);
        Ok(fused)
    }

    async fn vectors(&self, chunk_ids: &[String]) -> Result<Vec<Option<Vec<f32>>>> {
        let mut found: Vec<Option<Vec<f32>>> = vec![None; chunk_ids.len()];
        for shard in &self.shards {
            for (slot, vector) in found.iter_mut().zip(shard.vectors(chunk_ids).await?) {
                if slot.is_none() {
                    *slot = vector;
                }
            }
        }
        Ok(found)
    }

    async fn chunk_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for shard in &self.shards {
            ids.extend(shard.chunk_ids().await?);
        }
        Ok(ids)
    }

    async fn optimize(&self) -> Result<()> {
        for shard in &self.shards {
            shard.optimize().await?;
        }
        Ok(())
    }

    async fn set_labels(
        &self,
        document_id: &str,
        tags: &[String],
        groups: &[String],
    ) -> Result<()> {
        for shard in &self.shards {
            shard.set_labels(document_id, tags, groups).await?;
        }
        Ok(())
    }
}
