//! `rag eval answers`: fixture questions through retrieval and generation,
//! scored per question and in aggregate, written as JSON lines, a summary,
//! and Markdown and HTML reports; a threshold file turns it into a gate.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rag_answer::Policy;
use rag_core::{Generator, Hit, SearchFilter};
use serde::{Deserialize, Serialize};

use crate::app::{App, Query};
use crate::ops::eval_trace::{Recorder, Replayer, Trace};

/// One line of a question file.
#[derive(Debug, Clone, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    /// Earlier user turns of the conversation, oldest first: `question` is
    /// a follow-up to them.
    #[serde(default)]
    pub history: Vec<String>,
    pub answerable: bool,
    #[serde(default)]
    pub gold_sources: Vec<String>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub must_include: Vec<String>,
    #[serde(default)]
    pub kind: String,
}

pub fn load_questions(path: &Path) -> anyhow::Result<Vec<Question>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out: Vec<Question> = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        anyhow::ensure!(
            ids.insert(q.id.clone()),
            "{} line {}: duplicate id {:?}",
            path.display(),
            i + 1,
            q.id
        );
        out.push(q);
    }
    anyhow::ensure!(!out.is_empty(), "{} has no questions", path.display());
    Ok(out)
}

/// What kind of answer a question wants, read from the question itself
/// (so a set without labels is split too): `unanswerable`, `follow-up`
/// (it has history), `multi-part` (it asks two things), `numeric` (its
/// expected facts hold a number), `procedure` (how to do something),
/// `definition` (what something is), else `fact`.
pub fn answer_kind(q: &Question) -> &'static str {
    const NUMBER_WORDS: &[&str] = &[
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
        "hundred",
    ];
    let lower = q.question.to_lowercase();
    // What is asked: the sentences that end in a question mark ("I'm on a
    // Mac. How do I log in?" asks one thing), or the whole text.
    let asks: Vec<&str> = {
        let mut asks = Vec::new();
        let mut start = 0;
        for (i, c) in lower.char_indices() {
            if matches!(c, '.' | '!' | '?') && lower[i + 1..].starts_with([' ', '\n'])
                || i + 1 == lower.len()
            {
                let sentence = lower[start..=i].trim();
                if sentence.ends_with('?') {
                    asks.push(sentence);
                }
                start = i + 1;
            }
        }
        if asks.is_empty() {
            asks.push(lower.trim());
        }
        asks
    };
    let starts = |prefixes: &[&str]| {
        asks.iter()
            .any(|a| prefixes.iter().any(|p| a.starts_with(p)))
    };
    let numeric = q
        .must_include
        .iter()
        .chain(q.answer.as_slice())
        .any(|text| {
            // A number standing alone ("12 weeks", "$75"), not inside a
            // name ("1Password").
            text.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| {
                    (!w.is_empty() && w.chars().all(|c| c.is_ascii_digit()))
                        || NUMBER_WORDS.contains(&w)
                })
        });
    // "..., and is there a limit on ...?", "...? what about ...?"
    const ASKING: &[&str] = &[
        "what", "which", "who", "when", "where", "why", "how", "is", "are", "can", "could", "do",
        "does", "did", "will", "should",
    ];
    let two_questions = asks.len() > 1
        || asks.iter().any(|a| {
            let words: Vec<&str> = a
                .split(|c: char| !c.is_alphanumeric() && c != '\'')
                .filter(|w| !w.is_empty())
                .collect();
            words
                .windows(2)
                .any(|w| w[0] == "and" && ASKING.contains(&w[1]))
        });
    // The question's own form first: a procedure stays one when its
    // answer holds a form number.
    if !q.answerable {
        "unanswerable"
    } else if !q.history.is_empty() {
        "follow-up"
    } else if two_questions || q.kind == "multi-part" {
        "multi-part"
    } else if starts(&[
        "how do i",
        "how can i",
        "how should i",
        "how to",
        "what steps",
        "what are the steps",
        "what's the process",
        "what is the process",
        "what do i do",
        "what should i do",
        "where do i",
        "where can i",
    ]) {
        "procedure"
    } else if starts(&["what is ", "what are ", "what's ", "what does ", "define "])
        && !asks.iter().any(|a| a.contains(" for "))
    {
        "definition"
    } else if numeric {
        "numeric"
    } else {
        "fact"
    }
}

