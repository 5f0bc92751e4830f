use sha2::{Digest, Sha256};

/// Identity of a document: its collection and its source path.
///
/// Re-ingesting the same source in the same collection addresses the same
/// document, which is what makes re-ingest replace rather than duplicate.
pub fn document_id(collection: &str, source: &str) -> String {
    short_hash(&[collection, source])
}

/// Identity of a document that a restricted writer (an API key limited to
/// some groups) created under a name it could not take over: its
/// collection, source, the groups it was written for, and a counter that
/// starts at 0 (raised only if that id is held by a document the writer
/// may not replace). ARCHITECTURE.md, "Invariants", has the whole rule.
pub fn scoped_document_id(collection: &str, source: &str, groups: &[String], n: usize) -> String {
    let mut groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    groups.sort_unstable();
    groups.dedup();
    let n = n.to_string();
    let mut parts = vec![collection, source, "scoped", &n];
    parts.extend(groups);
    short_hash(&parts)
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
        let scoped = scoped_document_id("default", "travel/leave.md", &["b".into(), "a".into()], 0);
        assert_ne!(scoped, doc);
        assert_eq!(
            scoped,
            scoped_document_id("default", "travel/leave.md", &["a".into(), "b".into()], 0)
        );
        assert_ne!(
            scoped,
            scoped_document_id("default", "travel/leave.md", &["a".into(), "b".into()], 1)
        );
        assert_ne!(
            scoped,
            scoped_document_id("default", "travel/leave.md", &["a".into()], 0)
        );
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(document_id("ab", "c"), document_id("a", "bc"));
    }
}
