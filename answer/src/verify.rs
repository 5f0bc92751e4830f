//! Whether a passage supports what a sentence claims: not only that the
//! sentence shares its words, but that its numbers (with their units),
//! names and negations are the passage's. A paraphrase passes; a changed
//! figure, a swapped office or a dropped "not" does not.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::citations::support;

/// Why a sentence is not supported by a passage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Too few of the sentence's content words are in the passage.
    Words,
    /// A number (with its unit, when it has one) is not in the passage.
    Number(String),
    /// A name (a capitalised word or an acronym) is not in the passage.
    Name(String),
    /// The sentence negates what the passage's closest sentence affirms,
    /// or the other way round.
    Negation,
    /// Words the sentence puts in quotation marks are not the passage's.
    Quote(String),
}

/// Numbers as written: `45`, `1,000`, `2.5`, `$59`, `10%`, `9:30`.
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d+(?:[.,:]\d+)*").expect("valid regex"));

/// "Yes" or "No" opening an answer: it answers the question, the claim
/// follows.
static PARTICLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^\s*(yes|no)\b[,.;:!]?\s*").expect("valid regex"));

/// Text in straight or curly double quotation marks.
static QUOTED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#""([^"\n]+)"|“([^”\n]+)”"#).expect("valid regex"));

/// Words, keeping an apostrophe inside (`can't`, `employee's`).
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}]+(?:['’][\p{L}]+)?|%").expect("valid regex"));

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("fifteen", "15"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("ninety", "90"),
    ("hundred", "100"),
];

/// Units a number is read with: "45 days" and "45 hours" are not the same
/// claim. Singular and plural are one unit.
const UNITS: &[&str] = &[
    "%",
    "percent",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "mile",
    "km",
    "kilometer",
    "kilometre",
    "dollar",
    "usd",
    "eur",
    "euro",
    "gbp",
    "pound",
    "times",
    "page",
    "employee",
    "person",
    "people",
    "character",
    "digit",
    "gb",
    "mb",
    "tb",
    "kg",
    "night",
    "meal",
    "session",
    "credit",
    "point",
    "step",
    "level",
];

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "cannot",
    "can't",
    "won't",
    "isn't",
    "aren't",
    "doesn't",
    "don't",
    "didn't",
    "wasn't",
    "weren't",
    "shouldn't",
    "mustn't",
    "without",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "unpaid",
    "ineligible",
    "prohibited",
    "forbidden",
    "unable",
];

/// Capitalised words that are not names wherever they stand.
const NOT_NAMES: &[&str] = &[
    "i",
    "you",
    "your",
    "yours",
    "we",
    "our",
    "they",
    "their",
    "he",
    "she",
    "it",
    "its",
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "if",
    "for",
    "to",
    "in",
    "on",
    "at",
    "by",
    "of",
    "and",
    "or",
    "but",
    "yes",
    "no",
    "not",
    "all",
    "any",
    "each",
    "every",
    "per",
    "please",
    "note",
    "also",
    "however",
    "then",
    "when",
    "after",
    "before",
    "with",
    "from",
    "as",
    "is",
    "are",
    "be",
    "employees",
    "employee",
    "staff",
    "managers",
    "manager",
    "according",
    "based",
    "passage",
    "passages",
    "document",
    "documents",
    "answer",
    "yes,",
    "there",
    "here",
    "what",
    "which",
    "who",
];

fn normalise_number(raw: &str) -> String {
    // Thousands separators only: "1,000" is 1000, "2.5" stays itself.
    let s = if raw.contains(',') && raw.split(',').skip(1).all(|g| g.len() == 3) {
        raw.replace(',', "")
    } else {
        raw.to_string()
    };
    s.trim_end_matches(['.', ',', ':']).to_string()
}

fn unit_of(word: &str) -> Option<String> {
    let w = word.to_lowercase();
    let w = w.trim_end_matches("'s");
    match w {
        "percent" => return Some("%".into()),
        "usd" | "dollars" => return Some("dollar".into()),
        "eur" | "euros" => return Some("euro".into()),
        "gbp" | "pounds" => return Some("pound".into()),
        "people" | "persons" => return Some("person".into()),
        _ => {}
    }
    let singular = w.strip_suffix('s').filter(|s| UNITS.contains(s));
    if UNITS.contains(&w) {
        Some(w.to_string())
    } else {
        singular.map(str::to_string)
    }
}

/// The numbers of a text, each with the unit that follows it (if one of
/// [`UNITS`] does, within two words): digits and the number words.
/// Units one amount is also written in: "two weeks" is "14 days".
const CONVERSIONS: &[(&str, &str, f64)] = &[
    ("week", "day", 7.0),
    ("hour", "minute", 60.0),
    ("minute", "second", 60.0),
    ("year", "month", 12.0),
];

/// Whether two numbers with units are one amount in different units
/// ("2 weeks" and "14 days"); never for a number without a unit.
fn same_amount(a: (&str, Option<&str>), b: (&str, Option<&str>)) -> bool {
    let (Some(ua), Some(ub)) = (a.1, b.1) else {
        return false;
    };
    let (Ok(va), Ok(vb)) = (a.0.parse::<f64>(), b.0.parse::<f64>()) else {
        return false;
    };
    CONVERSIONS.iter().any(|&(big, small, factor)| {
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        (ua == big && ub == small && close(va * factor, vb))
            || (ua == small && ub == big && close(vb * factor, va))
    })
}

fn numbers(text: &str) -> Vec<(String, Option<String>)> {
    numbers_at(text)
        .into_iter()
        .map(|(_, value, unit)| (value, unit))
        .collect()
}

/// [`numbers`], each with its byte offset in `text`.
fn numbers_at(text: &str) -> Vec<(usize, String, Option<String>)> {
    let tokens: Vec<(usize, &str)> = TOKEN
        .find_iter(text)
        .map(|m| (m.start(), m.as_str()))
        .collect();
    let digits: Vec<(usize, String)> = NUMBER
        .find_iter(text)
        .map(|m| (m.start(), normalise_number(m.as_str())))
        .collect();
    let mut found = Vec::new();
    for (i, (start, token)) in tokens.iter().enumerate() {
        let lower = token.to_lowercase();
        let value = if let Some((_, n)) = digits.iter().find(|(s, _)| s == start) {
            Some(n.clone())
        } else {
            NUMBER_WORDS
                .iter()
                .find(|(w, _)| *w == lower)
                .map(|(_, n)| n.to_string())
        };
        let Some(value) = value else { continue };
        // A currency sign before the digits, or a percent sign after
        // them, is the unit.
        let after = &text[start + token.len()..];
        let currency = match text[..*start].chars().next_back() {
            Some('$') => Some("dollar"),
            Some('€') => Some("euro"),
            Some('£') => Some("pound"),
            _ => None,
        };
        let unit = if let Some(c) = currency {
            Some(c.to_string())
        } else if after.starts_with('%') {
            Some("%".to_string())
        } else {
            tokens[i + 1..].iter().take(2).find_map(|(_, w)| unit_of(w))
        };
        // A number word is a number only with a unit ("one year", not
        // "the one you need").
        let spelled = !digits.iter().any(|(s, _)| s == start);
        if spelled && unit.is_none() {
            continue;
        }
        found.push((*start, value, unit));
    }
    found
}

/// The words of a text, lowercased, each also without a possessive `'s`.
fn words_lower(text: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for m in TOKEN.find_iter(text) {
        let w = m.as_str().to_lowercase().replace('’', "'");
        if let Some(bare) = w.strip_suffix("'s") {
            words.insert(bare.to_string());
        }
        words.insert(w);
    }
    words
}

/// The names in a sentence: acronyms and capitalised words, but for a
/// capitalised word that starts the sentence, a list item, a quote or a
/// clause after a colon.
fn names(sentence: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut last_end = 0;
    for m in TOKEN.find_iter(sentence) {
        let between = &sentence[last_end..m.start()];
        let starts = last_end == 0
            || between.contains([':', '\n', '"', '“', '(', '•', '*', '-', '.', '!', '?']);
        last_end = m.end();
        let word = m.as_str();
        let first_upper = word.chars().next().is_some_and(char::is_uppercase);
        let inner_upper = word.chars().skip(1).any(char::is_uppercase);
        let acronym = word.chars().filter(|c| c.is_alphabetic()).count() >= 2
            && word.chars().all(|c| !c.is_lowercase());
        if acronym
            || (((first_upper && !starts) || inner_upper)
                && !NOT_NAMES.contains(&word.to_lowercase().as_str()))
        {
            found.push(word.to_string());
        }
    }
    found
}

/// Phrases with a negation word that bound an amount or set an aside
/// rather than negate: "no later than 30 days" is "within 30 days". A
/// bound still has a direction: see [`bound_flipped`].
static NOT_NEGATIONS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:no|not)\s+(?:later|earlier|more|less|fewer|longer|sooner)\s+than\b|\bnot\s+(?:to\s+)?exceed(?:ing)?\b|\bno\s+matter\b",
    )
    .expect("valid regex")
});

