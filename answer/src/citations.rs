//! What the model said, checked: citations that name a given passage,
//! refusals, the support a passage gives a sentence, attribution, quotes.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

pub(crate) static CITATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[(\d+(?:\s*,\s*\d+)*)\]").unwrap());

/// Citation markers at the start of a text, after any spaces.
static LEADING_CITATIONS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*(?:\[\d+(?:\s*,\s*\d+)*\]\s*)+").unwrap());

/// Citations found in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedAnswer {
    /// The answer with citations to unknown passages removed.
    pub text: String,
    /// Passage numbers cited, ascending, each within `1..=passages`.
    pub cited: Vec<usize>,
    /// Citations removed because they named a passage that was not given.
    pub removed: usize,
}

/// Keeps citations that name a passage that was given (`1..=passages`) and
/// drops the rest, so no citation can point outside what was retrieved.
pub fn check_citations(answer: &str, passages: usize) -> CheckedAnswer {
    let mut cited = BTreeSet::new();
    let mut removed = 0;
    let text = CITATION.replace_all(answer, |caps: &regex::Captures| {
        let kept: Vec<usize> = caps[1]
            .split(',')
            .filter_map(|n| n.trim().parse::<usize>().ok())
            .filter(|n| {
                let ok = (1..=passages).contains(n);
                if !ok {
                    removed += 1;
                }
                ok
            })
            .collect();
        cited.extend(kept.iter().copied());
        if kept.is_empty() {
            String::new()
        } else {
            format!(
                "[{}]",
                kept.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    });
    let text = text
        .replace(" .", ".")
        .replace("  ", " ")
        .trim()
        .to_string();
    CheckedAnswer {
        text,
        cited: cited.into_iter().collect(),
        removed,
    }
}

static REFUSAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(documents?|passages?|context|provided (text|information)|sources?) (do(es)? not|don't|doesn't) (cover|contain|mention|say|answer|provide|include|specify)|not (covered|mentioned|found|specified) in the (documents?|passages?|context)|no (information|mention) (about|of|on) |i (do not|don't) know|cannot answer",
    )
    .unwrap()
});

/// True when the model itself says the passages do not answer.
pub fn is_refusal(answer: &str) -> bool {
    answer.trim().is_empty() || REFUSAL.is_match(answer)
}

static WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[A-Za-z0-9]+").unwrap());

const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "is", "are", "was", "be", "by",
    "with", "as", "at", "it", "this", "that", "you", "your", "can", "from", "if", "not", "do",
    "does", "will", "should", "may", "must", "have", "has", "our", "we", "they", "their", "per",
];

/// Whether a lowercase word carries content (is not a stop word).
pub(crate) fn content_word(word: &str) -> bool {
    !STOP_WORDS.contains(&word)
}

pub(crate) fn content_words(text: &str) -> BTreeSet<String> {
    WORD.find_iter(text)
        .map(|m| m.as_str().to_lowercase())
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

/// Share of the answer's content words that occur in the passage.
pub fn support(answer: &str, passage: &str) -> f32 {
    let a = content_words(answer);
    if a.is_empty() {
        return 0.0;
    }
    let p = content_words(passage);
    a.iter().filter(|w| p.contains(*w)).count() as f32 / a.len() as f32
}

/// `text` with `marker` (say "[1, 3]") at the end of each of its
/// sentences, before the full stop: how a reference answer cites its
/// evidence, split as the checker splits the model's text.
pub fn cite_each_sentence(text: &str, marker: &str) -> String {
    let mut out = String::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let end = crate::checked::sentence_end(rest)
            .filter(|&end| end > 0)
            .unwrap_or(rest.len());
        let sentence = rest[..end].trim_end();
        let body = sentence.trim_end_matches(['.', '!', '?']);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{body} {marker}{}", &sentence[body.len()..]));
        rest = rest[end..].trim_start();
    }
    out
}

/// The sentences of an answer that cite passage `n` (`[n]` or `[.., n]`),
/// without their citation markers. A marker standing after the sentence's
/// full stop (`... a year. [1]`) belongs to that sentence.
pub fn sentences_citing(answer: &str, n: usize) -> Vec<String> {
    let mut sentences: Vec<String> = Vec::new();
    let mut start = 0;
    for (i, c) in answer.char_indices() {
        let end = i + c.len_utf8();
        let rest = &answer[end..];
        let stop = match c {
            '\n' => true,
            '.' | '!' | '?' => {
                rest.chars().next().is_none_or(char::is_whitespace)
                    && !(c == '.' && crate::checked::abbreviation(&answer[start..i], rest))
            }
            _ => false,
        };
        if stop {
            sentences.push(answer[start..end].to_string());
            start = end;
        }
    }
    sentences.push(answer[start..].to_string());
    // Markers at the start of a segment (`... leave. [1] Next ...`) belong
    // to the sentence before.
    let mut merged: Vec<String> = Vec::new();
    for s in sentences {
        let lead = LEADING_CITATIONS.find(&s).map_or(0, |m| m.end());
        match merged.last_mut() {
            Some(last) if lead > 0 => {
                last.push_str(&s[..lead]);
                merged.push(s[lead..].to_string());
            }
            _ => merged.push(s),
        }
    }
    merged
        .into_iter()
        .filter(|s| {
            CITATION.captures_iter(s).any(|caps| {
                caps[1]
                    .split(',')
                    .any(|m| m.trim().parse::<usize>() == Ok(n))
            })
        })
        .map(|s| without_markers(&s))
        .filter(|s| !s.is_empty())
        .collect()
}

