//! [`Policy::answer`]: the decision of what to answer, in one place.

use std::time::Instant;

use rag_core::{
    Answer, Citation, Embedder, Error, GenerationRequest, Generator, Hit, Result, TextSink, Usage,
};

use crate::checked::{Checked, Checker, Thresholds};
use crate::citations;
use crate::prompt::{self, NOT_COVERED};
use crate::select;

/// How the answer is written from the admitted passages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Design {
    /// The model writes the answer; each sentence is checked against the
    /// passage it cites.
    #[default]
    Free,
    /// The model picks, by number, the passage sentences that answer; the
    /// answer quotes them ([`crate::select`]).
    Select,
    /// [`Design::Free`]; where nothing the model wrote holds up,
    /// [`Design::Select`] before any other fallback.
    FreeThenSelect,
    /// No model: the answer quotes the best candidate sentences, as
    /// [`Design::Select`] ranks them, that reach
    /// [`Policy::select_min_score`].
    Extract,
    /// [`Design::Free`]; where nothing the model wrote holds up,
    /// [`Design::Extract`] before any other fallback.
    FreeThenExtract,
}

/// Candidate sentences the model picks from ([`Design::Select`]).
const SELECT_CANDIDATES: usize = 8;
/// A sentence is quoted beside the best one only if it scores at most
/// this much below it.
const PICK_MARGIN: f32 = 0.15;
/// Candidate sentences ranked by words before the embedder ranks them.
const RERANKED: usize = 24;
/// Tokens the model may write to pick: a few numbers.
const SELECT_MAX_TOKENS: usize = 12;
/// Tokens the model may write to confirm a pick: yes or no.
const CONFIRM_MAX_TOKENS: usize = 3;

/// How an answer is made from the retrieved passages. The defaults are the
/// settings' (`retrieval.min_score`, `retrieval.relative_cutoff`,
/// `generator.withhold_instructions`, `generator.verify_min_support`), but
/// for quoting, which is off here and on in the settings
/// (`generator.extract_min_similarity`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Below this cosine similarity of the best passage, the documents are
    /// taken not to cover the question and the model is not called.
    pub min_score: f32,
    /// Passages below `best - relative_cutoff` are not shown to the model.
    pub relative_cutoff: f32,
    /// Keep passages that give the model orders out of the prompt.
    pub withhold_instructions: bool,
    /// A sentence's citation holds when the cited passage has at least this
    /// share of the sentence's content words, and all of its numbers (with
    /// units), names and negations ([`check_claim`]).
    ///
    /// [`check_claim`]: crate::verify::check_claim
    pub verify_min_support: f32,
    /// Share of an uncited sentence's words one passage must contain for
    /// the sentence to be attributed to it (else it is not shown).
    pub min_attribution: f32,
    /// When the model's text holds no checked sentence (it declined, or
    /// nothing it said held up) but the best passage is at least this
    /// similar to the question, the answer quotes that passage's sentence
    /// that best matches the question, cited. Off when unset.
    pub extract_min_similarity: Option<f32>,
    /// When nothing the model said held up but it did write claims, the
    /// answer quotes the passage sentence they were saying
    /// ([`recover`](crate::verify::recover): at least this share of one
    /// claim's content words, and an answer to the question), cited,
    /// before it falls back to [`Policy::extract_min_similarity`]. Off
    /// when unset.
    pub recover_min_alignment: Option<f32>,
    /// Who writes the answer: the model, or the passages' own sentences
    /// that the model picks.
    pub design: Design,
    /// [`Design::Select`]: a sentence holding less of the question than
    /// this ([`select::candidates`]' score) is not quoted; when the best
    /// one does not reach it, the model is not asked.
    pub select_min_score: f32,
    /// [`Design::Select`]: the most sentences an answer quotes.
    pub select_max_picks: usize,
    /// [`Design::Select`]: each pick is quoted only if the model, asked
    /// about it alone, says it answers the question.
    pub select_confirm: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_score: 0.25,
            relative_cutoff: 0.25,
            withhold_instructions: true,
            verify_min_support: 0.5,
            min_attribution: 0.5,
            extract_min_similarity: None,
            recover_min_alignment: None,
            design: Design::Free,
            select_min_score: 0.3,
            select_max_picks: 2,
            select_confirm: false,
        }
    }
}

