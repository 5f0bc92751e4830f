//! Properties of the chunker over generated Markdown and paged text: no
//! chunk over the size, no word lost, every chunk on its own page and under
//! headings the document has.

use proptest::prelude::*;
use rag_ingest::testing::word_tokenizer;
use rag_ingest::{ChunkOptions, Chunker, LoadedDocument};

/// Every word is one token (all unknown to a one-word vocabulary).
/// Markdown of headings and paragraphs; words are `w<n>` so each is unique
/// enough to find again.
fn markdown() -> impl Strategy<Value = (String, Vec<String>)> {
    let block = prop_oneof![
        (1usize..4, "[a-z]{3,8}").prop_map(|(level, h)| format!("{} {h}\n", "#".repeat(level))),
        prop::collection::vec("[a-z]{1,10}", 1..60).prop_map(|w| format!("{}.\n\n", w.join(" "))),
    ];
    prop::collection::vec(block, 1..25).prop_map(|blocks| {
        let headings = blocks
            .iter()
            .filter(|b| b.starts_with('#'))
            .map(|b| b.trim_start_matches('#').trim().to_string())
            .collect();
        (blocks.concat(), headings)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn chunks_fit_cover_the_text_and_name_real_headings(
        (body, headings) in markdown(),
        max in 8usize..40,
    ) {
        let options = ChunkOptions { max_tokens: max, overlap_tokens: max / 4 };
        let chunker = Chunker::new(word_tokenizer(), options).unwrap();
        let doc = LoadedDocument {
            title: "T".into(),
            tags: vec![],
            body: body.clone(),
            markdown: true,
            pages: vec![],
        };
        let chunks = chunker.chunk(&doc);
        for c in &chunks {
            prop_assert!(c.token_count <= max, "{} tokens > {max}: {:?}", c.token_count, c.text);
            prop_assert!(body.contains(&c.text));
            for part in c.heading.split(" > ").filter(|p| !p.is_empty()) {
                prop_assert!(headings.iter().any(|h| h == part), "{part:?} not a heading");
            }
        }
        for word in body.split_whitespace().map(|w| w.trim_matches(['#', '.'])) {
            if !word.is_empty() {
                prop_assert!(chunks.iter().any(|c| c.text.contains(word)), "{word:?} lost");
            }
        }
    }

    #[test]
    fn chunks_of_paged_text_stay_on_their_page(
        pages in prop::collection::vec(prop::collection::vec("[a-z]{1,8}", 1..80), 1..6),
    ) {
        let mut body = String::new();
        let mut starts = Vec::new();
        for (i, words) in pages.iter().enumerate() {
            starts.push((i as u32 + 1, body.len()));
            body.push_str(&words.join(" "));
            body.push('\n');
        }
        let doc = LoadedDocument {
            title: "T".into(),
            tags: vec![],
            body: body.clone(),
            markdown: false,
            pages: starts.clone(),
        };
        let options = ChunkOptions { max_tokens: 16, overlap_tokens: 4 };
        let chunks = Chunker::new(word_tokenizer(), options).unwrap().chunk(&doc);
        for c in &chunks {
            let page = c.page.unwrap() as usize;
            let text = pages[page - 1].join(" ");
            prop_assert!(text.contains(c.text.trim()), "page {page}: {:?}", c.text);
        }
    }
}