/// "unpaid" denies pay, not everything near it: "26 weeks of unpaid
/// leave" does not deny "up to 26 weeks", it denies "26 weeks of paid
/// leave". It negates only a text that speaks of pay (or the other does).
const PAY_WORDS: &[&str] = &[
    "paid",
    "pay",
    "pays",
    "salary",
    "wage",
    "wages",
    "compensated",
    "compensation",
    "unpaid",
];

/// Whether `text` is negated, read against `other` (the text it is
/// compared with): bounds ("no later than") are not negations, and
/// "unpaid" counts only where either speaks of pay.
fn negated(text: &str, other: &str) -> bool {
    let words = words_lower(&NOT_NEGATIONS.replace_all(text, " "));
    let other = words_lower(other);
    words.iter().any(|w| {
        if w == "unpaid" {
            return PAY_WORDS
                .iter()
                .any(|p| *p != "unpaid" && words.contains(*p) || other.contains(*p));
        }
        NEGATIONS.contains(&w.as_str()) || w.ends_with("n't")
    })
}

/// Whether one text bounds an amount the other way round: "no more than
/// 240 hours" against "more than 240 hours", "must not exceed $75"
/// against "must exceed $75".
fn bound_flipped(a: &str, b: &str) -> bool {
    static COMPARISON: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)\b(?:(no|not)\s+(?:to\s+)?)?((?:later|earlier|more|less|fewer|longer|sooner)\s+than|exceed(?:s|ed|ing)?)\b",
        )
        .expect("valid regex")
    });
    // Each comparison of a text, with whether a "no" or "not" bounds it.
    let comparisons = |text: &str| -> Vec<(String, bool)> {
        COMPARISON
            .captures_iter(text)
            .map(|c| {
                let word = c[2].to_lowercase();
                let word = if word.starts_with("exceed") {
                    "exceed".to_string()
                } else {
                    word.split_whitespace().collect::<Vec<_>>().join(" ")
                };
                (word, c.get(1).is_some())
            })
            .collect()
    };
    let (a, b) = (comparisons(a), comparisons(b));
    a.iter()
        .any(|(word, bounded)| b.iter().any(|(w, other)| w == word && other != bounded))
}

/// Whether an acronym ("CEO") is spelled out in `text` as consecutive
/// words with its initials ("chief executive officer").
fn spelled_out(acronym: &str, text: &str) -> bool {
    let letters: Vec<char> = acronym
        .trim_end_matches("'s")
        .trim_end_matches('s')
        .chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(char::to_lowercase)
        .collect();
    if letters.len() < 2 || !acronym.chars().all(|c| !c.is_lowercase() || c == 's') {
        return false;
    }
    let initials: Vec<char> = TOKEN
        .find_iter(text)
        .filter_map(|m| m.as_str().chars().next())
        .flat_map(char::to_lowercase)
        .collect();
    initials
        .windows(letters.len())
        .any(|w| w == letters.as_slice())
}

