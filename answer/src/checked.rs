//! The model's text checked sentence by sentence, as it streams: what
//! comes out is the answer, and nothing else is ever shown.
//!
//! Each sentence (with the citation markers after its full stop) is
//! checked once it is complete:
//! - citations to passages that were not given are removed;
//! - an uncited sentence is attributed to the passage that supports it,
//!   or dropped;
//! - each citation is kept only if its passage supports the claim
//!   ([`check_claim`]: the words, and every number, unit, name and
//!   negation); a sentence that cites two or more passages, none of which
//!   supports it alone, is kept when each of its clauses holds on one of
//!   them; a sentence none of whose citations holds is dropped;
//! - a bare "Yes." or "No." goes with the next claim: shown if it checks;
//! - a refusal ("the documents do not say ...") or a lead-in ending in a
//!   colon is held until a checked sentence follows it; a text with no
//!   checked sentence becomes the abstention.
//!
//! The streamed text and the final answer are the same string by
//! construction: both are what [`Checker`] emits.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use rag_core::Hit;
use regex::Regex;

use crate::citations::{self, CITATION, is_refusal};
use crate::verify::{check_claim, on_topic};

/// A complete citation marker at the start of a text.
static MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[\d+(?:\s*,\s*\d+)*\]").expect("valid regex"));

/// What could still become a citation marker, at the end of what has
/// streamed so far.
static PARTIAL_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[[\d,\s]*$").expect("valid regex"));

/// Abbreviations that never end a sentence: what follows them belongs
/// to it ("Dr. Lee", "e.g. HR Links", "approx. 5").
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "vs", "mr", "mrs", "ms", "dr", "prof", "approx", "incl", "dept", "st", "fig",
    "p", "pp", "u.s", "cf",
];
/// Abbreviations that also end sentences ("... from Acme Ltd. Our office"):
/// they end one when a capital follows.
const CLOSING_ABBREVIATIONS: &[&str] = &[
    "etc", "jr", "sr", "ave", "jan", "feb", "mar", "apr", "aug", "sept", "sep", "oct", "nov",
    "dec", "mon", "tue", "wed", "thu", "fri", "inc", "ltd", "corp", "co", "al", "min", "max",
    "avg", "est", "hrs", "yrs", "govt", "mgr", "asst",
];
/// Abbreviations that stand before a number ("No. 5").
const NUMBERED: &[&str] = &["no", "nos", "sec", "art", "vol", "ch", "par", "para", "ref"];

/// The checks' settings (from [`Policy`](crate::Policy)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub verify_min_support: f32,
    pub min_attribution: f32,
}

/// What the checks made of the model's text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub text: String,
    /// Passage numbers cited by the text, ascending.
    pub cited: Vec<usize>,
    /// Citations removed: to passages not given, or not supporting.
    pub removed: usize,
    /// Sentences dropped because no passage supports them.
    pub dropped: usize,
    /// Those sentences, without their markers: what the model tried to
    /// say, which recovery looks for in the passages.
    pub dropped_claims: Vec<String>,
    pub abstained: bool,
    /// The text quotes a passage in place of the model's (set by the
    /// policy).
    pub extracted: bool,
}

impl Checked {
    /// Nothing written, nothing checked.
    pub fn abstention() -> Self {
        Self {
            text: String::new(),
            cited: Vec::new(),
            removed: 0,
            dropped: 0,
            dropped_claims: Vec::new(),
            abstained: true,
            extracted: false,
        }
    }
}

pub(crate) struct Checker<'a> {
    thresholds: Thresholds,
    question: &'a str,
    /// The passages the model was given, in their numbering.
    hits: &'a [&'a Hit],
    raw: String,
    consumed: usize,
    out: String,
    cited: BTreeSet<usize>,
    removed: usize,
    dropped: usize,
    dropped_claims: Vec<String>,
    /// Refusals, lead-ins and a bare "Yes."/"No." waiting for a checked
    /// sentence.
    held: Vec<String>,
    /// Where in `held` a bare "Yes."/"No." waits: it goes with the very
    /// next claim, shown if that claim checks, dropped if not.
    particle: Option<usize>,
}

