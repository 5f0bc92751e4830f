//! Shaping a candidate list: near-duplicates, diversity, reranking, and
//! joining a passage with the one that continues it.

use std::collections::HashSet;
use std::sync::Arc;

use rag_core::{Embedder, Reranker, Result};

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Keeps the first of every group of near-duplicates (same text up to case
/// and spacing, or embeddings at least `threshold` similar), in order.
pub(crate) fn drop_near_duplicates<T>(
    items: &mut Vec<T>,
    threshold: f32,
    key: impl Fn(&T) -> (&Vec<f32>, &String),
) {
    let mut kept: Vec<usize> = Vec::new();
    let mut texts = HashSet::new();
    let mut keep = vec![false; items.len()];
    for i in 0..items.len() {
        let (vector, text) = key(&items[i]);
        let normal: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let similar = kept
            .iter()
            .any(|&j| dot(vector, key(&items[j]).0) >= threshold);
        if !similar && texts.insert(normal) {
            kept.push(i);
            keep[i] = true;
        }
    }
    let mut flags = keep.into_iter();
    items.retain(|_| flags.next().unwrap_or(false));
}

/// Maximal marginal relevance (Carbonell & Goldstein, 1998): picks, one at
/// a time, the candidate that maximises
/// `lambda * relevance - (1 - lambda) * max similarity to those picked`.
/// Relevance is min-max normalised first so that it is on the scale of a
/// cosine whatever the search mode's scores are. Returns the indices of at
/// most `k` candidates, in the order picked.
pub fn mmr_order(relevance: &[f32], vectors: &[&[f32]], lambda: f32, k: usize) -> Vec<usize> {
    let (lo, hi) = relevance
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let rel: Vec<f32> = relevance.iter().map(|r| (r - lo) / span).collect();
    let mut picked: Vec<usize> = Vec::with_capacity(k);
    let mut left: Vec<usize> = (0..relevance.len()).collect();
    while picked.len() < k && !left.is_empty() {
        let value = |i: usize| {
            let redundancy = picked
                .iter()
                .map(|&j| dot(vectors[i], vectors[j]))
                .fold(0.0f32, f32::max);
            lambda * rel[i] - (1.0 - lambda) * redundancy
        };
        // Ties go to the earlier (better ranked) candidate.
        let pos = (0..left.len())
            .max_by(|&pa, &pb| {
                value(left[pa])
                    .total_cmp(&value(left[pb]))
                    .then(pb.cmp(&pa))
            })
            .expect("not empty");
        picked.push(left.remove(pos));
    }
    picked
}

/// Whether a passage stops mid-sentence: its last character is not one
/// that ends a sentence, a list item or a table row.
pub fn cut_mid_sentence(text: &str) -> bool {
    let end = text.trim_end();
    match end.chars().last() {
        None => false,
        Some(c) => !matches!(
            c,
            '.' | '!' | '?' | ':' | '"' | '\'' | ')' | '|' | '”' | '`'
        ),
    }
}

/// The fewest characters two chunks share for one to be taken to repeat
/// the other's end.
const MIN_OVERLAP: usize = 10;

/// `first` followed by `next`, without the text they share: chunks overlap
/// (the splitter repeats the end of one at the start of the next).
pub fn join_overlapping(first: &str, next: &str) -> String {
    let first = first.trim_end();
    let next = next.trim_start();
    // The longest suffix of `first` that starts `next`, at char
    // boundaries; a few characters in common ("y" of "pay" and "yearly")
    // are chance, not the splitter's overlap.
    let overlap = next
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .rfind(|&n| first.ends_with(&next[..n]))
        .filter(|&n| n >= MIN_OVERLAP)
        .unwrap_or(0);
    let rest = &next[overlap..];
    if overlap > 0 {
        format!("{first}{rest}")
    } else if cut_mid_sentence(first) {
        format!("{first} {rest}")
    } else {
        // A new paragraph, heading or list: Markdown keeps it a block.
        format!("{first}\n\n{rest}")
    }
}

/// A reranker that scores each passage by the cosine of its own embedding
/// (without the title and heading the index used) to the question's.
///
/// It is the seam a cross-encoder plugs into, with a real scorer behind
/// it: no cross-encoder ships in the package registries this project can
/// reach.
pub struct EmbeddingReranker {
    pub embedder: Arc<dyn Embedder>,
}

impl Reranker for EmbeddingReranker {
    fn name(&self) -> &str {
        self.embedder.model_id()
    }

    fn score(&self, question: &str, passages: &[&str]) -> Result<Vec<f32>> {
        let asked = self.embedder.embed_queries(&[question])?;
        let q = asked
            .first()
            .ok_or_else(|| rag_core::Error::internal("the embedder returned no vector"))?;
        let vectors = self.embedder.embed(passages)?;
        Ok(vectors.iter().map(|v| dot(q, v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicates_keep_the_first() {
        let mut items = vec![
            (vec![1.0, 0.0], "Leave is 28 days.".to_string()),
            (
                vec![0.999, 0.0447],
                "Leave is 28 days per year.".to_string(),
            ),
            (vec![0.0, 1.0], "  leave IS 28   days. ".to_string()),
            (vec![0.6, 0.8], "Travel is booked in Concur.".to_string()),
        ];
        drop_near_duplicates(&mut items, 0.98, |(v, t)| (v, t));
        let texts: Vec<&str> = items.iter().map(|(_, t)| t.as_str()).collect();
        // The second is too similar by embedding, the third by text.
        assert_eq!(texts, ["Leave is 28 days.", "Travel is booked in Concur."]);
    }

    #[test]
    fn mmr_trades_relevance_for_diversity() {
        let a = [1.0, 0.0];
        let a2 = [0.995, 0.0998];
        let b = [0.0, 1.0];
        let vectors: Vec<&[f32]> = vec![&a, &a2, &b];
        let relevance = [0.9, 0.85, 0.5];
        // All relevance: rank order.
        assert_eq!(mmr_order(&relevance, &vectors, 1.0, 3), [0, 1, 2]);
        // Balanced: the near-copy of the first waits behind the different one.
        assert_eq!(mmr_order(&relevance, &vectors, 0.5, 3), [0, 2, 1]);
        assert_eq!(mmr_order(&relevance, &vectors, 0.5, 2), [0, 2]);
        assert!(mmr_order(&[], &[], 0.5, 3).is_empty());
    }

    #[test]
    fn sentence_ends_and_overlap_joins() {
        assert!(cut_mid_sentence("Employees may carry over up to"));
        assert!(!cut_mid_sentence("Employees may carry over 5 days.\n"));
        assert!(!cut_mid_sentence("| a | b |"));
        assert!(!cut_mid_sentence(""));
        assert_eq!(
            join_overlapping("may carry over up to", "carry over up to 5 days."),
            "may carry over up to 5 days."
        );
        assert_eq!(
            join_overlapping("ends here", "Next part."),
            "ends here Next part."
        );
        assert_eq!(
            join_overlapping("le café au lait chaud", "café au lait chaud est servi."),
            "le café au lait chaud est servi."
        );
        // A letter or two in common is chance; whole rows stay rows.
        assert_eq!(
            join_overlapping("Leave is accrued each pay", "yearly reviews follow."),
            "Leave is accrued each pay yearly reviews follow."
        );
        assert_eq!(
            join_overlapping("| GS-5 | $59 |", "| GS-7 | $68 |"),
            "| GS-5 | $59 |\n\n| GS-7 | $68 |"
        );
    }
}