/// The passage's sentences (and list items and clauses after a `;`). A
/// stop ends one only before a space or the end, and not after an
/// abbreviation ("i.e.", "approx.") or an initial: "0.30 EUR per km" and
/// "i.e. 14 days" stay whole. A line break ends one only where a block
/// ends (a heading or table row, a blank line, or a list item, heading,
/// quote or table row next): Markdown wraps a paragraph's lines, and "call (877)\n472-6716"
/// is one sentence.
pub(crate) fn passage_sentences(passage: &str) -> Vec<&str> {
    const CLOSING_MARKS: &[char] = &['*', '_', '"', '”', '’', ')'];
    static BLOCK_START: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s*(?:$|[-*+#>|]|\d+[.)]\s)").expect("valid regex"));
    let bytes = passage.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in passage.char_indices() {
        let next = i + c.len_utf8();
        // Where the sentence ends, if it ends here.
        let end = match c {
            ';' => Some(next),
            // After a heading or table row (one line each), or before a
            // new block.
            '\n' => {
                let line = passage[..i].rsplit('\n').next().unwrap_or("").trim_start();
                (line.starts_with(['#', '|'])
                    || BLOCK_START.is_match(passage[i + 1..].split('\n').next().unwrap_or("")))
                .then_some(next)
            }
            // Closing marks after the stop stay with the sentence:
            // "**Begin two weeks before.** Your last day ...".
            '.' | '!' | '?' => {
                let after = &passage[next..];
                let close = after.len() - after.trim_start_matches(CLOSING_MARKS).len();
                (bytes.get(next + close).is_none_or(u8::is_ascii_whitespace)
                    && !(c == '.'
                        && crate::checked::abbreviation(&passage[start..i], &after[close..])))
                .then_some(next + close)
            }
            _ => None,
        };
        if let Some(end) = end {
            out.push(&passage[start..end]);
            start = end;
        }
    }
    out.push(&passage[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .collect()
}

/// Checks `sentence` (without its citation markers) against `passage`.
/// `context` is the passage's own label (its title and heading), which the
/// sentence may also draw numbers and names from. The question is not
/// context: what a caller asks ("is it 90 days?") is no evidence.
///
/// Numbers must be in the passage sentences that share most of the
/// claim's words, so a figure the passage gives for something else does
/// not pass; names must be in the passage; the negation must be that of
/// the closest sentence.
pub fn check_claim(
    sentence: &str,
    passage: &str,
    context: &str,
    min_support: f32,
) -> Result<(), Mismatch> {
    if support(sentence, passage) < min_support {
        return Err(Mismatch::Words);
    }
    // "No, ..." and "Yes, ..." answer the question; the claim follows.
    let sentence = PARTICLE.replace(sentence, "");
    let sentence = sentence.as_ref();
    let sentences = passage_sentences(passage);
    let claim = Near::new(sentence, &sentences, false);
    // A claim may join two of the passage's sentences ("12 weeks of leave
    // a year, 26 to care for a servicemember"): each of its clauses that a
    // passage sentence supports on its own is also read against that one.
    let parts: Vec<(usize, &str, Option<Near>)> = clauses(sentence)
        .into_iter()
        .map(|(at, clause)| {
            let near = Near::new(clause, &sentences, true);
            (at, clause, (near.support >= min_support).then_some(near))
        })
        .collect();
    let joined = parts.len() > 1;
    let clause_at = |at: usize| parts.iter().rev().find(|(start, ..)| *start <= at);
    let context_numbers = numbers(context);
    for (at, value, unit) in numbers_at(sentence) {
        let same = |(v, u): &(String, Option<String>)| {
            (*v == value && (unit.is_none() || u.is_none() || *u == unit))
                || same_amount((&value, unit.as_deref()), (v, u.as_deref()))
        };
        // A clause a sentence supports takes its figures from there: a
        // figure of the joined sentence's is not this clause's.
        let near = clause_at(at)
            .and_then(|(_, _, near)| near.as_ref())
            .filter(|_| joined)
            .unwrap_or(&claim);
        if !near.numbers.iter().any(same) && !context_numbers.iter().any(same) {
            return Err(Mismatch::Number(match unit {
                Some(u) => format!("{value} {u}"),
                None => value,
            }));
        }
    }
    // Quotation marks promise the passage's own words.
    let flat = |t: &str| {
        t.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let labelled = format!("{passage}\n{context}");
    let source = flat(&labelled);
    for quoted in QUOTED
        .captures_iter(sentence)
        .filter_map(|c| c.get(1).or_else(|| c.get(2)))
    {
        let words = flat(quoted.as_str());
        if !words.is_empty() && !format!(" {source} ").contains(&format!(" {words} ")) {
            return Err(Mismatch::Quote(quoted.as_str().to_string()));
        }
    }
    let known = words_lower(&labelled);
    for name in names(sentence) {
        let lower = name.to_lowercase().replace('’', "'");
        let bare = lower.trim_end_matches("'s");
        let singular = bare.strip_suffix('s').unwrap_or(bare);
        if ![bare, singular]
            .iter()
            .any(|w| known.contains(*w) || known.contains(&format!("{w}s")))
            && !spelled_out(&name, &labelled)
        {
            return Err(Mismatch::Name(name));
        }
    }
    // An identifier with digits in it ("hspd12", "v2") is the passage's,
    // or the claim names something else.
    for id in TOKEN.find_iter(sentence).map(|m| m.as_str()).filter(|w| {
        w.char_indices()
            .any(|(i, c)| c.is_ascii_digit() && w[..i].ends_with(char::is_alphabetic))
    }) {
        if !known.contains(&id.to_lowercase()) {
            return Err(Mismatch::Name(id.to_string()));
        }
    }
    // Each clause says what the passage's closest clause says, or the
    // opposite ("Your leave will not be paid out; you keep it": which of
    // the two a clause speaks to decides). Where no passage clause shares
    // a third of a clause's words, and two of them, the whole claim is read
    // against its closest sentence. Of equally close clauses, those of the
    // claim's closest sentence; any of them may agree. ("not" is a stop
    // word, so it does not move the choice.)
    let passage_clauses: Vec<&str> = sentences
        .iter()
        .flat_map(|s| clauses(s).into_iter().map(|(_, c)| c))
        .collect();
    for (_, clause, _) in &parts {
        let scored: Vec<(&str, f32)> = passage_clauses
            .iter()
            .map(|c| (*c, support(clause, c)))
            .collect();
        let best = scored.iter().map(|(_, s)| *s).fold(0.0, f32::max);
        let shared = best * crate::citations::content_words(clause).len() as f32;
        if best < 0.3 || shared < 1.5 {
            // No passage clause speaks to this one: the whole claim is
            // read against its closest sentence.
            if let Some(closest) = claim.closest
                && (negated(sentence, closest) != negated(closest, sentence)
                    || bound_flipped(sentence, closest))
            {
                return Err(Mismatch::Negation);
            }
            continue;
        }
        let mut targets: Vec<&str> = scored
            .iter()
            .filter(|(_, s)| *s == best)
            .map(|(c, _)| *c)
            .collect();
        // Among equals, those of the sentence closest to the whole claim.
        if let Some(closest) = claim.closest {
            let within = |c: &str| closest.as_bytes().as_ptr_range().contains(&c.as_ptr());
            if targets.iter().any(|c| within(c)) {
                targets.retain(|c| within(c));
            }
        }
        if !targets.is_empty()
            && !targets
                .iter()
                .any(|t| negated(clause, t) == negated(t, clause) && !bound_flipped(clause, t))
        {
            return Err(Mismatch::Negation);
        }
    }
    Ok(())
}

/// Whether the passage speaks of what the claim takes from the question:
/// of the claim's words that the question also has (two or more), at
/// least half are the passage's (or its title's and heading's). "The
/// vesting schedule for stock options is subject to approval" repeats
/// the question's subject over a passage on something else.
pub(crate) fn on_topic(claim: &str, question: &str, passage: &str, context: &str) -> bool {
    let asked = crate::select::terms(question);
    let taken: Vec<String> = crate::select::terms(claim)
        .into_iter()
        .filter(|w| asked.contains(w))
        .collect();
    if taken.len() < 2 {
        return true;
    }
    let known = crate::select::terms(&format!("{passage}\n{context}"));
    2 * taken.iter().filter(|w| known.contains(*w)).count() >= taken.len()
}

/// What of a passage is near a claim (or a clause of one): its closest
/// sentence, and the numbers of that and of the other sentences close to
/// it. For a whole claim, any that shares a third of its words (a claim
/// may join two). For a clause, only those as close as the closest, read
/// without numbers: a figure of the neighbouring row ("Part-time staff
/// earn 4 hours", "Full-time staff earn 8 hours") must not make a row
/// closer to a clause that carries it.
struct Near<'p> {
    closest: Option<&'p str>,
    support: f32,
    numbers: Vec<(String, Option<String>)>,
}

impl<'p> Near<'p> {
    fn new(claim: &str, sentences: &[&'p str], clause: bool) -> Self {
        let words = if clause {
            NUMBER_WORD.replace_all(claim, " ").into_owned()
        } else {
            claim.to_string()
        };
        let mut ranked: Vec<(&str, f32)> =
            sentences.iter().map(|s| (*s, support(&words, s))).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let best = ranked.first().map_or(0.0, |(_, score)| *score);
        let min = if clause { best } else { 0.34 };
        let window = ranked
            .iter()
            .enumerate()
            .filter(|(i, (_, score))| *i == 0 || *score >= min)
            .map(|(_, (s, _))| *s)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            closest: ranked.first().map(|(s, _)| *s),
            support: best,
            numbers: numbers(&window),
        }
    }
}

/// A word with a digit in it.
static NUMBER_WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}$%.,:]*\d[\p{L}\p{N}%.,:]*").expect("valid regex"));

/// Words that open a clause about the one before it.
const RELATIVE: &[&str] = &[
    "which",
    "that",
    "who",
    "whom",
    "whose",
    "where",
    "when",
    "lasting",
    "including",
];

/// The clauses of a claim, each with its byte offset: cut at commas,
/// semicolons, colons, brackets and the conjunctions that join two
/// statements. A piece with fewer than two words of its own (besides
/// numbers) stays with the clause before it (or, first, the one after),
/// so "(not to managers)" keeps its "not" and "26 weeks" its subject, and
/// so does one that opens with "which", "who", "including"...
pub(crate) fn clauses(claim: &str) -> Vec<(usize, &str)> {
    static CUT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)[,;:()]|\s(?:and|but|so|while|whereas)\s").expect("valid regex")
    });
    let mut cuts = vec![0];
    cuts.extend(CUT.find_iter(claim).map(|m| m.start()));
    cuts.push(claim.len());
    let pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let own_words = |(start, end): (usize, usize)| {
        TOKEN
            .find_iter(&claim[start..end])
            .filter(|m| {
                let w = m.as_str().to_lowercase();
                crate::citations::content_word(&w)
                    && !w.chars().all(|c| c.is_ascii_digit())
                    && !NEGATIONS.contains(&w.as_str())
            })
            .count()
    };
    // "..., which lasts 12 weeks" says what the clause before it is about:
    // without a subject of its own, it is not a claim apart.
    let relative = |(start, end): (usize, usize)| {
        TOKEN
            .find(&claim[start..end])
            .is_some_and(|m| RELATIVE.contains(&m.as_str().to_lowercase().as_str()))
    };
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for piece in pieces {
        match merged.last_mut() {
            Some(last) if own_words(piece) < 2 || own_words(*last) < 2 || relative(piece) => {
                last.1 = piece.1
            }
            _ => merged.push(piece),
        }
    }
    merged
        .into_iter()
        .map(|(start, end)| (start, &claim[start..end]))
        .collect()
}