impl<'a> Checker<'a> {
    pub fn new(thresholds: Thresholds, question: &'a str, hits: &'a [&'a Hit]) -> Self {
        Self {
            thresholds,
            question,
            hits,
            raw: String::new(),
            consumed: 0,
            out: String::new(),
            cited: BTreeSet::new(),
            removed: 0,
            dropped: 0,
            dropped_claims: Vec::new(),
            held: Vec::new(),
            particle: None,
        }
    }

    /// Takes the next piece of the model's text; every sentence it
    /// completes is checked, and what passes goes to `emit`.
    pub fn push(&mut self, piece: &str, emit: &mut dyn FnMut(&str)) {
        self.raw.push_str(piece);
        while let Some(end) = sentence_end(&self.raw[self.consumed..]) {
            let sentence = self.raw[self.consumed..self.consumed + end].to_string();
            self.consumed += end;
            self.sentence(&sentence, emit);
        }
    }

    /// The model is done: the rest is the last sentence. A text with no
    /// checked sentence is `abstained`, with nothing emitted: the caller
    /// says what replaces it.
    pub fn finish(mut self, emit: &mut dyn FnMut(&str)) -> Checked {
        let rest = self.raw[self.consumed..].to_string();
        self.consumed = self.raw.len();
        self.sentence(&rest, emit);
        let abstained = self.cited.is_empty();
        Checked {
            text: self.out,
            cited: self.cited.into_iter().collect(),
            removed: self.removed,
            dropped: self.dropped,
            dropped_claims: self.dropped_claims,
            abstained,
            extracted: false,
        }
    }

    fn sentence(&mut self, raw: &str, emit: &mut dyn FnMut(&str)) {
        let body = raw.trim_start();
        let lead = &raw[..raw.len() - body.len()];
        if !body.chars().any(char::is_alphanumeric) {
            return;
        }
        let given = citations::check_citations(body, self.hits.len());
        self.removed += given.removed;
        let bare = citations::without_markers(&given.text);
        if !bare.chars().any(char::is_alphanumeric) {
            return;
        }
        // A bare "Yes." or "No." answers with the claim that follows it,
        // as "Yes, ..." does: held until that claim is checked, and shown
        // only with it.
        static PARTICLE: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"(?i)^\s*(yes|no)\s*[.!]?\s*$").expect("valid regex"));
        if PARTICLE.is_match(&bare) {
            let held = format!("{lead}{}", bare.trim());
            if self.cited.is_empty() && self.particle.is_none() {
                self.particle = Some(self.held.len());
                self.held.push(held);
            } else {
                // After a claim, it answers nothing the claim did not.
                self.dropped += 1;
            }
            return;
        }
        if is_refusal(&bare) || bare.trim_end().ends_with(':') {
            // Neither is a claim about a passage: a refusal says what the
            // documents do not cover, a lead-in introduces a list. Unless
            // it slips a claim in ("... do not mention a cap, so leave is
            // unlimited", "contractors get 90 days:"): then it is dropped.
            if !says_nothing_new(&bare, self.question) {
                self.dropped += 1;
                return;
            }
            let held = format!("{lead}{bare}");
            if self.cited.is_empty() {
                self.held.push(held);
            } else {
                self.emit(&held, emit);
            }
            return;
        }
        // "Which per diem applies in Denver?" "The per diem applies in
        // Denver." passes any passage that names both, and says nothing.
        if echoes(&bare, self.question) || points_elsewhere(&bare) {
            self.drop_claim(&bare);
            return;
        }
        let (hits, thresholds, question) = (self.hits, self.thresholds, self.question);
        let holds = |claim: &str, n: usize| {
            let hit = hits[n - 1];
            let context = format!("{}\n{}", hit.title, hit.heading);
            check_claim(claim, &hit.text, &context, thresholds.verify_min_support).is_ok()
                && on_topic(claim, question, &hit.text, &context)
        };
        let supports = |n: usize| holds(&bare, n);
        let (kept, text): (Vec<usize>, String) = if given.cited.is_empty() {
            // Small models often answer without citing: a sentence one
            // passage supports is attributed to it.
            let texts = hits.iter().map(|h| h.text.as_str());
            let best = citations::attribute(&bare, texts, thresholds.min_attribution)
                .filter(|&n| supports(n));
            match best {
                Some(n) => (vec![n], format!("{} [{n}]", given.text.trim_end())),
                None => (vec![], String::new()),
            }
        } else {
            let mut kept: Vec<usize> = given
                .cited
                .iter()
                .copied()
                .filter(|&n| supports(n))
                .collect();
            let joined = || {
                given
                    .cited
                    .iter()
                    .map(|&n| hits[n - 1].text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if kept.is_empty()
                && given.cited.len() > 1
                && citations::support(&bare, &joined()) >= thresholds.verify_min_support
            {
                // A sentence may join what two of its passages say ("due
                // October 17, and the award choice by November 15"): it
                // holds when each of its clauses holds on one of them.
                kept = clauses_supported(&bare, &given.cited, holds).unwrap_or_default();
            }
            self.removed += given.cited.len() - kept.len();
            (kept.clone(), keep_citations(&given.text, &kept))
        };
        if kept.is_empty() {
            self.drop_claim(&bare);
            return;
        }
        self.particle = None;
        let held = std::mem::take(&mut self.held);
        for h in held {
            self.emit(&h, emit);
        }
        self.cited.extend(kept);
        self.emit(&format!("{lead}{text}"), emit);
    }

    /// A claim that does not hold goes, and the "Yes." or "No." that
    /// waited for it with it.
    fn drop_claim(&mut self, bare: &str) {
        self.dropped += 1;
        self.dropped_claims.push(bare.trim().to_string());
        if let Some(at) = self.particle.take() {
            self.held.remove(at);
            self.dropped += 1;
        }
    }

    fn emit(&mut self, text: &str, emit: &mut dyn FnMut(&str)) {
        let text = if self.out.is_empty() {
            text.trim_start()
        } else {
            text
        };
        if !text.is_empty() {
            self.out.push_str(text);
            emit(text);
        }
    }
}

/// Words a refusal or a lead-in is made of besides the question's.
const FRAME_WORDS: &[&str] = &[
    "documents",
    "document",
    "passages",
    "passage",
    "context",
    "provided",
    "text",
    "information",
    "cover",
    "covers",
    "contain",
    "contains",
    "mention",
    "mentions",
    "say",
    "says",
    "answer",
    "specify",
    "specifies",
    "include",
    "includes",
    "know",
    "found",
    "covered",
    "mentioned",
    "specified",
    "question",
    "sources",
    "source",
    "cannot",
    "don't",
    "doesn't",
    "no",
    "any",
    "about",
    "whether",
    "how",
    "what",
    "which",
    "who",
    "when",
    "where",
    "why",
    "here",
    "following",
    "steps",
    "requirements",
    "rules",
    "options",
    "these",
    "there",
    "details",
    "some",
    "many",
    "much",
    "i",
    "am",
    "sorry",
    "unfortunately",
    "however",
    "specific",
];

/// Whether a refusal or lead-in carries no claim of its own: no number,
/// no name, and no word but those of the question and of the frame.
pub(crate) fn says_nothing_new(sentence: &str, question: &str) -> bool {
    if sentence.chars().any(|c| c.is_ascii_digit()) {
        return false;
    }
    let question = question.to_lowercase();
    let asked: BTreeSet<&str> = question
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .collect();
    let lower = sentence.to_lowercase();
    let new = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .filter(|w| !asked.contains(w) && !asked.contains(w.trim_end_matches('s')))
        .filter(|w| !FRAME_WORDS.contains(w) && citations::content_word(w))
        .count();
    new <= 1
}

/// Whether `sentence` only says where something is written ("This is
/// mentioned in the passage under the section "Important notes".", "It is
/// listed under **Severance Pay** in [1]."): a pointer into the passages,
/// which asserts nothing the reader asked, yet holds on any passage that
/// has the section's name.
fn points_elsewhere(sentence: &str) -> bool {
    static POINTER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"(?i)^(?:this|it|that|these|they)\s+(?:is|are|can be|was|were)\s+(?:\w+ly\s+)?(?:mentioned|stated|indicated|described|listed|noted|covered|explained|outlined|found|discussed|shown|specified|detailed|addressed)\s+(?:in|under|on|within)\b(?P<rest>.*)$"#,
        )
        .expect("valid regex")
    });
    let Some(found) = POINTER.captures(sentence.trim()) else {
        return false;
    };
    // What it is about ("... regarding the rental car program") is a topic,
    // not a claim.
    let rest = [" regarding ", " about ", " related to "]
        .iter()
        .fold(&found["rest"], |rest, topic| {
            rest.split(topic).next().unwrap_or_default()
        });
    // Only the place may follow (a section, a passage, a name in quotes or
    // bold, a citation), not a claim: no figure, no "as ..." or "that ...".
    static PLACE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"(?i)\b(?:passages?|sections?|documents?|pages?|headings?|sources?|handbook)\b|["“][^"”]+["”]|\*\*[^*]+\*\*|\[\d+\]"#,
        )
        .expect("valid regex")
    });
    static CLAIM: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)\b(?:as|that|which|because|if|when)\b").expect("valid regex")
    });
    static NAMED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"["“][^"”]*["”]|\*\*[^*]*\*\*|\[\d+\]"#).expect("valid regex")
    });
    let unquoted = NAMED.replace_all(rest, " ");
    PLACE.is_match(rest)
        && !CLAIM.is_match(&unquoted)
        && !unquoted.chars().any(|c| c.is_ascii_digit())
}