/// What one question scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuestionResult {
    pub id: String,
    pub kind: String,
    /// [`answer_kind`].
    #[serde(default)]
    pub answer_kind: String,
    pub question: String,
    /// The standalone question asked for a follow-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<String>,
    pub answerable: bool,
    /// Rank (from 1) of the first retrieved passage from a gold source.
    pub gold_rank: Option<usize>,
    pub answer: String,
    pub abstained: bool,
    pub citations: Vec<CitedSource>,
    /// Every `must_include` string is in the answer (answerable only).
    pub must_include_ok: Option<bool>,
    /// Token F1 against the reference answer, when there is one.
    pub f1: Option<f64>,
    /// Share of citations that point at a gold source or quote a
    /// `must_include` string; `None` without citations.
    pub citation_precision: Option<f64>,
    /// Whether the passages put in the prompt contain every
    /// `must_include` string (answerable questions that have some).
    #[serde(default)]
    pub evidence_ok: Option<bool>,
    /// The fewest prompt passages, in prompt order, that together hold
    /// every `must_include` string (`None`: the prompt does not).
    #[serde(default)]
    pub evidence_at: Option<usize>,
    /// The answer quotes the best passage (`generator.extract_min_similarity`)
    /// because nothing the model said held up.
    #[serde(default)]
    pub extracted: bool,
    /// Cosine similarity of the best hit the answer was made from.
    #[serde(default)]
    pub top_similarity: Option<f32>,
    /// Whether a gold page is among the passages put in the prompt.
    #[serde(default)]
    pub gold_in_prompt: Option<bool>,
    /// Whether the reference answer, citing the prompt passage that holds
    /// the evidence, passes verification unchanged.
    #[serde(default)]
    pub reference_verified: Option<bool>,
    /// Copies of the reference answer with one fact changed, and whether
    /// verification caught each.
    #[serde(default)]
    pub alterations: Vec<AlterationResult>,
    pub retrieval_ms: u64,
    pub generation_ms: u64,
    pub total_ms: u64,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Scored over a recorded trace (`--replay`), without the model; the
    /// timings are the recording's.
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlterationResult {
    pub kind: String,
    pub text: String,
    pub caught: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CitedSource {
    pub n: usize,
    pub source: String,
    pub correct: bool,
    pub verified: bool,
}

/// Lower-cased words without punctuation and articles, as SQuAD's
/// evaluation normalises answers.
fn tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !matches!(*w, "a" | "an" | "the"))
        .map(str::to_string)
        .collect()
}