/// The sentence of `passage` that answers `question` best: the most of
/// the question's content words, and for a question after an amount
/// ("how many", "how long", "how much", "when") one with a number. `None`
/// when no sentence shares 30% of the question's content words.
pub fn best_sentence(question: &str, passage: &str) -> Option<String> {
    let lower = question.to_lowercase();
    let wants_number = [
        "how many",
        "how much",
        "how long",
        "how often",
        "how far",
        "when",
        "what time",
    ]
    .iter()
    .any(|w| lower.contains(w));
    whole_sentences(passage)
        .into_iter()
        .map(|s| (s, support(question, s)))
        .filter(|(_, base)| *base >= 0.3)
        .map(|(s, base)| {
            let bonus = if wants_number && !numbers(s).is_empty() {
                0.25
            } else {
                0.0
            };
            (s, base + bonus)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| one_line(&CITATION_MARKS.replace_all(s, "")))
}

/// `text` with its line breaks and runs of spaces as single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The passage's whole sentences, as a quote shows them (list and heading
/// marks off): a chunk may start or stop mid-sentence, and those pieces
/// are left out.
fn whole_sentences(passage: &str) -> Vec<&str> {
    passage_sentences(passage)
        .into_iter()
        .map(|s| s.trim_start_matches(['#', '-', '*', '>', ' ']).trim())
        .filter(|s| {
            s.split_whitespace().count() >= 4
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
                && s.ends_with(['.', '!', '?'])
        })
        .collect()
}

/// Where the model wrote `claims` that did not hold (a unit or a name put
/// in its own words, a figure it garbled), the sentence of `passage` it was
/// saying: the whole sentence that holds the most of one claim's content
/// words (at least `min_alignment` of them) and answers the question (30%
/// of its content words, and something besides them). Returns the
/// sentence, without citation marks, and its score (alignment plus the
/// share of the question it holds).
pub fn recover(
    question: &str,
    claims: &[String],
    passage: &str,
    min_alignment: f32,
) -> Option<(String, f32)> {
    whole_sentences(passage)
        .into_iter()
        .filter_map(|s| {
            let aligned = claims.iter().map(|c| support(c, s)).fold(0f32, f32::max);
            let answers = support(question, s);
            (aligned >= min_alignment
                && answers >= 0.3
                && !crate::checked::says_nothing_new(s, question))
            .then_some((s, aligned + answers))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, score)| (one_line(&CITATION_MARKS.replace_all(s, "")), score))
}

/// What an [`Alteration`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlterationKind {
    Number,
    Negation,
    Name,
}