impl Policy {
    /// Answers `question` from `hits` (best first), citing them, or says
    /// the documents do not cover it. The checked answer goes to `sink`
    /// sentence by sentence as each passes the checks, so what `sink`
    /// receives is exactly the returned `answer` (the abstention included,
    /// unless nothing was admitted: then the model is not called and
    /// `sink` gets nothing). `request`
    /// carries the sampling; its messages are replaced by the grounded
    /// prompt. `usage.retrieval_ms` is left for the caller.
    pub async fn answer(
        &self,
        generator: &dyn Generator,
        question: &str,
        hits: &[Hit],
        request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Answer> {
        let admitted = self.admit(hits);
        match admitted.abstention() {
            Some(answer) => Ok(answer),
            None => {
                self.answer_admitted(generator, None, question, admitted, request, sink)
                    .await
            }
        }
    }

    /// [`Policy::answer`] over hits already [admitted](Policy::admit):
    /// for a caller that loads the model only when some passage is.
    /// `embedder` ranks candidate sentences by meaning
    /// ([`select::rerank`]) for the designs that quote them; without it
    /// they are ranked by words alone.
    pub async fn answer_admitted(
        &self,
        generator: &dyn Generator,
        embedder: Option<&dyn Embedder>,
        question: &str,
        admitted: Admitted<'_>,
        mut request: GenerationRequest,
        sink: TextSink<'_>,
    ) -> Result<Answer> {
        let Admitted {
            passages: relevant,
            withheld,
        } = admitted;
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
        let given = &relevant[..passages.len()];
        let free = match self.design {
            Design::Select | Design::Extract => None,
            Design::Free | Design::FreeThenSelect | Design::FreeThenExtract => {
                let mut checker = Checker::new(self.thresholds(), question, given);
                let started = Instant::now();
                let generation = generator
                    .generate_stream(request.clone(), &mut |piece| {
                        checker.push(piece, &mut *sink)
                    })
                    .await?;
                usage.generation_ms = started.elapsed().as_millis() as u64;
                usage.prompt_tokens = generation.prompt_tokens;
                usage.completion_tokens = generation.completion_tokens;
                Some(checker.finish(&mut *sink))
            }
        };
        let checked = match free {
            Some(checked) if !checked.abstained && self.design == Design::FreeThenExtract => {
                self.complete_parts(embedder, question, given, checked, &mut *sink)?
            }
            Some(checked) if !checked.abstained || self.design == Design::Free => checked,
            free => {
                let selected = self
                    .select(
                        generator, embedder, question, given, request, &mut usage, &mut *sink,
                    )
                    .await?;
                match (selected, free) {
                    // What the model wrote and the checks dropped still counts.
                    (Some(selected), Some(free)) => Checked {
                        dropped: selected.dropped + free.dropped,
                        removed: selected.removed + free.removed,
                        ..selected
                    },
                    (Some(selected), None) => selected,
                    (None, Some(free)) => free,
                    (None, None) => Checked::abstention(),
                }
            }
        };
        let checked = self.conclude(checked, question, given, &mut *sink);
        Ok(answered(checked, given, usage))
    }

    /// [`Design::Select`]: the model picks which candidate sentences of
    /// `given` answer `question`, and the answer quotes them, checked and
    /// emitted like the model's own text. `None` (nothing emitted) when no
    /// sentence is close enough to offer, the model picks none, or none of
    /// its picks passes the checks.
    #[allow(clippy::too_many_arguments)]
    async fn select(
        &self,
        generator: &dyn Generator,
        embedder: Option<&dyn Embedder>,
        question: &str,
        given: &[&Hit],
        request: GenerationRequest,
        usage: &mut Usage,
        sink: TextSink<'_>,
    ) -> Result<Option<Checked>> {
        let rank = |question: &str| rank(embedder, question, given);
        let candidates = rank(question);
        let extract = matches!(self.design, Design::Extract | Design::FreeThenExtract);
        // A question that asks two things gets the best sentence for each,
        // where one reaches the threshold, then the best for the whole.
        let mut picked: Vec<select::Candidate> = Vec::new();
        let parts = select::parts(question);
        if extract && parts.len() > 1 {
            for part in parts {
                if let Some(best) = rank(part).into_iter().next()
                    && best.score >= self.select_min_score
                    && !picked.iter().any(|p| p.text == best.text)
                {
                    picked.push(best);
                }
            }
        }
        // The best sentences are offered whatever the threshold, so a
        // recorded pick replays under another one; picks below it go.
        let Some(best) = candidates
            .first()
            .filter(|best| best.score >= self.select_min_score || !picked.is_empty())
        else {
            return Ok(None);
        };
        let floor = best.score.max(self.select_min_score) - PICK_MARGIN;
        if extract {
            let most = self.select_max_picks.max(picked.len());
            for candidate in candidates.iter().filter(|c| c.score >= floor) {
                if picked.len() >= most {
                    break;
                }
                if !picked.iter().any(|p| p.text == candidate.text) {
                    picked.push(candidate.clone());
                }
            }
            let picked: Vec<&select::Candidate> = picked.iter().collect();
            return Ok(self.quote(question, given, &picked, sink));
        }
        let labels: Vec<String> = given.iter().map(|h| prompt::label(h)).collect();
        let pick = GenerationRequest {
            messages: select::build_messages(question, &candidates, &labels),
            max_tokens: SELECT_MAX_TOKENS,
            ..request.clone()
        };
        let generation = ask_aside(generator, pick, usage).await?;
        let picks = select::parse_picks(&generation.text, candidates.len(), self.select_max_picks);
        if picks.is_empty() {
            return Ok(None);
        }
        let mut picked: Vec<_> = picks
            .iter()
            .map(|&i| &candidates[i])
            .filter(|c| c.score >= floor)
            .collect();
        if self.select_confirm {
            let mut kept = Vec::new();
            for candidate in picked {
                let label = &labels[candidate.passage - 1];
                let request = GenerationRequest {
                    messages: select::confirm_messages(question, candidate, label),
                    max_tokens: CONFIRM_MAX_TOKENS,
                    ..request.clone()
                };
                let generation = ask_aside(generator, request, usage).await?;
                if select::confirmed(&generation.text) {
                    kept.push(candidate);
                }
            }
            picked = kept;
        }
        Ok(self.quote(question, given, &picked, sink))
    }

    /// [`Design::FreeThenExtract`]: the model's checked answer to a
    /// question that asks two things, with the best sentence quoted for
    /// each part it does not already say (less than half of that
    /// sentence's words in it), where one reaches the threshold. The quote
    /// is checked and emitted after the model's text.
    fn complete_parts(
        &self,
        embedder: Option<&dyn Embedder>,
        question: &str,
        given: &[&Hit],
        mut checked: Checked,
        sink: TextSink<'_>,
    ) -> Result<Checked> {
        let parts = select::parts(question);
        if parts.len() < 2 {
            return Ok(checked);
        }
        let mut missing: Vec<select::Candidate> = Vec::new();
        for part in parts {
            if let Some(best) = rank(embedder, part, given).into_iter().next()
                && best.score >= self.select_min_score
                && crate::citations::support(&best.text, &checked.text) < 0.5
                && !missing.iter().any(|m| m.text == best.text)
            {
                missing.push(best);
            }
        }
        let picked: Vec<&select::Candidate> = missing.iter().collect();
        let Some(more) = self.quote(question, given, &picked, &mut |_| {}) else {
            return Ok(checked);
        };
        let added = format!(" {}", more.text);
        sink(&added);
        checked.text.push_str(&added);
        checked.cited.extend(more.cited);
        checked.cited.sort_unstable();
        checked.cited.dedup();
        checked.removed += more.removed;
        checked.dropped += more.dropped;
        checked.extracted = true;
        Ok(checked)
    }

    /// The answer quoting `picked`, checked and emitted like the model's
    /// own text; `None` (nothing emitted) when none passes.
    fn quote(
        &self,
        question: &str,
        given: &[&Hit],
        picked: &[&select::Candidate],
        sink: TextSink<'_>,
    ) -> Option<Checked> {
        if picked.is_empty() {
            return None;
        }
        let mut checker = Checker::new(self.thresholds(), question, given);
        checker.push(&select::compose(picked), &mut *sink);
        let checked = checker.finish(&mut *sink);
        (!checked.abstained).then_some(Checked {
            extracted: true,
            ..checked
        })
    }

    /// The checks alone over a whole `text`: the answer
    /// [`Policy::answer_admitted`] shows when the model writes `text` for
    /// `question` over `given` (the passages in their prompt numbering).
    pub fn check(&self, question: &str, given: &[&Hit], text: &str) -> Answer {
        let mut checker = Checker::new(self.thresholds(), question, given);
        checker.push(text, &mut |_| {});
        let checked = checker.finish(&mut |_| {});
        let checked = self.conclude(checked, question, given, &mut |_| {});
        answered(checked, given, Usage::default())
    }

    /// What replaces a text with no checked sentence: a quote of the best
    /// passage when it is close enough to the question
    /// ([`Policy::extract_min_similarity`]), else the abstention. Emitted
    /// like the rest.
    fn conclude(
        &self,
        mut checked: Checked,
        question: &str,
        given: &[&Hit],
        emit: &mut dyn FnMut(&str),
    ) -> Checked {
        if !checked.abstained {
            return checked;
        }
        // What the model was saying, where a passage says it; else the
        // best passage's sentence closest to the question.
        let recovered = self.recover_min_alignment.and_then(|min| {
            given
                .iter()
                .enumerate()
                .filter_map(|(i, hit)| {
                    crate::verify::recover(question, &checked.dropped_claims, &hit.text, min)
                        .map(|(sentence, score)| (i + 1, sentence, score))
                })
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .map(|(n, sentence, _)| (n, sentence))
        });
        let quote = recovered.or_else(|| {
            self.extract_min_similarity
                .filter(|&min| given.first().is_some_and(|h| h.similarity >= min))
                .and_then(|_| crate::verify::best_sentence(question, &given[0].text))
                .map(|sentence| (1, sentence))
        });
        match quote {
            Some((n, sentence)) => {
                checked.text = format!("The documents say: \"{sentence}\" [{n}]");
                checked.cited = vec![n];
                checked.abstained = false;
                checked.extracted = true;
            }
            None => checked.text = NOT_COVERED.to_string(),
        }
        emit(&checked.text);
        checked
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            verify_min_support: self.verify_min_support,
            min_attribution: self.min_attribution,
        }
    }