/// Token-overlap F1 between an answer and a reference (SQuAD's metric).
pub fn token_f1(answer: &str, reference: &str) -> f64 {
    let (a, r) = (tokens(answer), tokens(reference));
    if a.is_empty() || r.is_empty() {
        return if a == r { 1.0 } else { 0.0 };
    }
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &r {
        *left.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &a {
        if let Some(n) = left.get_mut(w.as_str())
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / a.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

pub fn includes_all(answer: &str, must: &[String]) -> bool {
    let answer = answer.to_lowercase();
    must.iter().all(|m| answer.contains(&m.to_lowercase()))
}

/// Answers one question and scores it.
/// How [`evaluate`] gets a question's passages and model text.
#[derive(Clone, Copy)]
pub enum How<'a> {
    /// Retrieve and ask the model; `record`: keep a [`Trace`] of it.
    Live { record: bool },
    /// Over a recorded trace, without the model where the prompt is the
    /// recorded one; asked afresh (and recorded) where it is not.
    Replay(&'a Trace),
}

/// Scores one question; with its trace when recording, or when a replay
/// had to ask the model afresh.
pub async fn evaluate(
    app: &App,
    q: &Question,
    filter: &SearchFilter,
    how: How<'_>,
) -> anyhow::Result<(QuestionResult, Option<Trace>)> {
    let started = Instant::now();
    // A follow-up is asked as the chat endpoint asks it: made standalone.
    let mut turns = q.history.clone();
    turns.push(q.question.clone());
    let asked = rag_answer::conversation::standalone_question(&turns);
    let top = Query {
        k: Some(10),
        mode: None,
        filter: filter.clone(),
        sampling: Default::default(),
    };
    let query = Query {
        k: None,
        ..top.clone()
    };
    // A replay: the recorded hits and model text, where they still apply.
    if let How::Replay(trace) = how
        && trace.asked == asked
    {
        let replayer = Arc::new(Replayer::new(trace));
        let replayed = app
            .ask_traced(
                &asked,
                &query,
                Some(trace.answer_hits.clone()),
                Some(replayer.clone()),
            )
            .await;
        match (replayed, replayer.missed()) {
            (Ok((answer_hits, answer)), None) => {
                let mut result = score(&app.policy(), q, &asked, &trace.hits, &answer_hits, answer);
                result.replayed = true;
                (result.retrieval_ms, result.generation_ms, result.total_ms) =
                    (trace.retrieval_ms, trace.generation_ms, trace.total_ms);
                return Ok((result, None));
            }
            (_, Some(missed)) => {
                tracing::info!(id = %q.id, %missed, "not in the recording: asked afresh");
            }
            (Err(e), None) => return Err(e.into()),
        }
    }
    let record = match how {
        How::Live { record } => record,
        How::Replay(_) => true,
    };
    let hits = app.retrieve(&asked, &top).await?;
    let recorder = if record {
        Some(Arc::new(Recorder::new(app.generator().await?)))
    } else {
        None
    };
    let generator = recorder.clone().map(|r| r as Arc<dyn Generator>);
    let (answer_hits, answer) = app.ask_traced(&asked, &query, None, generator).await?;
    let mut result = score(&app.policy(), q, &asked, &hits, &answer_hits, answer);
    result.total_ms = started.elapsed().as_millis() as u64;
    let trace = recorder.map(|recorder| {
        let (token_counts, generations) = recorder.take();
        Trace {
            id: q.id.clone(),
            asked: asked.clone(),
            hits,
            answer_hits,
            model: recorder.model_id().to_string(),
            context_window: recorder.context_window(),
            token_counts,
            generations,
            retrieval_ms: result.retrieval_ms,
            generation_ms: result.generation_ms,
            total_ms: result.total_ms,
        }
    });
    Ok((result, trace))
}

/// What `answer` (made from `answer_hits`, for `asked`) scores on `q`;
/// `hits` are the top 10 retrieved. Timings are the answer's; `total_ms`
/// is left for the caller.
fn score(
    policy: &Policy,
    q: &Question,
    asked: &str,
    hits: &[Hit],
    answer_hits: &[Hit],
    answer: rag_core::Answer,
) -> QuestionResult {
    let gold: HashSet<&str> = q.gold_sources.iter().map(String::as_str).collect();
    let gold_rank = hits
        .iter()
        .position(|h| gold.contains(h.source.as_str()))
        .map(|i| i + 1);
    // What the model was given: the admitted hits, as many as were packed.
    let admitted = policy.admit(answer_hits);
    let prompt: Vec<&Hit> = admitted
        .passages
        .iter()
        .take(answer.usage.passages_used)
        .copied()
        .collect();
    let answerable_with_facts = q.answerable && !q.must_include.is_empty();
    let evidence_at = evidence_at(&prompt, &q.must_include);
    // The whole prompt holds the facts exactly when some prefix of it does.
    let evidence_ok = answerable_with_facts.then_some(evidence_at.is_some());
    let gold_in_prompt = q
        .answerable
        .then(|| prompt.iter().any(|h| gold.contains(h.source.as_str())));
    let (reference_verified, alterations) =
        verify_reference(policy, q, asked, &prompt, evidence_ok);
    // A citation names a passage given to the model, so one of these.
    let texts: BTreeMap<&str, String> = answer_hits
        .iter()
        .map(|h| (h.chunk_id.as_str(), h.text.to_lowercase()))
        .collect();
    let citations: Vec<CitedSource> = answer
        .citations
        .iter()
        .map(|c| {
            let text = texts
                .get(c.chunk_id.as_str())
                .map(String::as_str)
                .unwrap_or("");
            let quotes = !q.must_include.is_empty()
                && q.must_include
                    .iter()
                    .any(|m| text.contains(&m.to_lowercase()));
            CitedSource {
                n: c.n,
                source: c.source.clone(),
                correct: gold.contains(c.source.as_str()) || quotes,
                verified: c.verified,
            }
        })
        .collect();
    let citation_precision = (!citations.is_empty())
        .then(|| citations.iter().filter(|c| c.correct).count() as f64 / citations.len() as f64);
    let shown = if answer.abstained {
        ""
    } else {
        answer.answer.as_str()
    };
    QuestionResult {
        id: q.id.clone(),
        kind: q.kind.clone(),
        answer_kind: answer_kind(q).to_string(),
        question: q.question.clone(),
        asked: (asked != q.question).then(|| asked.to_string()),
        answerable: q.answerable,
        gold_rank,
        abstained: answer.abstained,
        must_include_ok: q.answerable.then(|| includes_all(shown, &q.must_include)),
        f1: q
            .answer
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| token_f1(shown, r)),
        citation_precision,
        evidence_ok,
        evidence_at,
        top_similarity: answer_hits.first().map(|h| h.similarity),
        extracted: answer.usage.extracted,
        gold_in_prompt,
        reference_verified,
        alterations,
        answer: answer.answer,
        citations,
        retrieval_ms: answer.usage.retrieval_ms,
        generation_ms: answer.usage.generation_ms,
        total_ms: answer.usage.retrieval_ms + answer.usage.generation_ms,
        prompt_tokens: answer.usage.prompt_tokens,
        completion_tokens: answer.usage.completion_tokens,
        replayed: false,
    }
}

/// The fewest passages from the front of `prompt` that together hold
/// every one of `must_include` (none to find: `None`).
fn evidence_at(prompt: &[&Hit], must_include: &[String]) -> Option<usize> {
    if must_include.is_empty() {
        return None;
    }
    // The passages joined as the whole prompt's text is.
    let mut seen = String::new();
    for (i, hit) in prompt.iter().enumerate() {
        if i > 0 {
            seen.push('\n');
        }
        seen.push_str(&hit.text);
        if includes_all(&seen, must_include) {
            return Some(i + 1);
        }
    }
    None
}

/// The verification check on the reference answer: cited to the first
/// prompt passage that holds all of `must_include`, it must pass
/// unchanged, and each copy with a fact changed
/// ([`rag_answer::verify::alterations`]) must lose the changed sentence.
/// Nothing to check without a reference or without the evidence.
fn verify_reference(
    policy: &Policy,
    q: &Question,
    asked: &str,
    prompt: &[&Hit],
    evidence_ok: Option<bool>,
) -> (Option<bool>, Vec<AlterationResult>) {
    let Some(reference) = q.answer.as_deref().map(str::trim).filter(|r| !r.is_empty()) else {
        return (None, vec![]);
    };
    // The reference cites every prompt passage that holds one of its
    // facts (a question may need two pages); it is verified when the
    // checker keeps each of its sentences, on whichever of those supports
    // it. Not scored when the question has no facts to check or the
    // prompt lacks one (`evidence_ok`).
    if evidence_ok != Some(true) {
        return (None, vec![]);
    }
    let evidence: Vec<usize> = prompt
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let text = h.text.to_lowercase();
            q.must_include
                .iter()
                .any(|m| text.contains(&m.to_lowercase()))
        })
        .map(|(i, _)| i + 1)
        .collect();
    let marker = format!(
        "[{}]",
        evidence
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cited = rag_answer::citations::cite_each_sentence(reference, &marker);
    let kept = |text: &str| {
        let checked = policy.check(asked, prompt, text);
        !checked.abstained && checked.usage.sentences_dropped == 0
    };
    let verified = kept(&cited);
    if !verified {
        // An alteration of a reference that fails already proves nothing.
        return (Some(false), vec![]);
    }
    let avoid = evidence
        .iter()
        .map(|&n| prompt[n - 1].text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let alterations = rag_answer::verify::alterations(&cited, &avoid)
        .into_iter()
        .map(|a| AlterationResult {
            kind: a.kind.name().to_string(),
            caught: !kept(&a.text),
            text: a.text,
        })
        .collect();
    (Some(true), alterations)
}

/// Aggregates over a set of results. Fields a baseline written by an
/// older version lacks read as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub questions: usize,
    pub answerable: usize,
    pub unanswerable: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr: f64,
    pub must_include_accuracy: f64,
    pub f1: f64,
    pub citation_precision: f64,
    /// Answers with at least one citation (what citation precision is
    /// computed over).
    pub cited_answers: usize,
    /// Share of citations whose passage supports the sentences citing it;
    /// `None` without citations.
    pub citations_verified: Option<f64>,
    /// Answerable questions whose prompt passages contain every
    /// `must_include` string.
    pub evidence_recall: f64,
    /// Answerable questions (with `must_include`) whose first 1, 3 and 5
    /// prompt passages hold every `must_include` string.
    #[serde(default)]
    pub evidence_at_1: f64,
    #[serde(default)]
    pub evidence_at_3: f64,
    #[serde(default)]
    pub evidence_at_5: f64,
    /// Of the answerable questions whose gold page was in the prompt, the
    /// share answered correctly (must-include): generation failures apart
    /// from retrieval ones.
    pub context_use: f64,
    /// Reference answers (cited to their evidence) that pass verification.
    pub references_verified: Option<f64>,
    /// Copies of reference answers with a fact changed that verification
    /// caught, and how many there were.
    pub alterations_caught: Option<f64>,
    pub alterations: usize,
    /// Unanswerable questions that were abstained on.
    pub abstention_accuracy: f64,
    /// Answerable questions that were abstained on.
    pub false_abstention_rate: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub mean_prompt_tokens: f64,
    pub mean_completion_tokens: f64,
    /// Generation seconds per answer: the machine time an answer costs.
    pub generation_seconds_per_answer: f64,
    /// At `--price-per-1k-tokens`.
    pub cost_per_answer: f64,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn summarize(results: &[&QuestionResult], price_per_1k: f64) -> Summary {
    let answerable: Vec<&&QuestionResult> = results.iter().filter(|r| r.answerable).collect();
    let unanswerable: Vec<&&QuestionResult> = results.iter().filter(|r| !r.answerable).collect();
    let hit = |k: usize| {
        mean(
            answerable
                .iter()
                .map(|r| r.gold_rank.is_some_and(|g| g <= k) as u8 as f64),
        )
    };
    let evidence_within = |k: usize| {
        mean(
            answerable
                .iter()
                .filter(|r| r.evidence_ok.is_some())
                // A result resumed from before evidence@k was recorded.
                .filter(|r| !(r.evidence_ok == Some(true) && r.evidence_at.is_none()))
                .map(|r| r.evidence_at.is_some_and(|n| n <= k) as u8 as f64),
        )
    };
    let latencies: Vec<u64> = results.iter().map(|r| r.total_ms).collect();
    let tokens = |r: &QuestionResult| (r.prompt_tokens + r.completion_tokens) as f64;
    Summary {
        questions: results.len(),
        answerable: answerable.len(),
        unanswerable: unanswerable.len(),
        recall_at_1: hit(1),
        recall_at_5: hit(5),
        recall_at_10: hit(10),
        mrr: mean(
            answerable
                .iter()
                .map(|r| r.gold_rank.map_or(0.0, |g| 1.0 / g as f64)),
        ),
        must_include_accuracy: mean(
            answerable
                .iter()
                .filter_map(|r| r.must_include_ok)
                .map(|ok| ok as u8 as f64),
        ),
        f1: mean(answerable.iter().filter_map(|r| r.f1)),
        citation_precision: mean(results.iter().filter_map(|r| r.citation_precision)),
        cited_answers: results
            .iter()
            .filter(|r| r.citation_precision.is_some())
            .count(),
        citations_verified: {
            let all: Vec<&CitedSource> = results.iter().flat_map(|r| &r.citations).collect();
            (!all.is_empty()).then(|| mean(all.iter().map(|c| c.verified as u8 as f64)))
        },
        evidence_recall: mean(
            answerable
                .iter()
                .filter_map(|r| r.evidence_ok)
                .map(|ok| ok as u8 as f64),
        ),
        evidence_at_1: evidence_within(1),
        evidence_at_3: evidence_within(3),
        evidence_at_5: evidence_within(5),
        context_use: mean(
            answerable
                .iter()
                .filter(|r| r.gold_in_prompt == Some(true))
                .filter_map(|r| r.must_include_ok)
                .map(|ok| ok as u8 as f64),
        ),
        references_verified: {
            let checked: Vec<bool> = results
                .iter()
                .filter_map(|r| r.reference_verified)
                .collect();
            (!checked.is_empty()).then(|| mean(checked.iter().map(|&v| v as u8 as f64)))
        },
        alterations_caught: {
            let all: Vec<&AlterationResult> = results.iter().flat_map(|r| &r.alterations).collect();
            (!all.is_empty()).then(|| mean(all.iter().map(|a| a.caught as u8 as f64)))
        },
        alterations: results.iter().map(|r| r.alterations.len()).sum(),
        abstention_accuracy: mean(unanswerable.iter().map(|r| r.abstained as u8 as f64)),
        false_abstention_rate: mean(answerable.iter().map(|r| r.abstained as u8 as f64)),
        p50_ms: percentile(&latencies, 0.5),
        p95_ms: percentile(&latencies, 0.95),
        mean_prompt_tokens: mean(results.iter().map(|r| r.prompt_tokens as f64)),
        mean_completion_tokens: mean(results.iter().map(|r| r.completion_tokens as f64)),
        generation_seconds_per_answer: mean(
            results.iter().map(|r| r.generation_ms as f64 / 1000.0),
        ),
        cost_per_answer: mean(results.iter().map(|r| tokens(r) / 1000.0 * price_per_1k)),
    }
}

/// The summary overall and per kind, as written to `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub overall: Summary,
    pub per_kind: BTreeMap<String, Summary>,
    /// By [`answer_kind`].
    #[serde(default)]
    pub per_answer_kind: BTreeMap<String, Summary>,
    pub generator: String,
    pub embedder: String,
    pub search_mode: String,
}

pub fn report(results: &[QuestionResult], app: &App, price_per_1k: f64) -> Report {
    let all: Vec<&QuestionResult> = results.iter().collect();
    let mut kinds: BTreeMap<String, Vec<&QuestionResult>> = BTreeMap::new();
    let mut answer_kinds: BTreeMap<String, Vec<&QuestionResult>> = BTreeMap::new();
    for r in results {
        kinds.entry(r.kind.clone()).or_default().push(r);
        answer_kinds
            .entry(r.answer_kind.clone())
            .or_default()
            .push(r);
    }
    let summaries = |groups: BTreeMap<String, Vec<&QuestionResult>>| {
        groups
            .into_iter()
            .map(|(k, rs)| (k, summarize(&rs, price_per_1k)))
            .collect()
    };
    Report {
        overall: summarize(&all, price_per_1k),
        per_kind: summaries(kinds),
        per_answer_kind: summaries(answer_kinds),
        generator: app.settings.generator.backend.model().to_string(),
        embedder: app.embedder.model_id().to_string(),
        search_mode: app.settings.retrieval.mode.to_string(),
    }
}

/// Results already in `results.jsonl` (a killed run resumes after them).
pub fn done_results(path: &Path) -> anyhow::Result<Vec<QuestionResult>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path)?;
    // A line cut by a kill is dropped, and its question asked again.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