/// Whether `sentence` only restates a question that asks for something
/// (what, which, who, when, where, why, how): no number and no content
/// word the question does not have. A yes-or-no question is answered by
/// restating it, so those are not echoes.
fn echoes(sentence: &str, question: &str) -> bool {
    let words = |text: &str| -> Vec<String> {
        text.to_lowercase()
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let asked = words(question);
    let wh = [
        "what", "which", "who", "whom", "whose", "when", "where", "why", "how",
    ];
    if !asked.iter().any(|w| wh.contains(&w.as_str())) {
        return false;
    }
    let same = |w: &str| {
        asked
            .iter()
            .any(|a| a == w || a.trim_end_matches('s') == w.trim_end_matches('s'))
    };
    words(sentence)
        .iter()
        .filter(|w| citations::content_word(w) && !FRAME_WORDS.contains(&w.as_str()))
        .all(|w| same(w))
}

/// The passages of `cited` that, between them, hold each clause of
/// `sentence` (each clause on one of them), or `None` when a clause holds
/// on none or one passage holds them all (the sentence's own check).
fn clauses_supported(
    sentence: &str,
    cited: &[usize],
    holds: impl Fn(&str, usize) -> bool,
) -> Option<Vec<usize>> {
    let mut used = BTreeSet::new();
    for (_, clause) in crate::verify::clauses(sentence) {
        let n = cited.iter().copied().find(|&n| holds(clause, n))?;
        used.insert(n);
    }
    (used.len() > 1).then(|| used.into_iter().collect())
}

/// The sentence with only the citations in `kept`.
fn keep_citations(sentence: &str, kept: &[usize]) -> String {
    let text = CITATION.replace_all(sentence, |caps: &regex::Captures| {
        let ns: Vec<String> = caps[1]
            .split(',')
            .filter_map(|n| n.trim().parse::<usize>().ok())
            .filter(|n| kept.contains(n))
            .map(|n| n.to_string())
            .collect();
        if ns.is_empty() {
            String::new()
        } else {
            format!("[{}]", ns.join(", "))
        }
    });
    text.replace(" .", ".")
        .replace("  ", " ")
        .trim_end()
        .to_string()
}

/// Where the first complete sentence of `text` ends (after the citation
/// markers that follow its full stop), or `None` while it may still go
/// on. A sentence ends at a newline, or at `.`, `!` or `?` followed by a
/// space, but not after an abbreviation or an initial.
pub(crate) fn sentence_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let stop = match c {
            // A line ends where it breaks; the break leads the next one.
            '\n' if text[..i].trim().is_empty() => false,
            '\n' => return Some(i),
            '.' | '!' | '?' => match bytes.get(i + 1) {
                None => return None,
                Some(b) => {
                    b.is_ascii_whitespace()
                        && !(c == '.' && abbreviation(&text[..i], &text[i + 1..]))
                }
            },
            _ => false,
        };
        if !stop {
            continue;
        }
        // The markers after the stop belong to this sentence; the end is
        // known once something else follows them.
        let mut end = i + c.len_utf8();
        loop {
            let after = &text[end..];
            let trimmed = after.trim_start();
            if trimmed.is_empty() {
                return None;
            }
            if let Some(m) = MARKER.find(trimmed) {
                end += after.len() - trimmed.len() + m.end();
                continue;
            }
            if PARTIAL_MARKER.is_match(trimmed) {
                return None;
            }
            break;
        }
        return Some(end);
    }
    None
}

