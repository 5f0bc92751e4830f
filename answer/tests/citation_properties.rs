//! Properties of the citation check over arbitrary model output.

use proptest::prelude::*;
use rag_answer::citations::check_citations;

/// Text with citation markers, well-formed and not, among words.
fn answer() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-z]{1,8}",
        Just(" ".to_string()),
        Just(". ".to_string()),
        (0usize..12).prop_map(|n| format!("[{n}]")),
        (0usize..12, 0usize..12).prop_map(|(a, b)| format!("[{a}, {b}]")),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("[x]".to_string()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn every_citation_kept_names_a_given_passage(text in answer(), passages in 0usize..6) {
        let checked = check_citations(&text, passages);
        prop_assert!(checked.cited.iter().all(|n| (1..=passages).contains(n)));
        prop_assert!(checked.cited.windows(2).all(|w| w[0] < w[1]));
        // What is left is already clean: checking again removes nothing.
        let again = check_citations(&checked.text, passages);
        prop_assert_eq!(again.removed, 0);
        prop_assert_eq!(&again.cited, &checked.cited);
    }

    #[test]
    fn with_every_passage_given_nothing_in_range_is_removed(n in 1usize..10) {
        let text = format!("Fact one [{n}]. Fact two [1, {n}].");
        let checked = check_citations(&text, 10);
        prop_assert_eq!(checked.removed, 0);
        prop_assert!(checked.cited.contains(&n));
    }
}