pub fn append_result(path: &Path, r: &QuestionResult) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(r)?)?;
    f.sync_data()?;
    Ok(())
}

/// Minimums a run must reach (`--thresholds`, TOML): any `Summary` field
/// by name, e.g. `must_include_accuracy = 0.6`.
pub fn check_thresholds(path: &Path, summary: &Summary) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let wanted: BTreeMap<String, f64> = toml::from_str(&text)
        .with_context(|| format!("{}: expected `metric = minimum` lines", path.display()))?;
    let got = serde_json::to_value(summary)?;
    let mut failures = Vec::new();
    for (metric, minimum) in wanted {
        let value = got
            .get(&metric)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| anyhow::anyhow!("{}: unknown metric {metric:?}", path.display()))?;
        // Rates where lower is better are given as maximums.
        let ok = if metric == "false_abstention_rate" || metric.ends_with("_ms") {
            value <= minimum
        } else {
            value >= minimum
        };
        if !ok {
            failures.push(format!("{metric} = {value:.3}, limit {minimum}"));
        }
    }
    Ok(failures)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Report rows; `None` where the metric has nothing to be computed over
/// (recall for a kind of unanswerable questions, abstention accuracy for
/// one without any), shown as a dash.
type Row = (&'static str, fn(&Summary) -> Option<String>);

const ROWS: [Row; 19] = [
    ("questions", |s| Some(s.questions.to_string())),
    ("recall@1", |s| {
        (s.answerable > 0).then(|| pct(s.recall_at_1))
    }),
    ("recall@5", |s| {
        (s.answerable > 0).then(|| pct(s.recall_at_5))
    }),
    ("recall@10", |s| {
        (s.answerable > 0).then(|| pct(s.recall_at_10))
    }),
    ("MRR", |s| {
        (s.answerable > 0).then(|| format!("{:.3}", s.mrr))
    }),
    ("evidence recall (prompt)", |s| {
        (s.answerable > 0).then(|| pct(s.evidence_recall))
    }),
    ("evidence@1 / @3 / @5", |s| {
        (s.answerable > 0).then(|| {
            format!(
                "{} / {} / {}",
                pct(s.evidence_at_1),
                pct(s.evidence_at_3),
                pct(s.evidence_at_5)
            )
        })
    }),
    ("context use (gold in prompt)", |s| {
        (s.answerable > 0).then(|| pct(s.context_use))
    }),
    ("must-include accuracy", |s| {
        (s.answerable > 0).then(|| pct(s.must_include_accuracy))
    }),
    ("token F1", |s| {
        (s.answerable > 0).then(|| format!("{:.3}", s.f1))
    }),
    ("citation precision", |s| {
        (s.cited_answers > 0).then(|| pct(s.citation_precision))
    }),
    ("citations verified", |s| s.citations_verified.map(pct)),
    ("references verified", |s| s.references_verified.map(pct)),
    ("altered references caught", |s| {
        s.alterations_caught
            .map(|c| format!("{} of {}", pct(c), s.alterations))
    }),
    ("abstention accuracy (unanswerable)", |s| {
        (s.unanswerable > 0).then(|| pct(s.abstention_accuracy))
    }),
    ("false abstention (answerable)", |s| {
        (s.answerable > 0).then(|| pct(s.false_abstention_rate))
    }),
    ("latency p50 / p95", |s| {
        Some(format!("{} / {} ms", s.p50_ms, s.p95_ms))
    }),
    ("tokens in / out per answer", |s| {
        Some(format!(
            "{:.0} / {:.0}",
            s.mean_prompt_tokens, s.mean_completion_tokens
        ))
    }),
    ("generation s / cost per answer", |s| {
        Some(format!(
            "{:.2} s / {:.5}",
            s.generation_seconds_per_answer, s.cost_per_answer
        ))
    }),
];

pub fn markdown(report: &Report, baseline: Option<&Report>) -> String {
    let mut out = format!(
        "# Answer evaluation\n\nGenerator `{}`, embedder `{}`, search `{}`.\n\n",
        report.generator, report.embedder, report.search_mode
    );
    table(&mut out, &report.overall, &report.per_kind, baseline);
    out.push_str(
        "\n## By kind of answer\n\nRead from each question: `multi-part` asks two things, \
         `numeric` expects a number, `procedure` asks how to do something.\n\n",
    );
    table(&mut out, &report.overall, &report.per_answer_kind, None);
    out
}

/// One table of [`ROWS`]: overall, one column per group, and the
/// baseline's overall.
fn table(
    out: &mut String,
    overall: &Summary,
    groups: &BTreeMap<String, Summary>,
    baseline: Option<&Report>,
) {
    out.push_str("| metric | overall |");
    for kind in groups.keys() {
        out.push_str(&format!(" {kind} |"));
    }
    if baseline.is_some() {
        out.push_str(" baseline |");
    }
    out.push_str("\n| --- | --- |");
    for _ in groups.keys() {
        out.push_str(" --- |");
    }
    if baseline.is_some() {
        out.push_str(" --- |");
    }
    out.push('\n');
    let show = |v: Option<String>| v.unwrap_or_else(|| "–".into());
    for (name, cell) in ROWS {
        out.push_str(&format!("| {name} | {} |", show(cell(overall))));
        for s in groups.values() {
            out.push_str(&format!(" {} |", show(cell(s))));
        }
        if let Some(b) = baseline {
            out.push_str(&format!(" {} |", show(cell(&b.overall))));
        }
        out.push('\n');
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars, one per `(label, value in 0..=1, second value)`: the
/// second (a baseline) is drawn as a thin bar under the first.
///
/// Inline SVG written by hand rather than a plotting crate: the report
/// must open offline as one file, and two simple chart shapes are all it
/// needs.
fn bars(title: &str, rows: &[(String, f64, Option<f64>)]) -> String {
    let row_h = 26;
    let height = rows.len() * row_h + 30;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg width=\"640\" height=\"{height}\" role=\"img\">",
        escape(title)
    );
    for (i, (label, value, base)) in rows.iter().enumerate() {
        let y = 10 + i * row_h;
        let w = (value.clamp(0.0, 1.0) * 360.0).round();
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>\
             <rect class=\"bar\" x=\"200\" y=\"{y}\" width=\"{w}\" height=\"14\" fill=\"#3b6ea5\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 12,
            escape(label),
            205.0 + w,
            y + 12,
            pct(*value)
        ));
        if let Some(b) = base {
            let bw = (b.clamp(0.0, 1.0) * 360.0).round();
            svg.push_str(&format!(
                "<rect class=\"baseline\" x=\"200\" y=\"{}\" width=\"{bw}\" height=\"4\" fill=\"#c0392b\"/>",
                y + 16
            ));
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A latency histogram in ten buckets from 0 to the slowest answer.
fn histogram(latencies: &[u64]) -> String {
    let max = latencies.iter().copied().max().unwrap_or(1).max(1);
    let mut counts = [0usize; 10];
    for &l in latencies {
        counts[((l * 10 / (max + 1)) as usize).min(9)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut svg = String::from(
        "<figure><figcaption>Latency per answer (ms)</figcaption><svg width=\"640\" height=\"200\" role=\"img\">",
    );
    for (i, &c) in counts.iter().enumerate() {
        let h = (c as f64 / top as f64 * 150.0).round();
        let x = 40 + i * 58;
        svg.push_str(&format!(
            "<rect class=\"bucket\" x=\"{x}\" y=\"{}\" width=\"50\" height=\"{h}\" fill=\"#3b6ea5\"/>\
             <text x=\"{x}\" y=\"195\" font-size=\"10\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\">{c}</text>",
            170.0 - h,
            max * i as u64 / 10,
            x + 20,
            165.0 - h
        ));
    }
    svg.push_str("</svg></figure>");
    svg
}

pub fn html(report: &Report, results: &[QuestionResult], baseline: Option<&Report>) -> String {
    // A kind's accuracy: abstention for unanswerable questions, the
    // must-include share otherwise.
    let kind_score = |k: &str, s: &Summary| {
        if k == "unanswerable" || s.answerable == 0 {
            s.abstention_accuracy
        } else {
            s.must_include_accuracy
        }
    };
    let kinds: Vec<(String, f64, Option<f64>)> = report
        .per_kind
        .iter()
        .map(|(k, s)| {
            let base = baseline
                .and_then(|b| b.per_kind.get(k))
                .map(|b| kind_score(k, b));
            (k.clone(), kind_score(k, s), base)
        })
        .collect();
    let (o, b) = (&report.overall, baseline.map(|b| &b.overall));
    let row =
        |name: &str, metric: fn(&Summary) -> f64| (name.to_string(), metric(o), b.map(metric));
    let overall = vec![
        row("recall@5", |s| s.recall_at_5),
        row("must-include accuracy", |s| s.must_include_accuracy),
        row("citation precision", |s| s.citation_precision),
        row("abstention accuracy", |s| s.abstention_accuracy),
        row("false abstention", |s| s.false_abstention_rate),
    ];
    let latencies: Vec<u64> = results.iter().map(|r| r.total_ms).collect();
    let table: String = results
        .iter()
        .map(|r| {
            let ok = match (r.answerable, r.must_include_ok) {
                (true, Some(true)) => "✔",
                (false, _) if r.abstained => "✔ abstained",
                _ => "✘",
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.id),
                escape(&r.question),
                escape(&r.answer),
                ok,
                r.total_ms
            )
        })
        .collect();
    let comparison = if baseline.is_some() {
        "<p>Thin red bars: the baseline run.</p>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Answer evaluation</title>\
         <style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px;font-size:13px;vertical-align:top}}</style></head><body>\
         <h1>Answer evaluation</h1><p>Generator <code>{}</code>, embedder <code>{}</code>, search <code>{}</code>; \
         {} questions.</p>{comparison}{}{}{}<h2>Questions</h2><table><tr><th>id</th><th>question</th><th>answer</th>\
         <th>ok</th><th>ms</th></tr>{table}</table></body></html>",
        escape(&report.generator),
        escape(&report.embedder),
        escape(&report.search_mode),
        o.questions,
        bars("Overall", &overall),
        bars(
            "Accuracy per kind (must-include; abstention for unanswerable)",
            &kinds
        ),
        histogram(&latencies),
    )
}

/// The output folder's files.
pub struct OutFiles {
    pub results: PathBuf,
    pub summary: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
    /// `--record`'s traces ([`crate::ops::eval_trace`]).
    pub traces: PathBuf,
}

impl OutFiles {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            results: dir.join("results.jsonl"),
            summary: dir.join("summary.json"),
            markdown: dir.join("report.md"),
            html: dir.join("report.html"),
            traces: dir.join("traces.jsonl"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_and_must_include_by_hand() {
        // answer tokens: 28 days paid leave; reference: 28 days of paid annual leave
        // common = 4 (28, days, paid, leave); p = 4/4, r = 4/6.
        let f1 = token_f1("28 days paid leave.", "The 28 days of paid annual leave");
        assert!(
            (f1 - 2.0 * 1.0 * (4.0 / 6.0) / (1.0 + 4.0 / 6.0)).abs() < 1e-9,
            "{f1}"
        );
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("no", "yes"), 0.0);
        assert!(includes_all("Up to 240 Hours.", &["240 hours".into()]));
        assert!(!includes_all("Up to 240.", &["240".into(), "hours".into()]));
    }

    fn result(
        id: &str,
        kind: &str,
        answerable: bool,
        rank: Option<usize>,
        ok: bool,
        abstained: bool,
        ms: u64,
    ) -> QuestionResult {
        QuestionResult {
            id: id.into(),
            kind: kind.into(),
            answer_kind: if answerable { "fact" } else { "unanswerable" }.into(),
            question: String::new(),
            asked: None,
            answerable,
            gold_rank: rank,
            answer: String::new(),
            abstained,
            citations: vec![],
            must_include_ok: answerable.then_some(ok),
            f1: None,
            citation_precision: if answerable {
                Some(if ok { 1.0 } else { 0.5 })
            } else {
                None
            },
            evidence_ok: answerable.then_some(rank.is_some()),
            evidence_at: rank,
            top_similarity: None,
            extracted: false,
            gold_in_prompt: answerable.then_some(rank.is_some_and(|r| r <= 5)),
            reference_verified: None,
            alterations: vec![],
            retrieval_ms: 1,
            generation_ms: 1000,
            total_ms: ms,
            prompt_tokens: 900,
            completion_tokens: 100,
            replayed: false,
        }
    }

    #[test]
    fn summaries_by_hand() {
        let rs = [
            result("1", "leave", true, Some(1), true, false, 100),
            result("2", "leave", true, Some(3), false, false, 200),
            result("3", "tools", true, None, false, true, 300),
            result("4", "none", false, None, false, true, 400),
        ];
        let all: Vec<&QuestionResult> = rs.iter().collect();
        let s = summarize(&all, 0.5);
        assert_eq!((s.answerable, s.unanswerable), (3, 1));
        assert!((s.recall_at_1 - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.recall_at_5 - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.mrr - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-9);
        assert!((s.must_include_accuracy - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.false_abstention_rate - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.abstention_accuracy, 1.0);
        // Evidence in the prompt for 1 and 2; the gold page there for both;
        // of those, 1 answered right.
        assert!((s.evidence_recall - 2.0 / 3.0).abs() < 1e-9);
        // The evidence is in the first passage for 1, the first three for 2.
        assert!((s.evidence_at_1 - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.evidence_at_3 - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.evidence_at_5 - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.context_use - 0.5).abs() < 1e-9);
        assert_eq!((s.references_verified, s.alterations_caught), (None, None));
        assert!((s.citation_precision - (1.0 + 0.5 + 0.5) / 3.0).abs() < 1e-9);
        assert_eq!((s.p50_ms, s.p95_ms), (300, 400));
        assert!((s.cost_per_answer - 0.5).abs() < 1e-9); // 1000 tokens at 0.5 per 1k
        assert!((s.generation_seconds_per_answer - 1.0).abs() < 1e-9);
    }

    /// The fewest passages from the front that hold every fact together.
    #[test]
    fn evidence_is_found_at_the_passage_that_completes_it() {
        let hit = |text: &str| Hit {
            text: text.into(),
            ..Default::default()
        };
        let (a, b, c) = (
            hit("Leave is 28 days."),
            hit("Request it in HRdesk."),
            hit("Carry 5 days over."),
        );
        let prompt = [&a, &b, &c];
        let facts = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(evidence_at(&prompt, &facts(&["28 days"])), Some(1));
        assert_eq!(evidence_at(&prompt, &facts(&["28", "hrdesk"])), Some(2));
        assert_eq!(evidence_at(&prompt, &facts(&["5 days", "28"])), Some(3));
        assert_eq!(evidence_at(&prompt, &facts(&["40 days"])), None);
        assert_eq!(evidence_at(&prompt, &[]), None);
    }

    #[test]
    fn thresholds_gate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let s = Summary {
            must_include_accuracy: 0.7,
            false_abstention_rate: 0.2,
            ..Default::default()
        };
        std::fs::write(
            &path,
            "must_include_accuracy = 0.6\nfalse_abstention_rate = 0.3\n",
        )
        .unwrap();
        assert!(check_thresholds(&path, &s).unwrap().is_empty());
        std::fs::write(&path, "must_include_accuracy = 0.8\n").unwrap();
        let failures = check_thresholds(&path, &s).unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        std::fs::write(&path, "no_such_metric = 1\n").unwrap();
        assert!(check_thresholds(&path, &s).is_err());
    }

    #[test]
    fn html_has_its_charts() {
        let rs = vec![
            result("1", "leave", true, Some(1), true, false, 100),
            result("4", "unanswerable", false, None, false, true, 400),
        ];
        let all: Vec<&QuestionResult> = rs.iter().collect();
        let report = Report {
            overall: summarize(&all, 0.0),
            per_kind: [("leave".to_string(), summarize(&all[..1], 0.0))].into(),
            per_answer_kind: [
                ("fact".to_string(), summarize(&all[..1], 0.0)),
                ("unanswerable".to_string(), summarize(&all[1..], 0.0)),
            ]
            .into(),
            generator: "g".into(),
            embedder: "e".into(),
            search_mode: "hybrid".into(),
        };
        let page = html(&report, &rs, Some(&report));
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(page.contains("class=\"baseline\""));
        assert_eq!(page.matches("class=\"bucket\"").count(), 10);
        let md = markdown(&report, None);
        assert!(
            md.contains("| must-include accuracy | 100.0% | 100.0% |"),
            "{md}"
        );
        // The second table, by kind of answer: fact, then unanswerable.
        let (_, by_answer) = md.split_once("## By kind of answer").unwrap();
        assert!(
            by_answer.contains("| metric | overall | fact | unanswerable |"),
            "{md}"
        );
        assert!(
            by_answer.contains("| abstention accuracy (unanswerable) | 100.0% | – | 100.0% |"),
            "{md}"
        );
    }

    /// The kind of answer is read from the question, whatever its label.
    #[test]
    fn answer_kinds_are_read_from_the_question() {
        let q = |question: &str, must: &[&str], history: &[&str], answerable: bool| Question {
            id: "q".into(),
            question: question.into(),
            history: history.iter().map(|h| h.to_string()).collect(),
            answerable,
            gold_sources: vec![],
            answer: None,
            must_include: must.iter().map(|m| m.to_string()).collect(),
            kind: "leave".into(),
        };
        for (question, must, history, answerable, kind) in [
            (
                "Is there a dress code?",
                &[][..],
                &[][..],
                false,
                "unanswerable",
            ),
            (
                "and in Chicago?",
                &["lockers"][..],
                &["Lockers in DC?"][..],
                true,
                "follow-up",
            ),
            (
                "how much sick leave do I build up, and is there a limit?",
                &["4"][..],
                &[][..],
                true,
                "multi-part",
            ),
            (
                "Do I get paid on jury duty? what about voting?",
                &["yes"][..],
                &[][..],
                true,
                "multi-part",
            ),
            (
                "How many weeks of parental leave?",
                &["12 weeks"][..],
                &[][..],
                true,
                "numeric",
            ),
            (
                "How much sick leave do I earn?",
                &["four hours"][..],
                &[][..],
                true,
                "numeric",
            ),
            (
                "how do I sign up for the transit subsidy?",
                &["SmartBenefits"][..],
                &[][..],
                true,
                "procedure",
            ),
            (
                "I'm on a Mac. How do I log into the remote desktop? It's for one program.",
                &["vdi"][..],
                &[][..],
                true,
                "procedure",
            ),
            (
                "my flight is ticketed. how do I change it?",
                &["472-6716"][..],
                &[][..],
                true,
                "procedure",
            ),
            (
                "What is Tock?",
                &["time tracking"][..],
                &[][..],
                true,
                "definition",
            ),
            (
                "Which password manager is approved?",
                &["1Password"][..],
                &[][..],
                true,
                "fact",
            ),
        ] {
            assert_eq!(
                answer_kind(&q(question, must, history, answerable)),
                kind,
                "{question}"
            );
        }
    }
}