/// Whether a full stop between `before` and `after` follows an
/// abbreviation, an initial or a list item's number, and so does not end a
/// sentence. Written here rather than taken from a segmentation crate:
/// Unicode's sentence rules (UAX #29) end a sentence after "Dr." or
/// "U.S." when a capital follows, which is how quotes got cut.
pub(crate) fn abbreviation(before: &str, after: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || matches!(c, '(' | '"' | '“' | '\''))
        .next()
        .unwrap_or("")
        .to_lowercase();
    // A list item's number ("1. ", "12. ") at the start of a line.
    let line = before.rsplit('\n').next().unwrap_or("").trim_start();
    if !line.is_empty() && line.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    let next = after.trim_start_matches([' ', '\t']).chars().next();
    // "No. 5", "Sec. 3", "Vol. 2": before a number only ("the answer is no.").
    if NUMBERED.contains(&word.as_str()) && next.is_some_and(|c| c.is_ascii_digit() || c == '#') {
        return true;
    }
    // Dotted abbreviations: "i.e", "e.g", "u.s", "a.m", "ph.d".
    let dotted = word.contains('.')
        && word
            .split('.')
            .all(|part| (1..=3).contains(&part.len()) && part.chars().all(char::is_alphabetic));
    // A sentence does not go on in lower case ("approx. two weeks", "dept.
    // of"), unless a new line starts.
    let lower_next = after.starts_with([' ', '\t']) && next.is_some_and(char::is_lowercase);
    let closing =
        CLOSING_ABBREVIATIONS.contains(&word.as_str()) && !next.is_some_and(char::is_uppercase);
    word.chars().count() == 1 && word.chars().all(char::is_alphabetic)
        || dotted
        || lower_next
        || closing
        || ABBREVIATIONS.contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::NOT_COVERED;

    fn hit(text: &str) -> Hit {
        Hit {
            text: text.to_string(),
            title: "Leave".to_string(),
            ..Default::default()
        }
    }

    fn run(text: &str, pieces: usize, hits: &[&Hit]) -> (Checked, String) {
        let thresholds = Thresholds {
            verify_min_support: 0.5,
            min_attribution: 0.5,
        };
        let mut checker = Checker::new(
            thresholds,
            "How much leave do I get, and can I carry it over?",
            hits,
        );
        let mut streamed = String::new();
        let chars: Vec<char> = text.chars().collect();
        let size = chars.len().div_ceil(pieces.max(1)).max(1);
        for piece in chars.chunks(size) {
            let piece: String = piece.iter().collect();
            checker.push(&piece, &mut |s| streamed.push_str(s));
        }
        let mut checked = checker.finish(&mut |s| streamed.push_str(s));
        if checked.abstained {
            checked.text = NOT_COVERED.to_string();
            streamed.push_str(NOT_COVERED);
        }
        (checked, streamed)
    }

    #[test]
    fn sentences_end_after_their_markers() {
        assert_eq!(sentence_end("Leave is 28 days. [1] Next"), Some(21));
        assert_eq!(sentence_end("Leave is 28 days [1]. Next"), Some(21));
        assert_eq!(sentence_end("Leave is 28 days. [1"), None);
        assert_eq!(sentence_end("Leave is 28 days."), None);
        assert_eq!(sentence_end("See e.g. the form. Next"), Some(18));
        assert_eq!(sentence_end("1. Tell your manager [1].\n2. Rest"), Some(25));
        assert_eq!(sentence_end("It costs 12. Next"), Some(12));
        assert_eq!(sentence_end("- one [1]\n- two"), Some(9));
        assert_eq!(sentence_end("\n\n- one [1]\n- two"), Some(11));
    }

    #[test]
    fn what_streams_is_the_checked_answer_however_it_is_split() {
        let leave = hit("Every employee has 28 days of paid annual leave per year.");
        let expiry = hit("Unused days expire at the end of March.");
        let hits = [&leave, &expiry];
        let text = "Employees get 28 days of paid annual leave [1]. Unused days expire in March. [2] \
                    They also get 90 days of paid annual leave [1]. The office has a pool [2]. [7]";
        for pieces in [1, 3, 17, 1000] {
            let (checked, streamed) = run(text, pieces, &hits);
            assert_eq!(streamed, checked.text, "{pieces} pieces");
            assert_eq!(
                checked.text,
                "Employees get 28 days of paid annual leave [1]. Unused days expire in March. [2]"
            );
            assert_eq!(checked.cited, [1, 2]);
            assert_eq!(checked.dropped, 2);
            assert!(!checked.abstained);
        }
    }

    #[test]
    fn refusals_and_lead_ins_wait_for_a_checked_sentence() {
        let leave = hit("Every employee has 28 days of paid annual leave per year.");
        let hits = [&leave];
        let (checked, streamed) = run(
            "The documents do not cover carry-over. Employees have 28 days of paid annual leave [1].",
            5,
            &hits,
        );
        assert_eq!(streamed, checked.text);
        assert!(
            checked
                .text
                .starts_with("The documents do not cover carry-over. Employees")
        );
        // A refusal that slips in a claim of its own is no refusal.
        let (checked, _) = run(
            "The documents do not mention a cap, so sick leave is unlimited. \
             Employees have 28 days of paid annual leave [1].",
            3,
            &hits,
        );
        assert_eq!(
            checked.text,
            "Employees have 28 days of paid annual leave [1]."
        );
        assert_eq!(checked.dropped, 1);
        let (checked, streamed) = run("The documents do not cover this question.", 4, &hits);
        assert!(checked.abstained);
        assert_eq!(streamed, NOT_COVERED);
        let (checked, _) = run("The rules are:\n- Bananas are yellow [1].", 4, &hits);
        assert!(checked.abstained, "{checked:?}");
    }

    /// A bare "Yes." or "No." goes with the claim after it, as "Yes, ..."
    /// does: shown only once that claim checks.
    #[test]
    fn a_bare_yes_or_no_waits_for_its_claim() {
        let leave = hit("Every employee has 28 days of paid annual leave per year.");
        let hits = [&leave];
        let (checked, streamed) = run(
            "Yes. Employees have 28 days of paid annual leave [1].",
            4,
            &hits,
        );
        assert_eq!(
            checked.text,
            "Yes. Employees have 28 days of paid annual leave [1]."
        );
        assert_eq!(
            (checked.dropped, streamed.as_str()),
            (0, checked.text.as_str())
        );
        let (checked, streamed) = run(
            "No. Employees have 30 days of paid annual leave [1].",
            4,
            &hits,
        );
        assert!(checked.abstained);
        assert_eq!(streamed, NOT_COVERED);
        let (checked, _) = run("Yes.", 1, &hits);
        assert!(checked.abstained);
        // It goes with the very next claim, not a later one.
        let (checked, _) = run(
            "No. Employees have 30 days of paid annual leave [1]. Employees have 28 days of \
             paid annual leave [1].",
            3,
            &hits,
        );
        assert_eq!(
            checked.text,
            "Employees have 28 days of paid annual leave [1]."
        );
    }

    /// A sentence that joins two cited passages holds clause by clause;
    /// a clause neither holds drops it.
    #[test]
    fn a_sentence_may_join_two_passages() {
        let leave = hit("Every employee has 28 days of paid annual leave per year.");
        let carry = hit("Up to 5 unused days carry over into the next year.");
        let hits = [&leave, &carry];
        let (checked, _) = run(
            "Employees have 28 days of paid annual leave, and up to 5 unused days carry over [1, 2].",
            3,
            &hits,
        );
        assert_eq!(checked.dropped, 0, "{checked:?}");
        assert_eq!(checked.cited, [1, 2]);
        let (checked, _) = run(
            "Employees have 28 days of paid annual leave, and up to 8 unused days carry over [1, 2].",
            3,
            &hits,
        );
        assert!(checked.abstained, "{checked:?}");
    }

    /// Stitching two passages needs clauses that stand alone: "which
    /// lasts 12 weeks" is about the Denver interns, whom the passage with
    /// 12 weeks does not name.
    #[test]
    fn a_relative_clause_is_not_stitched_to_another_passage() {
        let interns = hit("Interns in the Denver office get paid parental leave of 4 weeks.");
        let employees = hit("Employees get 12 weeks of paid parental leave.");
        let hits = [&interns, &employees];
        let (checked, _) = run(
            "In Denver, interns get paid parental leave, which lasts 12 weeks [1, 2].",
            2,
            &hits,
        );
        assert!(checked.abstained, "{checked:?}");
    }

    #[test]
    fn an_uncited_sentence_is_attributed_when_a_passage_supports_it() {
        let leave = hit("Every employee has 28 days of paid annual leave per year.");
        let hits = [&leave];
        let (checked, streamed) = run("Every employee has 28 days of paid annual leave.", 2, &hits);
        assert_eq!(
            checked.text,
            "Every employee has 28 days of paid annual leave. [1]"
        );
        assert_eq!(streamed, checked.text);
        let (checked, _) = run("Every employee has 30 days of paid annual leave.", 2, &hits);
        assert!(checked.abstained);
    }
    #[test]
    fn a_pointer_into_the_passages_is_no_answer() {
        for pointer in [
            "This is mentioned in the passage [1] under the section \"Important notes\" regarding the rental car program.",
            "It is listed under **Severance Pay** in the FLSA exemption status section of the HR Links. [1]",
            "This is stated in the passage [1] under the section \"Getting approval for advanced sick leave.\"",
            "This is indicated in the passage [1] under the section \"Meals and Incidental Expenses (M&IE)\".",
        ] {
            let bare = pointer.trim_end_matches(" [1]");
            assert!(points_elsewhere(bare), "{pointer}");
        }
        for claim in [
            "It is described in [1] as 15 days of leave a year.",
            "This is covered in full by GSA's insurance.",
            "It is listed in the handbook that parking costs $10.",
            "The per diem is listed in the passage.",
        ] {
            assert!(!points_elsewhere(claim), "{claim}");
        }
    }
}
