use rag_core::{Error, Result};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

use crate::LoadedDocument;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkOptions {
    /// Largest chunk, in tokens of the embedder's tokenizer.
    pub max_tokens: usize,
    /// Tokens shared by neighbouring chunks.
    pub overlap_tokens: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        // all-MiniLM-L6-v2 reads at most 256 tokens; the title and heading
        // prefix added for embedding must fit beside the chunk.
        Self {
            max_tokens: 200,
            overlap_tokens: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextChunk {
    pub text: String,
    /// Heading path at the chunk's start, `A > B`; empty when none.
    pub heading: String,
    /// The page the chunk is on, for paged formats; chunks never span pages.
    pub page: Option<u32>,
    pub token_count: usize,
}

/// Splits documents into token-sized chunks, Markdown-aware: it breaks at
/// headings, then paragraphs, then sentences.
pub struct Chunker {
    tokenizer: Tokenizer,
    options: ChunkOptions,
}

impl Chunker {
    pub fn new(mut tokenizer: Tokenizer, options: ChunkOptions) -> Result<Self> {
        if options.overlap_tokens >= options.max_tokens {
            return Err(Error::invalid(format!(
                "chunking.overlap_tokens ({}) must be smaller than chunking.max_tokens ({})",
                options.overlap_tokens, options.max_tokens
            )));
        }
        // Counting must see whole texts: no truncation, no padding.
        tokenizer.with_truncation(None).map_err(|e| {
            Error::internal("turning the tokenizer's truncation off").with_source(e)
        })?;
        tokenizer.with_padding(None);
        Ok(Self { tokenizer, options })
    }

    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.len())
            .unwrap_or(0)
    }

    pub fn chunk(&self, doc: &LoadedDocument) -> Vec<TextChunk> {
        if doc.pages.is_empty() {
            return self.chunk_text(doc, &doc.body, None);
        }
        // Page by page, so that every chunk knows its page.
        let mut out = Vec::new();
        for (i, &(number, start)) in doc.pages.iter().enumerate() {
            let end = doc.pages.get(i + 1).map_or(doc.body.len(), |p| p.1);
            out.extend(self.chunk_text(doc, &doc.body[start..end], Some(number)));
        }
        out
    }

    fn chunk_text(&self, doc: &LoadedDocument, body: &str, page: Option<u32>) -> Vec<TextChunk> {
        let config = ChunkConfig::new(self.options.max_tokens)
            .with_overlap(self.options.overlap_tokens)
            .expect("overlap checked in new")
            .with_sizer(&self.tokenizer);
        let pieces: Vec<(usize, &str)> = if doc.markdown {
            MarkdownSplitter::new(config).chunk_indices(body).collect()
        } else {
            TextSplitter::new(config).chunk_indices(body).collect()
        };
        let headings = if doc.markdown {
            heading_offsets(body)
        } else {
            vec![]
        };
        pieces
            .into_iter()
            .filter(|(_, text)| text.chars().any(char::is_alphanumeric))
            .map(|(offset, text)| {
                // The heading path in force at the end of the chunk's first line.
                let first_line_end = offset + text.find('\n').unwrap_or(text.len());
                TextChunk {
                    text: text.to_string(),
                    heading: breadcrumb(&headings, first_line_end),
                    page,
                    token_count: self.count_tokens(text),
                }
            })
            .collect()
    }
}

/// `(byte offset, level, text)` of every ATX heading outside code fences.
pub(crate) fn heading_offsets(body: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut in_fence = false;
    for line in body.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence && trimmed.starts_with('#') {
            let level = trimmed.chars().take_while(|&c| c == '#').count();
            let text = trimmed[level..].trim();
            if level <= 6 && !text.is_empty() && trimmed[level..].starts_with([' ', '\t']) {
                out.push((offset, level, text.trim_end_matches('#').trim().to_string()));
            }
        }
        offset += line.len();
    }
    out
}

pub(crate) fn breadcrumb(headings: &[(usize, usize, String)], at: usize) -> String {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (offset, level, text) in headings {
        if *offset > at {
            break;
        }
        while stack.last().is_some_and(|(l, _)| l >= level) {
            stack.pop();
        }
        stack.push((*level, text));
    }
    stack
        .iter()
        .map(|(_, t)| *t)
        .collect::<Vec<_>>()
        .join(" > ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breadcrumbs_follow_heading_levels() {
        let body = "# Travel\nintro\n## Per diem\nrates\n```\n# not a heading\n```\n## Lodging\nhotels\n# Leave\nx";
        let h = heading_offsets(body);
        assert_eq!(
            h.iter()
                .map(|(_, l, t)| (*l, t.as_str()))
                .collect::<Vec<_>>(),
            [(1, "Travel"), (2, "Per diem"), (2, "Lodging"), (1, "Leave")]
        );
        assert_eq!(
            breadcrumb(&h, body.find("rates").unwrap()),
            "Travel > Per diem"
        );
        assert_eq!(
            breadcrumb(&h, body.find("hotels").unwrap()),
            "Travel > Lodging"
        );
        assert_eq!(breadcrumb(&h, body.len()), "Leave");
        assert_eq!(breadcrumb(&h, 0), "Travel");
    }
}