    /// The hits the model may see: those past the relevance cut-off, less
    /// those that give it orders (counted as withheld).
    pub fn admit<'a>(&self, hits: &'a [Hit]) -> Admitted<'a> {
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
        Admitted {
            passages: admitted,
            withheld: withheld.len(),
        }
    }
}

/// The hits a question's prompt may draw on, in rank order (see
/// [`Policy::admit`]).
#[derive(Debug, Clone)]
pub struct Admitted<'a> {
    pub passages: Vec<&'a Hit>,
    /// Relevant hits kept out because they give the model orders.
    pub withheld: usize,
}

impl Admitted<'_> {
    /// The answer when nothing was admitted: the documents do not cover
    /// the question, and the model is not called.
    pub fn abstention(&self) -> Option<Answer> {
        self.passages.is_empty().then(|| {
            abstain(Usage {
                passages_withheld: self.withheld,
                ..Default::default()
            })
        })
    }
}

/// The model's reply to a request of the policy's own (a pick, a
/// confirmation), streamed nowhere; its time and tokens added to `usage`.
async fn ask_aside(
    generator: &dyn Generator,
    request: GenerationRequest,
    usage: &mut Usage,
) -> Result<rag_core::Generation> {
    let started = Instant::now();
    let generation = generator.generate_stream(request, &mut |_| {}).await?;
    usage.generation_ms += started.elapsed().as_millis() as u64;
    usage.prompt_tokens += generation.prompt_tokens;
    usage.completion_tokens += generation.completion_tokens;
    Ok(generation)
}