impl AlterationKind {
    pub fn name(self) -> &'static str {
        match self {
            AlterationKind::Number => "number",
            AlterationKind::Negation => "negation",
            AlterationKind::Name => "name",
        }
    }
}

/// A copy of a correct answer with one fact changed: what verification
/// must catch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alteration {
    pub kind: AlterationKind,
    pub text: String,
}

/// Names an altered answer may swap in for one of the answer's.
const OTHER_NAMES: &[&str] = &["CFO", "Legal", "Marketing", "Oracle", "Zendesk", "Berlin"];

const AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "can", "must", "may", "will", "should", "could", "would", "has",
    "have", "does", "do",
];

/// Copies of `answer` with one fact changed, each kind at most once: its
/// first number doubled (plus one when doubling gives a number `avoid`
/// holds), its negation flipped (removed, or added after the first
/// auxiliary verb), its first name swapped for one `avoid` does not
/// contain. `avoid` is the evidence the answer is checked against.
pub fn alterations(answer: &str, avoid: &str) -> Vec<Alteration> {
    let mut out = Vec::new();
    if let Some(m) = NUMBER
        .find(answer)
        .filter(|m| !in_marker(answer, m.start()))
    {
        let value: f64 = normalise_number(m.as_str())
            .replace(':', ".")
            .parse()
            .unwrap_or(1.0_f64)
            .min(1e9);
        let known = numbers(avoid);
        let mut altered = value * 2.0;
        while known
            .iter()
            .any(|(v, _)| v.parse::<f64>().ok() == Some(altered))
            || altered == value
        {
            altered += 1.0;
        }
        let altered = if altered.fract() == 0.0 {
            format!("{altered:.0}")
        } else {
            format!("{altered}")
        };
        out.push(Alteration {
            kind: AlterationKind::Number,
            text: format!("{}{altered}{}", &answer[..m.start()], &answer[m.end()..]),
        });
    }
    if let Some(flipped) = flip_negation(answer) {
        out.push(Alteration {
            kind: AlterationKind::Negation,
            text: flipped,
        });
    }
    if let Some(name) = names(&CITATION_MARKS.replace_all(answer, "")).first() {
        let name = name.trim_end_matches("'s").trim_end_matches("’s");
        let avoid = words_lower(avoid);
        if let Some(other) = OTHER_NAMES
            .iter()
            .find(|o| !avoid.contains(&o.to_lowercase()) && !name.eq_ignore_ascii_case(o))
        {
            out.push(Alteration {
                kind: AlterationKind::Name,
                text: answer.replacen(name, other, 1),
            });
        }
    }
    out
}

static CITATION_MARKS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[\d+(?:\s*,\s*\d+)*\]").expect("valid regex"));

fn in_marker(text: &str, at: usize) -> bool {
    CITATION_MARKS
        .find_iter(text)
        .any(|m| m.start() <= at && at < m.end())
}