/// A sentence without its citation markers, spaces collapsed.
pub(crate) fn without_markers(sentence: &str) -> String {
    let bare = CITATION.replace_all(sentence, "");
    let words: Vec<&str> = bare.split_whitespace().collect();
    words.join(" ").replace(" .", ".").replace(" ,", ",")
}

/// When a small model answers without citing, attribute the answer to the
/// passage whose words it uses most, if it uses enough of them. Returns the
/// 1-based passage number.
pub fn attribute<'a>(
    answer: &str,
    passages: impl IntoIterator<Item = &'a str>,
    min_support: f32,
) -> Option<usize> {
    passages
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i + 1, support(answer, p)))
        .filter(|(_, s)| *s >= min_support)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n)
}

/// The sentence of `passage` that supports the answer, as the citation's
/// quote (at most 400 characters, on one line): the one that holds the
/// most of the answer's words, then the one most of whose own words the
/// answer holds. Whole sentences as verification reads them, and never a
/// heading: a heading's few words are all in an answer about its section,
/// which says nothing about which sentence supports it.
pub fn best_quote(answer: &str, passage: &str) -> String {
    let sentences = crate::verify::passage_sentences(passage)
        .into_iter()
        .filter(|s| !s.starts_with('#'))
        .filter(|s| s.chars().filter(|c| c.is_alphanumeric()).count() > 10);
    let best = sentences
        .map(|s| (s, (support(answer, s), support(s, answer))))
        .max_by(|a, b| {
            a.1.0
                .total_cmp(&b.1.0)
                .then(a.1.1.total_cmp(&b.1.1))
                // The first of equals.
                .then(std::cmp::Ordering::Greater)
        })
        .map_or(passage, |(s, _)| s);
    let bare = best.trim_start_matches(['#', '-', '*', '>', ' ']);
    bare.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(400)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::NOT_COVERED;

    #[test]
    fn each_sentence_cites_the_marker() {
        assert_eq!(
            cite_each_sentence("Up to 240 hours, i.e. 30 days. Ask HR first!", "[1, 3]"),
            "Up to 240 hours, i.e. 30 days [1, 3]. Ask HR first [1, 3]!"
        );
        assert_eq!(cite_each_sentence("No", "[2]"), "No [2]");
    }

    #[test]
    fn citations_to_unknown_passages_are_removed() {
        let c = check_citations(
            "Per diem is $59 [2]. Hotels are booked in Concur [7]. See [1, 9].",
            3,
        );
        assert_eq!(c.cited, [1, 2]);
        assert_eq!(c.removed, 2);
        assert_eq!(
            c.text,
            "Per diem is $59 [2]. Hotels are booked in Concur. See [1]."
        );
        let none = check_citations("No sources [0].", 3);
        assert!(none.cited.is_empty());
        assert_eq!(none.removed, 1);
    }

    #[test]
    fn sentences_are_found_by_the_passage_they_cite() {
        let answer = "Employees get 28 days of paid annual leave. [1] Unused days expire in March [2]. \
                      The office has a rooftop pool [1].";
        assert_eq!(
            sentences_citing(answer, 1),
            [
                "Employees get 28 days of paid annual leave.",
                "The office has a rooftop pool."
            ]
        );
        assert_eq!(
            sentences_citing(answer, 2),
            ["Unused days expire in March."]
        );
        assert!(sentences_citing(answer, 3).is_empty());
        assert_eq!(
            sentences_citing("Leave is 28 days [1, 2].", 2),
            ["Leave is 28 days."]
        );
    }

    /// The quote is the sentence under the heading that supports the
    /// claim, not the heading, and it is whole.
    #[test]
    fn the_quote_is_the_supporting_sentence() {
        let passage = "## Advanced sick leave\n\nSick leave is for health needs. You can request \
                       up to 240 hours of advanced sick leave, i.e. 30 days.\n- Ask your \
                       supervisor first";
        assert_eq!(
            best_quote("You can request 240 hours of advanced sick leave.", passage),
            "You can request up to 240 hours of advanced sick leave, i.e. 30 days."
        );
        assert_eq!(
            best_quote("Ask your supervisor before you request it.", passage),
            "Ask your supervisor first"
        );
    }

    #[test]
    fn refusals_are_detected() {
        assert!(is_refusal(NOT_COVERED));
        assert!(is_refusal(
            "The passages do not mention the parking policy."
        ));
        assert!(is_refusal("I don't know."));
        assert!(!is_refusal("You get 13 days of sick leave a year [1]."));
    }

    #[test]
    fn attribution_picks_the_passage_the_answer_uses() {
        let passages = [
            "[1] (Leave)\nEmployees earn 13 days of sick leave each year.",
            "[2] (Travel)\nBook flights through the travel desk.",
        ];
        assert_eq!(
            attribute("You earn 13 days of sick leave yearly.", passages, 0.5),
            Some(1)
        );
        assert_eq!(attribute("Bananas are yellow.", passages, 0.5), None);
    }
}
