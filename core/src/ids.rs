use sha2::{Digest, Sha256};

/// Identity of a document: its collection and its source path.
///
/// Re-ingesting the same source in the same collection addresses the same
/// document, which is what makes re-ingest replace rather than duplicate.
pub fn document_id(collection: &str, source: &str) -> String {
    short_hash(&[collection, source])
}

/// Identity of a chunk: the document it belongs to, its text, and which
/// occurrence of that text it is (a page may repeat a paragraph).
///
/// The same text in the same document gets the same id, so unchanged chunks
/// of an edited document keep their vectors.
pub fn chunk_id(document_id: &str, text: &str, occurrence: usize) -> String {
    short_hash(&[document_id, text, &occurrence.to_string()])
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let doc = document_id("default", "travel/leave.md");
        assert_eq!(doc, document_id("default", "travel/leave.md"));
        assert_ne!(doc, document_id("other", "travel/leave.md"));
        assert_eq!(doc.len(), 32);
        assert_eq!(chunk_id(&doc, "a", 0), chunk_id(&doc, "a", 0));
        assert_ne!(chunk_id(&doc, "a", 0), chunk_id(&doc, "a", 1));
        assert_ne!(chunk_id(&doc, "a", 0), chunk_id(&doc, "b", 0));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(document_id("ab", "c"), document_id("a", "bc"));
    }
}