/// The answer with its first negation removed, or, without one, "not"
/// added after its first auxiliary verb.
fn flip_negation(answer: &str) -> Option<String> {
    static NEGATED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)\b(cannot|can't|won't|isn't|aren't|doesn't|don't|not|never|no)\b")
            .expect("valid regex")
    });
    // A bound ("no later than") is not a negation to flip, nor is the
    // "No" that answers the question: the claim after it is.
    let mut bounds: Vec<_> = NOT_NEGATIONS.find_iter(answer).map(|b| b.range()).collect();
    bounds.extend(PARTICLE.find(answer).map(|p| p.range()));
    if let Some(m) = NEGATED
        .find_iter(answer)
        .find(|m| !bounds.iter().any(|b| b.contains(&m.start())))
    {
        let replacement = match m.as_str().to_lowercase().as_str() {
            "cannot" | "can't" => "can",
            "won't" => "will",
            "isn't" => "is",
            "aren't" => "are",
            "doesn't" => "does",
            "don't" => "do",
            "never" => "always",
            "no" => "some",
            _ => "",
        };
        let text = format!(
            "{}{replacement}{}",
            &answer[..m.start()],
            &answer[m.end()..]
        );
        return Some(text.replace("  ", " "));
    }
    let m = TOKEN
        .find_iter(answer)
        .find(|m| AUXILIARIES.contains(&m.as_str().to_lowercase().as_str()))?;
    Some(format!("{} not{}", &answer[..m.end()], &answer[m.end()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sentences end at a stop before a space or the end, not inside a
    /// number or after an abbreviation.
    #[test]
    fn passage_sentences_keep_numbers_and_abbreviations_whole() {
        let passage = "Mileage is paid at 0.30 EUR per km, i.e. about 30 cents. Approx. 5 trips \
                       a month are usual; more need approval.\n- Taxis are fine at night\n\
                       - Call the desk at (877)\n472-6716 for trains\n\n1. Book\nearly.";
        assert_eq!(
            passage_sentences(passage),
            [
                "Mileage is paid at 0.30 EUR per km, i.e. about 30 cents.",
                "Approx. 5 trips a month are usual;",
                "more need approval.",
                "- Taxis are fine at night",
                "- Call the desk at (877)\n472-6716 for trains",
                "1. Book\nearly.",
            ]
        );
        assert_eq!(
            passage_sentences("**Begin two weeks before.** Your last day (see HR.) is set."),
            [
                "**Begin two weeks before.**",
                "Your last day (see HR.) is set."
            ]
        );
    }

    /// The abbreviations handbooks and policies use do not end sentences:
    /// dotted ones, titles, "No." before a number, initials, a lower-case
    /// continuation; a sentence that really ends there still does.
    #[test]
    fn passage_sentences_survive_abbreviations() {
        let passage = "Use form No. 12 from the U.S. Office of Personnel Management, e.g. via \
                       HR Links. Ask Dr. Lee or J. R. Smith at 9 a.m. Monday. Hours are min. \
                       four a day, i.e. 20 a week. Was it approved? The answer is no. Appeals \
                       go to St. Louis, Mo. in writing. Costs rose 2.5 percent vs. last year. \
                       Laptops come from Acme Ltd. Order them by Dec. 1 at the latest.";
        assert_eq!(
            passage_sentences(passage),
            [
                "Use form No. 12 from the U.S. Office of Personnel Management, e.g. via HR Links.",
                "Ask Dr. Lee or J. R. Smith at 9 a.m. Monday.",
                "Hours are min. four a day, i.e. 20 a week.",
                "Was it approved?",
                "The answer is no.",
                "Appeals go to St. Louis, Mo. in writing.",
                "Costs rose 2.5 percent vs. last year.",
                "Laptops come from Acme Ltd.",
                "Order them by Dec. 1 at the latest.",
            ]
        );
        // An answer's sentences cite as they are split.
        let answer = "Use form No. 12, i.e. the U.S. one [1]. Ask Dr. Lee [2].";
        assert_eq!(
            crate::citations::sentences_citing(answer, 1),
            ["Use form No. 12, i.e. the U.S. one."]
        );
        assert_eq!(
            crate::citations::sentences_citing(answer, 2),
            ["Ask Dr. Lee."]
        );
    }

    /// Recovery finds the sentence a garbled claim was saying, and only
    /// one that also answers the question with something of its own.
    #[test]
    fn recover_finds_the_sentence_a_claim_was_saying() {
        let passage = "Parents get 14 days of paid parental leave. It starts on the day of the \
                       birth. Parental leave is paid.";
        let claims = ["Parents receive two weeks of paid parental leave.".to_string()];
        let (sentence, _) = recover(
            "How much parental leave do parents get?",
            &claims,
            passage,
            0.5,
        )
        .unwrap();
        assert_eq!(sentence, "Parents get 14 days of paid parental leave.");
        // Nothing aligned with the claim.
        let unrelated = ["Interns may work remotely on Fridays.".to_string()];
        assert!(recover("How much parental leave?", &unrelated, passage, 0.5).is_none());
        // Aligned, but not an answer to this question.
        assert!(recover("Who approves expenses?", &claims, passage, 0.5).is_none());
    }

    const LEAVE: &str = "Sick leave is paid in full for up to 60 days per year. \
        Requests over 45 days need the CISO's approval. Unused days do not carry over.";

    #[test]
    fn paraphrases_pass() {
        for s in [
            "You get up to 60 days of fully paid sick leave each year.",
            "Sick leave over 45 days needs approval from the CISO.",
            "Unused sick days don't carry over to the next year.",
            "Sick leave is paid in full for up to sixty days per year.",
        ] {
            assert_eq!(check_claim(s, LEAVE, "", 0.5), Ok(()), "{s}");
        }
    }

    #[test]
    fn changed_numbers_names_and_negations_fail() {
        assert_eq!(
            check_claim(
                "Sick leave is paid in full for up to 90 days per year.",
                LEAVE,
                "",
                0.5
            ),
            Err(Mismatch::Number("90 day".into()))
        );
        assert_eq!(
            check_claim(
                "Sick leave is paid in full for up to 60 weeks per year.",
                LEAVE,
                "",
                0.5
            ),
            Err(Mismatch::Number("60 week".into()))
        );
        assert_eq!(
            check_claim(
                "Requests over 45 days need the CFO's approval.",
                LEAVE,
                "",
                0.5
            ),
            Err(Mismatch::Name("CFO's".into()))
        );
        assert_eq!(
            check_claim("Unused days carry over.", LEAVE, "", 0.5),
            Err(Mismatch::Negation)
        );
        assert_eq!(
            check_claim(
                "Sick leave is not paid in full for up to 60 days per year.",
                LEAVE,
                "",
                0.5
            ),
            Err(Mismatch::Negation)
        );
    }

    #[test]
    fn an_acronym_passes_where_the_passage_spells_it_out() {
        let about = "Aino Virtanen is the chief executive officer; Mateus Rocha is the chief technology officer.";
        assert_eq!(
            check_claim("The CEO is Aino Virtanen.", about, "", 0.5),
            Ok(())
        );
        assert_eq!(
            check_claim("The CFO is Aino Virtanen.", about, "", 0.5),
            Err(Mismatch::Name("CFO".into()))
        );
    }

    #[test]
    fn the_label_may_name_what_the_text_does_not() {
        let s = "Your PTO for sickness is paid in full for up to 60 days per year.";
        assert!(check_claim(s, LEAVE, "", 0.4).is_err());
        assert_eq!(check_claim(s, LEAVE, "Sick leave (PTO)", 0.4), Ok(()));
    }

    #[test]
    fn a_figure_the_passage_gives_for_something_else_fails() {
        assert_eq!(
            check_claim(
                "Sick leave is paid in full for up to 45 days per year.",
                LEAVE,
                "",
                0.5
            ),
            Err(Mismatch::Number("45 day".into()))
        );
        assert_eq!(
            check_claim(
                "Laptops are ordered through IT.",
                "Laptops are ordered through HR.",
                "",
                0.5
            ),
            Err(Mismatch::Name("IT".into()))
        );
        // Paraphrased units and answer particles pass.
        let per_diem = "The meal allowance is $59 per day. Hotels are booked in 20 working days.";
        for s in [
            "The meal allowance is 59 dollars a day.",
            "Hotels are booked in 20 days.",
        ] {
            assert_eq!(check_claim(s, per_diem, "", 0.5), Ok(()), "{s}");
        }
        assert_eq!(
            check_claim("No, unused days do not carry over.", LEAVE, "", 0.5),
            Ok(())
        );
    }

    #[test]
    fn alterations_change_one_fact_each_and_are_caught() {
        let answer = "Requests over 45 days are approved by the CISO [1].";
        let altered = alterations(answer, LEAVE);
        let texts: Vec<&str> = altered.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Requests over 90 days are approved by the CISO [1].",
                "Requests over 45 days are not approved by the CISO [1].",
                "Requests over 45 days are approved by the CFO [1].",
            ]
        );
        assert_eq!(
            check_claim(&answer.replace(" [1]", ""), LEAVE, "", 0.5),
            Ok(())
        );
        for a in &altered {
            assert!(
                check_claim(&a.text.replace(" [1]", ""), LEAVE, "", 0.5).is_err(),
                "{a:?}"
            );
        }
        assert_eq!(
            alterations("Unused days do not carry over.", LEAVE)[0].text,
            "Unused days do carry over."
        );
    }

    #[test]
    fn the_best_sentence_answers_the_question() {
        assert_eq!(
            best_sentence("How many sick days do I get?", LEAVE).as_deref(),
            Some("Sick leave is paid in full for up to 60 days per year.")
        );
        assert_eq!(best_sentence("Where is the parking garage?", LEAVE), None);
        assert_eq!(
            best_sentence("How many sick days?", "days of sick leave for 5 weeks and"),
            None
        );
    }

    /// One amount in another unit holds ("two weeks" for "14 days"); a
    /// changed amount does not, in either unit.
    #[test]
    fn an_amount_in_another_unit_is_the_same_claim() {
        let passage = "Parents get 14 days of leave. Calls last 120 minutes.";
        for claim in [
            "Parents get two weeks of leave.",
            "Parents get 2 weeks of leave.",
            "Calls last 2 hours.",
        ] {
            assert!(check_claim(claim, passage, "", 0.5).is_ok(), "{claim}");
        }
        for claim in ["Parents get three weeks of leave.", "Calls last 3 hours."] {
            assert!(
                matches!(
                    check_claim(claim, passage, "", 0.5),
                    Err(Mismatch::Number(_))
                ),
                "{claim}"
            );
        }
    }

    const FMLA: &str = "FMLA entitles you to take up to 12 weeks of unpaid leave per 12 month \
        period. You can take up to 26 weeks of unpaid FMLA to care for an ill servicemember. \
        Eligibility needs one year of federal service.";

    /// A claim that joins two of the passage's sentences holds where each
    /// of its clauses does; a clause with another clause's figure fails.
    #[test]
    fn a_claim_may_join_two_sentences_clause_by_clause() {
        for claim in [
            "Up to 12 weeks of unpaid leave per 12-month period (26 weeks to care for an ill \
             servicemember).",
            "FMLA gives 12 weeks of unpaid leave, and 26 weeks to care for an ill servicemember.",
            "Up to 26 weeks.",
        ] {
            assert_eq!(check_claim(claim, FMLA, "", 0.5), Ok(()), "{claim}");
        }
        for claim in [
            "FMLA gives 26 weeks of unpaid leave per 12 month period, and 12 weeks to care for \
             an ill servicemember.",
            "Up to 12 weeks of unpaid leave per 12-month period (36 weeks to care for an ill \
             servicemember).",
        ] {
            assert!(
                matches!(check_claim(claim, FMLA, "", 0.5), Err(Mismatch::Number(_))),
                "{claim}"
            );
        }
    }

    /// "unpaid" denies "paid", not every claim near it; a bound ("no later
    /// than", "not to exceed") is no negation; each clause keeps its own.
    #[test]
    fn negations_are_read_where_they_apply() {
        assert_eq!(
            check_claim("Up to 26 weeks to care for a servicemember.", FMLA, "", 0.5),
            Ok(())
        );
        assert_eq!(
            check_claim(
                "You can take 26 weeks of paid FMLA to care for a servicemember.",
                FMLA,
                "",
                0.5
            ),
            Err(Mismatch::Negation)
        );
        let decision = "The DM will provide a decision as soon as possible, but not to exceed \
                        30 calendar days from the request date. Travel days are paid at 75% \
                        of the rate.";
        for claim in [
            "A decision comes within 30 calendar days of the request.",
            "Travel days are paid at 75% of the rate, no matter how long you traveled.",
        ] {
            assert_eq!(check_claim(claim, decision, "", 0.5), Ok(()), "{claim}");
        }
        let fsa = "New employees must enroll within 60 days of their start date. Please note \
                   that FSA does not automatically renew each year; you must re-enroll annually.";
        assert_eq!(
            check_claim(
                "You must enroll within 60 days of your start date, and FSA does not renew \
                 automatically each year.",
                fsa,
                "",
                0.5
            ),
            Ok(())
        );
        assert_eq!(
            check_claim(
                "You must enroll within 60 days of your start date, and FSA does renew \
                 automatically each year.",
                fsa,
                "",
                0.5
            ),
            Err(Mismatch::Negation)
        );
        // The alteration flips a negation, never a bound or the "No" that
        // answers the question.
        assert_eq!(
            flip_negation("No: hours never expire.").as_deref(),
            Some("No: hours always expire.")
        );
        assert_eq!(
            flip_negation("Decide no later than 30 days; staff cannot appeal.").as_deref(),
            Some("Decide no later than 30 days; staff can appeal.")
        );
    }

    #[test]
    fn an_identifier_with_digits_is_the_passages() {
        let piv = "Email hspd12.security@gsa.gov to start your PIV card; use form SF85.";
        for (claim, verdict) in [
            ("Email hspd12.security@gsa.gov for a PIV card.", Ok(())),
            (
                "Email hspd24.security@gsa.gov for a PIV card.",
                Err(Mismatch::Name("hspd24".into())),
            ),
            ("Start your PIV card with form SF85.", Ok(())),
        ] {
            assert_eq!(check_claim(claim, piv, "", 0.5), verdict, "{claim}");
        }
    }

    /// Quotation marks promise the passage's words; the question's subject
    /// over a passage on something else is no support.
    #[test]
    fn quotes_and_the_questions_subject_are_the_passages() {
        let form = "Request leave on OPM Form 71 in HR Links.";
        assert_eq!(
            check_claim(
                "Request leave on \"OPM Form 71\" in HR Links.",
                form,
                "",
                0.5
            ),
            Ok(())
        );
        assert_eq!(
            check_claim(
                "Request leave on \"Leave Form 71\" in HR Links.",
                form,
                "",
                0.5
            ),
            Err(Mismatch::Quote("Leave Form 71".into()))
        );
        let approval = "Your schedule is subject to supervisor agreement and approval.";
        let question = "What is the vesting schedule for employee stock options?";
        let echo = "The vesting schedule for employee stock options is subject to supervisor \
                    agreement and approval.";
        assert_eq!(check_claim(echo, approval, "", 0.5), Ok(()));
        assert!(!on_topic(echo, question, approval, ""));
        let laundry = "Laundry expenses are allowed if official travel is at least 4 nights.";
        let claim = "You can expense laundry on a trip of at least 4 nights.";
        assert!(on_topic(
            claim,
            "can I expense doing laundry on a work trip?",
            laundry,
            ""
        ));
        // The title may name the subject the text does not.
        assert!(on_topic(
            "Stock options vest over four years.",
            question,
            "They vest over four years.",
            "Employee stock options"
        ));
    }

    /// What a review found passing: a bound turned round, a prefixed
    /// negation dropped, a clause taking the neighbouring row's figure.
    #[test]
    fn bounds_keep_their_direction_and_rows_their_figures() {
        for (passage, claim) in [
            (
                "You may carry over no more than 240 hours.",
                "You may carry over more than 240 hours.",
            ),
            (
                "Meal claims must not exceed $75 per day.",
                "Meal claims must exceed $75 per day.",
            ),
            (
                "Employees on probation are unable to telework.",
                "Employees on probation can telework.",
            ),
            (
                "Contractors are ineligible for the transit benefit.",
                "Contractors qualify for the transit benefit.",
            ),
        ] {
            assert_eq!(
                check_claim(claim, passage, "", 0.5),
                Err(Mismatch::Negation),
                "{claim}"
            );
        }
        assert_eq!(
            check_claim(
                "You may carry over up to 240 hours, no more than that.",
                "You may carry over no more than 240 hours.",
                "",
                0.5
            ),
            Ok(())
        );
        let rows = "New employees must enroll in the health benefits program within 60 \
                    calendar days of their official start date. Part-time staff earn 4 hours of \
                    leave per pay period. Full-time staff earn 8 hours of leave per pay period.";
        assert!(matches!(
            check_claim(
                "New employees must enroll in the health benefits program within 60 calendar \
                 days of their official start date, and part-time staff earn 8 hours of leave \
                 per pay period.",
                rows,
                "",
                0.5
            ),
            Err(Mismatch::Number(_))
        ));
    }

    #[test]
    fn clauses_keep_short_pieces_with_their_neighbours() {
        let claim = "Send it to the Talent team (not to hiring managers), using the form.";
        let pieces: Vec<&str> = clauses(claim).into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            pieces,
            [
                "Send it to the Talent team ",
                "(not to hiring managers)",
                ", using the form."
            ]
        );
        let pieces: Vec<&str> = clauses("Yes: 12 weeks, paid.")
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert_eq!(pieces, ["Yes: 12 weeks, paid."]);
    }

    #[test]
    fn numbers_keep_their_units_and_separators() {
        assert_eq!(
            numbers("Up to $1,000 or 10% of 2.5 hours, two weeks."),
            [
                ("1000".to_string(), Some("dollar".to_string())),
                ("10".to_string(), Some("%".to_string())),
                ("2.5".to_string(), Some("hour".to_string())),
                ("2".to_string(), Some("week".to_string())),
            ]
        );
    }
}