/// The candidate sentences of `given` for `question`, best first: by
/// meaning and words with an embedder, by words alone without.
fn rank(embedder: Option<&dyn Embedder>, question: &str, given: &[&Hit]) -> Vec<select::Candidate> {
    let mut ranked = match embedder {
        // An embedder that fails (a timeout) must not fail an answer that
        // may already have streamed: the words alone rank then.
        Some(embedder) => {
            match select::rerank(
                question,
                select::candidates(question, given, RERANKED),
                embedder,
            ) {
                Ok(ranked) => ranked,
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "ranking sentences by meaning failed; by words alone");
                    select::candidates(question, given, SELECT_CANDIDATES)
                }
            }
        }
        None => select::candidates(question, given, SELECT_CANDIDATES),
    };
    ranked.truncate(SELECT_CANDIDATES);
    ranked
}

/// The answer of checked text: every citation it keeps held up.
fn answered(checked: Checked, given: &[&Hit], mut usage: Usage) -> Answer {
    usage.sentences_dropped = checked.dropped;
    usage.extracted = checked.extracted;
    if checked.abstained {
        return abstain(usage);
    }
    let citations: Vec<Citation> = checked
        .cited
        .iter()
        .map(|&n| {
            let hit = given[n - 1];
            let claims = citations::sentences_citing(&checked.text, n).join(" ");
            Citation {
                n,
                doc_id: hit.doc_id.clone(),
                chunk_id: hit.chunk_id.clone(),
                source: hit.source.clone(),
                title: hit.title.clone(),
                page: hit.page,
                url: hit.url.clone(),
                quote: citations::best_quote(&claims, &hit.text),
                verified: true,
            }
        })
        .collect();
    Answer {
        answer: checked.text,
        abstained: false,
        verified_citations: citations.len(),
        removed_citations: checked.removed,
        citations,
        usage,
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
/// with `max_tokens` reserved for the answer: the longest such prefix.
/// Each passage is priced once (`count_tokens`) instead of rendering the
/// whole prompt per candidate; the whole prompt is counted exactly where
/// the estimate says stop (an estimate on the high side must not leave a
/// passage out) and once at the end (one on the low side must not
/// overflow), and passages come off the end while it does not fit.
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
        passages.push(prompt::render_passage(passages.len() + 1, hit));
        let estimate =
            tokens + generator.count_tokens(passages.last().expect("pushed"))? + separator;
        if fits(estimate) {
            tokens = estimate;
            continue;
        }
        let exact = generator.count_prompt_tokens(&prompt::build_messages(question, &passages))?;
        if !fits(exact) {
            passages.pop();
            break;
        }
        tokens = exact;
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
