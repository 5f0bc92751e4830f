//! Convex fusion of the two sides of a hybrid search, done here because
//! Qdrant fuses by rank only (RRF) or by score distribution (DBSF): both
//! sides are fetched apart, and each candidate scores the weighted mean of
//! its normalised scores ([`FusionMethod::Convex`]).

use std::collections::HashMap;

use rag_core::{Fusion, Result, ScoredChunk, SearchMode, VectorQuery, VectorStore};

#[cfg(doc)]
use rag_core::FusionMethod;

/// `query` for one side of a hybrid search: its mode, with room for the
/// candidates the other side may lack.
pub(crate) fn side(query: &VectorQuery, mode: SearchMode) -> VectorQuery {
    VectorQuery {
        mode,
        limit: query.limit * crate::edge::PREFETCH_FACTOR,
        ..query.clone()
    }
}

/// A hybrid search by convex fusion on `store`: each side searched apart
/// (concurrently), then [`convex`].
pub(crate) async fn convex_search(
    store: &(impl VectorStore + ?Sized),
    query: &VectorQuery,
) -> Result<Vec<ScoredChunk>> {
    let (dense_query, sparse_query) = (
        side(query, SearchMode::Dense),
        side(query, SearchMode::Sparse),
    );
    // Both at once: on a server, two round trips in the time of one.
    let (dense, sparse) =
        tokio::try_join!(store.search(&dense_query), store.search(&sparse_query))?;
    Ok(convex(dense, sparse, &query.fusion, query.limit))
}

/// Fuses `dense` and `sparse` (each best first) into the `limit` best,
/// best first; ties by chunk id. A candidate keeps the cosine similarity
/// and vector it came with.
pub(crate) fn convex(
    dense: Vec<ScoredChunk>,
    sparse: Vec<ScoredChunk>,
    fusion: &Fusion,
    limit: usize,
) -> Vec<ScoredChunk> {
    let wd = fusion.alpha.clamp(0.0, 1.0);
    let ws = 1.0 - wd;
    let mut fused: HashMap<String, ScoredChunk> = HashMap::new();
    // Each side from its theoretical minimum (cosine -1, BM25 0) to its
    // best score here (Bruch et al.'s "TM2C2"): the last candidate of a
    // list still counts for something, unlike one the list lacks.
    for (list, weight, floor) in [(dense, wd, -1.0), (sparse, ws, 0.0)] {
        let normalised = normalise(&list, floor);
        for (mut hit, score) in list.into_iter().zip(normalised) {
            match fused.get_mut(&hit.chunk_id) {
                Some(seen) => seen.score += weight * score,
                None => {
                    hit.score = weight * score;
                    fused.insert(hit.chunk_id.clone(), hit);
                }
            }
        }
    }
    let mut fused: Vec<ScoredChunk> = fused.into_values().collect();
    fused.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.chunk_id.cmp(&b.chunk_id))
    });
    fused.truncate(limit);
    fused
}

/// Each score scaled from `floor` (0) to the list's best (1); NaN counts 0.
fn normalise(list: &[ScoredChunk], floor: f32) -> Vec<f32> {
    let max = list.iter().map(|h| h.score).fold(f32::MIN, f32::max);
    list.iter()
        .map(|h| {
            if max > floor {
                ((h.score - floor) / (max - floor)).max(0.0)
            } else {
                // Nothing above the floor: the side adds nothing.
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rag_core::FusionMethod;

    fn hit(id: &str, score: f32) -> ScoredChunk {
        ScoredChunk {
            chunk_id: id.into(),
            score,
            similarity: 0.0,
            vector: vec![],
        }
    }

    #[test]
    fn scores_are_normalised_then_weighted() {
        let fusion = Fusion {
            method: FusionMethod::Convex,
            alpha: 0.75,
            ..Fusion::default()
        };
        // dense from -1 to its best: a 1.0, b 0.5, c 0.25; sparse from 0:
        // c 1.0, d 0.25.
        let dense = vec![hit("a", 0.6), hit("b", -0.2), hit("c", -0.6)];
        let sparse = vec![hit("c", 8.0), hit("d", 2.0)];
        let fused = convex(dense, sparse, &fusion, 4);
        let got: Vec<(&str, f32)> = fused
            .iter()
            .map(|h| (h.chunk_id.as_str(), (h.score * 1000.0).round() / 1000.0))
            .collect();
        assert_eq!(got, [("a", 0.75), ("c", 0.438), ("b", 0.375), ("d", 0.063)]);
        // Equal weights: the side that agrees wins.
        let even = Fusion {
            method: FusionMethod::Convex,
            alpha: 0.5,
            ..Fusion::default()
        };
        let fused = convex(
            vec![hit("a", 0.9), hit("b", 0.85)],
            vec![hit("b", 5.0), hit("a", 1.0)],
            &even,
            2,
        );
        assert_eq!(fused[0].chunk_id, "b");
        assert!(convex(vec![], vec![], &even, 5).is_empty());
    }
}
