//! [`Policy::answer`]: the decision of what to answer, in one place.

use std::time::Instant;

use rag_core::{
    Answer, Citation, Error, GenerationRequest, Generator, Hit, Result, TextSink, Usage,
};

use crate::citations::{self, CheckedAnswer};
use crate::prompt::{self, NOT_COVERED};

/// How an answer is made from the retrieved passages. The defaults are the
/// settings' (`retrieval.min_score`, `retrieval.relative_cutoff`,
/// `generator.withhold_instructions`, `generator.verify_min_support`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Below this cosine similarity of the best passage, the documents are
    /// taken not to cover the question and the model is not called.
    pub min_score: f32,
    /// Passages below `best - relative_cutoff` are not shown to the model.
    pub relative_cutoff: f32,
    /// Keep passages that give the model orders out of the prompt.
    pub withhold_instructions: bool,
    /// A citation is verified when every sentence citing it has at least
    /// this share of its content words in the cited passage.
    pub verify_min_support: f32,
    /// Share of an uncited answer's words one passage must contain for the
    /// answer to be attributed to it (else it is not shown).
    pub min_attribution: f32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_score: 0.25,
            relative_cutoff: 0.25,
            withhold_instructions: true,
            verify_min_support: 0.5,
            min_attribution: 0.5,
        }
    }
}

impl Policy {
    /// Answers `question` from `hits` (best first), citing them, or says
    /// the documents do not cover it. The model's text goes to `sink` as it
    /// is generated; the returned answer is the checked one. `request`
    /// carries the sampling; its messages are replaced by the grounded
    /// prompt. `usage.retrieval_ms` is left for the caller.
    pub async fn answer(
        &self,
        generator: &dyn Generator,
        question: &str,
        hits: &[Hit],
        mut request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Answer> {
        let (relevant, withheld) = self.admit(hits);
        let mut usage = Usage {
            passages_withheld: withheld,
            ..Default::default()
        };
        if relevant.is_empty() {
            return Ok(abstain(usage));
        }
        let passages = pack(generator, question, &relevant, request.max_tokens)?;
        usage.passages_used = passages.len();
        usage.passages_left_out = relevant.len() - passages.len();
        request.messages = prompt::build_messages(question, &passages);
        let started = Instant::now();
        let generation = generator.generate_stream(request, sink).await?;
        usage.generation_ms = started.elapsed().as_millis() as u64;
        usage.prompt_tokens = generation.prompt_tokens;
        usage.completion_tokens = generation.completion_tokens;
        Ok(self.check(&generation.text, &relevant, &passages, usage))
    }

    /// The hits the model may see: those past the relevance cut-off, less
    /// those that give it orders. Returns them and how many were withheld.
    fn admit<'a>(&self, hits: &'a [Hit]) -> (Vec<&'a Hit>, usize) {
        // Similarity, not the ranking score: it means the same in every mode.
        let best = hits.iter().map(|h| h.similarity).fold(f32::MIN, f32::max);
        let relevant = hits.iter().filter(|h| {
            h.similarity >= self.min_score && h.similarity >= best - self.relative_cutoff
        });
        // A passage that gives the model orders is an injection, not a
        // source: even a warning beside it does not stop a small model
        // from obeying (tests/hardening.rs), so it is not given at all.
        let (withheld, admitted): (Vec<&Hit>, Vec<&Hit>) = relevant.partition(|h| {
            self.withhold_instructions
                && (prompt::gives_orders(&h.text) || prompt::gives_orders(&h.title))
        });
        if !withheld.is_empty() {
            let sources: Vec<&str> = withheld.iter().map(|h| h.source.as_str()).collect();
            tracing::warn!(
                ?sources,
                "passages that give the model orders were withheld"
            );
            metrics::counter!("rag_passages_withheld_total").increment(withheld.len() as u64);
        }
        (admitted, withheld.len())
    }

    /// The answer shown for the model's `text` over `passages` (rendered
    /// from `relevant`, in order): citations to passages not given removed,
    /// a refusal turned into the abstention, an uncited answer attributed
    /// to the passage it draws on or dropped, each citation verified.
    fn check(&self, text: &str, relevant: &[&Hit], passages: &[String], usage: Usage) -> Answer {
        let mut checked: CheckedAnswer = citations::check_citations(text, passages.len());
        if citations::is_refusal(&checked.text) {
            return abstain(usage);
        }
        if checked.cited.is_empty() {
            // Small models often answer without citing. An answer that
            // draws on one passage is attributed to it; one that matches
            // none is not grounded and is not shown.
            match citations::attribute(&checked.text, passages, self.min_attribution) {
                Some(n) => {
                    checked.text = format!("{} [{n}]", checked.text);
                    checked.cited = vec![n];
                }
                None => return abstain(usage),
            }
        }
        let citations: Vec<Citation> = checked
            .cited
            .iter()
            .map(|&n| {
                let hit = relevant[n - 1];
                Citation {
                    n,
                    doc_id: hit.doc_id.clone(),
                    chunk_id: hit.chunk_id.clone(),
                    source: hit.source.clone(),
                    title: hit.title.clone(),
                    page: hit.page,
                    quote: citations::best_quote(&checked.text, &hit.text),
                    verified: citations::verify_citation(
                        &checked.text,
                        n,
                        &hit.text,
                        self.verify_min_support,
                    ),
                }
            })
            .collect();
        Answer {
            answer: checked.text,
            abstained: false,
            verified_citations: citations.iter().filter(|c| c.verified).count(),
            removed_citations: checked.removed,
            citations,
            usage,
        }
    }
}

fn abstain(usage: Usage) -> Answer {
    Answer {
        answer: NOT_COVERED.to_string(),
        abstained: true,
        citations: vec![],
        verified_citations: 0,
        removed_citations: 0,
        usage,
    }
}

/// The passages, rendered and in rank order, that fit the context window
/// with `max_tokens` reserved for the answer. Each passage is priced once
/// (`count_tokens`); the prompt they make is then counted whole, and
/// passages come off the end while an estimate proved short.
fn pack(
    generator: &dyn Generator,
    question: &str,
    relevant: &[&Hit],
    max_tokens: usize,
) -> Result<Vec<String>> {
    let window = generator.context_window();
    let fits = |tokens: usize| tokens + max_tokens <= window;
    let separator = generator.count_tokens("\n\n")?;
    let mut tokens = generator.count_prompt_tokens(&prompt::build_messages(question, &[]))?;
    let mut passages = Vec::new();
    for hit in relevant {
        let passage = prompt::render_passage(passages.len() + 1, hit);
        let cost = generator.count_tokens(&passage)? + separator;
        if !fits(tokens + cost) {
            break;
        }
        tokens += cost;
        passages.push(passage);
    }
    while !passages.is_empty()
        && !fits(generator.count_prompt_tokens(&prompt::build_messages(question, &passages))?)
    {
        passages.pop();
    }
    if passages.is_empty() {
        return Err(Error::invalid(format!(
            "the question and one passage do not fit the model's context of {window} tokens with \
             {max_tokens} answer tokens reserved; ask for fewer max_tokens"
        )));
    }
    Ok(passages)
}
