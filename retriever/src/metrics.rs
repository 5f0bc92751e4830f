//! Ranking metrics, computed as `pytrec_eval` (trec_eval) and BEIR do, so
//! that figures compare with published ones.
//!
//! Written here rather than taken from a crate: no Rust crate reproduces
//! trec_eval's definitions (graded gains, ideal ranking over every judged
//! document, relevance level 1), and they are a few lines each.

use std::collections::HashMap;

/// Graded judgements of one query: document id to relevance (0 = judged
/// not relevant).
pub type Qrels = HashMap<String, i32>;

fn relevant(qrels: &Qrels, doc: &str) -> bool {
    qrels.get(doc).is_some_and(|&r| r >= 1)
}

/// nDCG@k with linear gains and a log2(rank + 1) discount (trec_eval's
/// `ndcg_cut`): the ideal ranking sorts every judged document by grade.
pub fn ndcg_at(ranked: &[&str], qrels: &Qrels, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, doc)| {
            let gain = qrels.get(*doc).copied().unwrap_or(0).max(0) as f64;
            gain / (i as f64 + 2.0).log2()
        })
        .sum();
    let mut grades: Vec<i32> = qrels.values().copied().filter(|&r| r > 0).collect();
    grades.sort_unstable_by(|a, b| b.cmp(a));
    let ideal: f64 = grades
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / (i as f64 + 2.0).log2())
        .sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

/// Share of the relevant documents found in the first `k`.
pub fn recall_at(ranked: &[&str], qrels: &Qrels, k: usize) -> f64 {
    let total = qrels.values().filter(|&&r| r >= 1).count();
    if total == 0 {
        return 0.0;
    }
    let found = ranked.iter().take(k).filter(|d| relevant(qrels, d)).count();
    found as f64 / total as f64
}

/// Reciprocal rank of the first relevant document within the first `k`.
pub fn mrr_at(ranked: &[&str], qrels: &Qrels, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|d| relevant(qrels, d))
        .map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// Document ids in the order of their best chunk: a document ranks where
/// its first chunk does.
pub fn documents_in_order<'a>(chunk_docs: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    chunk_docs.into_iter().filter(|d| seen.insert(*d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qrels(pairs: &[(&str, i32)]) -> Qrels {
        pairs.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn ndcg_by_hand() {
        let q = qrels(&[("a", 2), ("b", 1), ("c", 0)]);
        // DCG = 0/log2(2) + 1/log2(3) + 2/log2(4) = 0.63093 + 1
        // IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.63093
        let expected = (1.0 / 3f64.log2() + 1.0) / (2.0 + 1.0 / 3f64.log2());
        close(ndcg_at(&["x", "b", "a"], &q, 10), expected);
        close(ndcg_at(&["a", "b"], &q, 10), 1.0);
        // Cut at 1: only "x", gain 0.
        close(ndcg_at(&["x", "a", "b"], &q, 1), 0.0);
        // Cut at 1 with the best first: ideal at 1 is 2 as well.
        close(ndcg_at(&["a", "x"], &q, 1), 1.0);
        // Judged-irrelevant documents and empty judgements.
        close(ndcg_at(&["c"], &q, 10), 0.0);
        close(ndcg_at(&["a"], &qrels(&[]), 10), 0.0);
        // A relevant document beyond k counts in the ideal, not the gain.
        let many = qrels(&[("a", 1), ("b", 1)]);
        let expected = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        close(ndcg_at(&["x", "a", "y", "b"], &many, 2), expected);
    }

    #[test]
    fn recall_and_mrr_by_hand() {
        let q = qrels(&[("a", 2), ("b", 1), ("c", 0)]);
        close(recall_at(&["x", "b", "a"], &q, 2), 0.5);
        close(recall_at(&["x", "b", "a"], &q, 3), 1.0);
        close(recall_at(&["c", "x"], &q, 10), 0.0);
        close(mrr_at(&["x", "b", "a"], &q, 10), 0.5);
        close(mrr_at(&["x", "c", "a"], &q, 10), 1.0 / 3.0);
        close(mrr_at(&["x", "y", "a"], &q, 2), 0.0);
    }

    #[test]
    fn documents_rank_by_their_best_chunk() {
        assert_eq!(
            documents_in_order(["d2", "d1", "d2", "d3", "d1"]),
            ["d2", "d1", "d3"]
        );
    }
}
